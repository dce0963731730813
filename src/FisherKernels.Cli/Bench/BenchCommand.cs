using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using FisherKernels.Backends;

namespace FisherKernels.Cli.Bench;

/// <summary>
/// `fisherkernels bench [--backend NAME|all] [--threads N] [--json] [--model M.onnx --tokens T.npy]`
/// (SPEC §6): every suite in <see cref="Suites"/> on every chosen backend, a human table by default.
/// </summary>
internal static class BenchCommand
{
    /// <summary>The benchmark suites, in output order: add one line per suite.</summary>
    public static readonly IReadOnlyList<IBenchSuite> Suites =
    [
        new AccumulateBench(),
        new KronQuadraticBench(),
        new WoodburyBench(),
        new LinearJvpBench(),
        new ModelBenches(),
    ];

    public static int Run(string[] args, TextWriter stdout)
    {
        var options = BenchOptions.Parse(args);
        BenchTimer.FirstWarmup = options.Quick ? TimeSpan.Zero : TimeSpan.FromSeconds(1);
        // Described (with the load average) before the suites run, so the load is other processes', not ours.
        string machine = MachineDescription(options.Threads);
        var results = new List<BenchResult>();
        // Each row is printed as it finishes (the table on stdout; with --json, one progress line a row on stderr and the
        // JSON object at the end), so a long model bench shows its figures as they come and a failure keeps the rows before it.
        var table = options.Json ? null : new TableWriter(stdout, machine, MeasuredPeakGflops(options.Threads, options.Quick));
        void Report(BenchResult r)
        {
            results.Add(r);
            if (table is not null) table.Row(r);
            else Console.Error.WriteLine(r.Error is null ? $"bench: {r.Name} {r.Backend} {r.Shape}: {r.MedianMs:F2} ms, {r.Baseline} {r.BaselineMedianMs:F2} ms"
                                                         : $"bench: {r.Name} {r.Backend} {r.Shape}: failed: {r.Error}");
        }
        foreach (var backend in OpenBackends(options.Backend, options.Threads))
            using (backend)
            {
                var context = new BenchContext(backend, options.Threads, options.Quick, options.Model, options.Tokens, options.Verbose ? Console.Error : null, options.ForwardOnly);
                foreach (var suite in Suites.Where(s => s.NeedsModel == (options.Model is not null)))
                {
                    // A suite that fails between its rows (its setup) is reported as one failed row; the other suites run.
                    using var rows = suite.Run(context).GetEnumerator();
                    while (true)
                    {
                        try { if (!rows.MoveNext()) break; }
                        catch (Exception e) when (e is FisherKernelsException or InvalidOperationException or OutOfMemoryException or OverflowException or ArgumentException)
                        {
                            Report(BenchResult.Failed(suite.GetType().Name, backend.Name, "", "", e.Message));
                            break;
                        }
                        Report(rows.Current);
                    }
                }
            }
        if (options.Json) WriteJson(stdout, machine, results);
        else table!.End(results);
        return results.Any(r => r.Error is not null) ? 1 : 0;
    }

    /// <summary>
    /// The named backend, or for "all" every backend available here except the ILGPU CPU emulator (a test tool,
    /// far too slow for full-size figures: ask for it by name, with --quick).
    /// </summary>
    private static IEnumerable<IComputeBackend> OpenBackends(string name, int threads)
    {
        var names = name == "all" ? BackendRegistry.Available().Where(n => n != "ilgpu-cpu").ToList() : [name];
        foreach (string backend in names) yield return BackendRegistry.Create(backend, threads);
    }

    private static void WriteJson(TextWriter stdout, string machine, List<BenchResult> results)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("machine", machine);
            json.WriteStartArray("results");
            foreach (var r in results)
            {
                json.WriteStartObject();
                json.WriteString("name", r.Name);
                json.WriteString("backend", r.Backend);
                json.WriteString("shape", r.Shape);
                if (r.Error is not null)
                {
                    json.WriteString("failed", r.Error);
                    json.WriteEndObject();
                    continue;
                }
                json.WriteNumber("median_ms", Math.Round(r.MedianMs, 4));
                json.WriteNumber("min_ms", Math.Round(r.Ours.MinMs, 4));
                json.WriteNumber("max_ms", Math.Round(r.Ours.MaxMs, 4));
                if (r.Gflops is double gflops) json.WriteNumber("gflops", Math.Round(gflops, 2));
                json.WriteString("baseline", r.Baseline);
                json.WriteNumber("baseline_median_ms", Math.Round(r.BaselineMedianMs, 4));
                json.WriteNumber("baseline_min_ms", Math.Round(r.BaselineTiming.MinMs, 4));
                json.WriteNumber("baseline_max_ms", Math.Round(r.BaselineTiming.MaxMs, 4));
                json.WriteNumber("ratio", Math.Round(r.Ratio, 4));
                if (r.PeakWorkingSetBytes is long peak) json.WriteNumber("peak_working_set_mb", Math.Round(peak / 1048576.0, 1));
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        stdout.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    /// <summary>The human table, a row at a time: fixed column widths, so that each row prints as soon as it is timed.</summary>
    internal sealed class TableWriter
    {
        static readonly string[] Header = ["name", "backend", "shape", "ms", "min-max", "GFLOP/s", "% peak", "baseline", "baseline ms", "min-max", "baseline GFLOP/s", "ratio"];
        static readonly int[] Widths = [16, 9, 16, 10, 19, 8, 6, 16, 11, 19, 16, 8];
        readonly TextWriter stdout;
        readonly double peakGflops;

        public TableWriter(TextWriter stdout, string machine, double peakGflops)
        {
            this.stdout = stdout;
            this.peakGflops = peakGflops;
            stdout.WriteLine($"machine: {machine}; FMA peak measured now: {peakGflops:F0} GFLOP/s");
            Write(Header);
        }

        public void Row(BenchResult r)
        {
            if (r.Error is not null)
            {
                stdout.WriteLine($"{r.Name.PadRight(Widths[0])}  {r.Backend.PadRight(Widths[1])}  {r.Shape.PadRight(Widths[2])}  failed: {r.Error}");
                return;
            }
            double? baselineGflops = r.Gflops * r.MedianMs / r.BaselineMedianMs;
            Write([r.Name, r.Backend, r.Shape, $"{r.MedianMs:F2}", $"{r.Ours.MinMs:F2}-{r.Ours.MaxMs:F2}", $"{r.Gflops:F1}",
                   r.Gflops is double g ? $"{100 * g / peakGflops:F0}%" : "", r.Baseline, $"{r.BaselineMedianMs:F2}",
                   $"{r.BaselineTiming.MinMs:F2}-{r.BaselineTiming.MaxMs:F2}", $"{baselineGflops:F1}", $"{r.Ratio:F2}x"]);
        }

        public void End(List<BenchResult> results)
        {
            foreach (var r in results)
                if (r.PeakWorkingSetBytes is long peak) stdout.WriteLine($"{r.Name}: peak working set {peak / 1048576.0:F1} MB");
        }

        void Write(string[] row)
        {
            stdout.WriteLine(string.Join("  ", row.Select((cell, c) => c < 3 || c == 7 ? cell.PadRight(Widths[c]) : cell.PadLeft(Widths[c]))).TrimEnd());
            stdout.Flush();
        }
    }

    private static string MachineDescription(int threads)
    {
        string cpu = RuntimeInformation.ProcessArchitecture.ToString();
        if (File.Exists("/proc/cpuinfo"))
            cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? cpu;
        string simd = Avx512F.IsSupported ? "AVX-512" : Avx2.IsSupported ? "AVX2" : Vector128.IsHardwareAccelerated ? "128-bit SIMD" : "no SIMD";
        string blas = FisherKernels.Native.Blas.CoreName is { } core ? $"OpenBLAS {core} kernels" : "no OpenBLAS";
        // The load when the figures were taken: on a shared machine only same-process ratios compare.
        string load = File.Exists("/proc/loadavg") ? $", load {string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3))}" : "";
        return $"{cpu}, {Environment.ProcessorCount} cores, {simd}, {threads} threads, {blas}{load}";
    }

    /// <summary>
    /// The fp32 FMA throughput the cores deliver right now (independent register-resident FMA chains
    /// on every thread): the yardstick for "% of peak" that also reflects a busy, shared machine.
    /// </summary>
    private static double MeasuredPeakGflops(int threads, bool quick)
    {
        long iterations = quick ? 1 << 14 : 1 << 23;
        double best = 0;
        for (int attempt = 0; attempt < 3; attempt++)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            // Vector512 only where the hardware has it: emulated on AVX2 it measures the emulation, not the cores.
            bool wide = Vector512.IsHardwareAccelerated;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => { if (wide) FmaChains<Vector512<float>, Fma512>(iterations); else FmaChains<Vector256<float>, Fma256>(iterations); });
            double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
            best = Math.Max(best, threads * iterations * 12.0 * 2 * (wide ? Vector512<float>.Count : Vector256<float>.Count) / seconds / 1e9);
        }
        return best;
    }

    private static float FmaChains<TVector, TOps>(long iterations) where TOps : IFmaOps<TVector>
    {
        var m = TOps.Create(0.999f); var a = TOps.Create(1e-3f);
        TVector v0 = m, v1 = m, v2 = m, v3 = m, v4 = m, v5 = m, v6 = m, v7 = m, v8 = m, v9 = m, v10 = m, v11 = m;
        for (long i = 0; i < iterations; i++)
        {
            v0 = TOps.Fma(v0, m, a); v1 = TOps.Fma(v1, m, a); v2 = TOps.Fma(v2, m, a); v3 = TOps.Fma(v3, m, a);
            v4 = TOps.Fma(v4, m, a); v5 = TOps.Fma(v5, m, a); v6 = TOps.Fma(v6, m, a); v7 = TOps.Fma(v7, m, a);
            v8 = TOps.Fma(v8, m, a); v9 = TOps.Fma(v9, m, a); v10 = TOps.Fma(v10, m, a); v11 = TOps.Fma(v11, m, a);
        }
        // Keeps the chains live.
        return TOps.First(v0) + TOps.First(v1) + TOps.First(v2) + TOps.First(v3) + TOps.First(v4) + TOps.First(v5)
             + TOps.First(v6) + TOps.First(v7) + TOps.First(v8) + TOps.First(v9) + TOps.First(v10) + TOps.First(v11);
    }

    /// <summary>The vector operations the peak measurement needs, for one vector width.</summary>
    private interface IFmaOps<TVector>
    {
        static abstract TVector Create(float value);
        static abstract TVector Fma(TVector x, TVector y, TVector z);
        static abstract float First(TVector x);
    }

    private readonly struct Fma512 : IFmaOps<Vector512<float>>
    {
        public static Vector512<float> Create(float value) => Vector512.Create(value);
        public static Vector512<float> Fma(Vector512<float> x, Vector512<float> y, Vector512<float> z) => Vector512.FusedMultiplyAdd(x, y, z);
        public static float First(Vector512<float> x) => x.ToScalar();
    }

    private readonly struct Fma256 : IFmaOps<Vector256<float>>
    {
        public static Vector256<float> Create(float value) => Vector256.Create(value);
        public static Vector256<float> Fma(Vector256<float> x, Vector256<float> y, Vector256<float> z) => Vector256.FusedMultiplyAdd(x, y, z);
        public static float First(Vector256<float> x) => x.ToScalar();
    }
}

/// <summary>The options of `bench`; <c>--quick</c> (tiny shapes, for tests) and <c>--forward-only</c> are not advertised.</summary>
internal sealed record BenchOptions(string Backend, int Threads, bool Json, bool Quick, string? Model, string? Tokens, bool Verbose, bool ForwardOnly)
{
    public static BenchOptions Parse(string[] args)
    {
        string backend = "cpu";
        int threads = Environment.ProcessorCount;
        bool json = false, quick = false, verbose = false, forwardOnly = false;
        string? model = null, tokens = null;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--backend": backend = Value(args, ref i); break;
                case "--threads":
                    string text = Value(args, ref i);
                    if (!int.TryParse(text, out threads) || threads < 1)
                        throw FisherKernelsException.Argument($"--threads must be a whole number of at least 1, got '{text}'");
                    break;
                case "--json": json = true; break;
                case "--quick": quick = true; break;
                case "--verbose": verbose = true; break;
                case "--forward-only": forwardOnly = true; break;
                case "--model": model = Value(args, ref i); break;
                case "--tokens": tokens = Value(args, ref i); break;
                default: throw FisherKernelsException.Argument($"bench: unknown option '{args[i]}'");
            }
        }
        if ((model is null) != (tokens is null)) throw FisherKernelsException.Argument("bench: --model and --tokens go together");
        if (model is not null && !BenchCommand.Suites.Any(s => s.NeedsModel))
            throw FisherKernelsException.Unsupported("bench --model: the model benchmarks are not in this build yet");
        return new BenchOptions(backend, threads, json, quick, model, tokens, verbose, forwardOnly);

    }

    private static string Value(string[] args, ref int i) =>
        ++i < args.Length ? args[i] : throw FisherKernelsException.Argument($"{args[i - 1]} needs a value");
}

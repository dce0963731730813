using System.Text.Json;
using FisherKernels.Cli.Bench;

namespace FisherKernels.Tests.Cli;

public sealed class BenchCommandTests
{
    [Fact]
    public void Json_output_has_the_spec_schema_for_every_kernel_suite()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, BenchCommand.Run(["bench", "--quick", "--json", "--threads", "1"], stdout));
        using var document = JsonDocument.Parse(stdout.ToString());
        var root = document.RootElement;
        Assert.Equal(["machine", "results"], root.EnumerateObject().Select(p => p.Name));
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("machine").GetString()));
        var results = root.GetProperty("results").EnumerateArray().ToList();
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "kfac_accumulate");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "linear_jvp");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "kron_quadratic");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "woodbury_apply");
        foreach (var r in results)
        {
            Assert.Subset(new HashSet<string> { "name", "backend", "shape", "median_ms", "min_ms", "max_ms", "gflops", "baseline",
                                                "baseline_median_ms", "baseline_min_ms", "baseline_max_ms", "ratio" },
                          r.EnumerateObject().Select(p => p.Name).ToHashSet());
            Assert.InRange(r.GetProperty("median_ms").GetDouble(), r.GetProperty("min_ms").GetDouble(), r.GetProperty("max_ms").GetDouble());
            Assert.InRange(r.GetProperty("baseline_median_ms").GetDouble(), r.GetProperty("baseline_min_ms").GetDouble(),
                           r.GetProperty("baseline_max_ms").GetDouble());
            Assert.Equal("cpu", r.GetProperty("backend").GetString());
            // SPEC §6 writes block shapes as rows x cols and the Woodbury case as "n = 4096, r = 64".
            string expectedShape = r.GetProperty("name").GetString() == "woodbury_apply" ? @"^n=\d+,r=\d+$" : @"^\d+(x\d+)+$";
            Assert.Matches(expectedShape, r.GetProperty("shape").GetString());
            double ms = r.GetProperty("median_ms").GetDouble(), baselineMs = r.GetProperty("baseline_median_ms").GetDouble();
            Assert.True(ms > 0 && baselineMs > 0, r.ToString());
            // The file rounds times to 1e-4 ms: a --quick row of a few microseconds recomputes its ratio a few percent off.
            double roundingError = baselineMs / ms * (0.5e-4 / ms + 0.5e-4 / baselineMs);
            Assert.Equal(baselineMs / ms, r.GetProperty("ratio").GetDouble(), roundingError + 1e-3);
            Assert.False(string.IsNullOrEmpty(r.GetProperty("baseline").GetString()));
        }
    }

    [Fact]
    public void Machine_names_the_openblas_kernels_and_the_load()
    {
        var stdout = new StringWriter();
        BenchCommand.Run(["bench", "--quick", "--json", "--threads", "1"], stdout);
        using var document = JsonDocument.Parse(stdout.ToString());
        string machine = document.RootElement.GetProperty("machine").GetString()!;
        Assert.Matches(@"(OpenBLAS \w+ kernels|no OpenBLAS)", machine);
        if (File.Exists("/proc/loadavg")) Assert.Matches(@"load \d+\.\d+ \d+\.\d+ \d+\.\d+$", machine);
    }

    [Theory]
    [InlineData(5, 2, 1)] [InlineData(7, 3, 2)]
    public void Each_side_is_timed_in_blocks_of_its_own_never_run_by_run(int runs, int blocks, int warmup)
    {
        // SPEC §6: warm-up, then ≥ 5 runs of one side, then of the other, the blocks repeated.
        var calls = new List<char>();
        var (ours, baseline) = BenchTimer.Blocks(() => calls.Add('o'), () => calls.Add('b'), runs, blocks, warmup, firstWarmup: TimeSpan.Zero);
        // Block by block, the leading side swapping each round (o b, b o, ...) so that neither always runs first.
        string expected = string.Concat(Enumerable.Range(0, blocks).Select(round =>
        {
            string o = new('o', warmup + runs), b = new('b', warmup + runs);
            return round % 2 == 0 ? o + b : b + o;
        }));
        Assert.Equal(expected, new string(calls.ToArray()));
        foreach (var t in new[] { ours, baseline })
            Assert.True(t.MinMs >= 0 && t.MinMs <= t.MedianMs && t.MedianMs <= t.MaxMs, t.ToString());
    }

    [Fact]
    public void Fewer_than_five_runs_or_two_blocks_are_raised_to_the_minimum()
    {
        int ours = 0, baseline = 0;
        BenchTimer.Blocks(() => ours++, () => baseline++, runs: 1, blocks: 1, warmup: 0, firstWarmup: TimeSpan.Zero);
        Assert.Equal(10, ours);
        Assert.Equal(10, baseline);
    }

    [Fact]
    public void Each_sides_first_block_warms_up_for_the_time_asked()
    {
        // A side's first block runs until the warm-up time has passed (the JIT's optimized code); later blocks warm up by count.
        var calls = new List<(char Side, long At)>();
        long before = System.Diagnostics.Stopwatch.GetTimestamp();
        BenchTimer.Blocks(() => calls.Add(('o', System.Diagnostics.Stopwatch.GetTimestamp())),
                          () => calls.Add(('b', System.Diagnostics.Stopwatch.GetTimestamp())),
                          runs: 5, blocks: 2, warmup: 1, firstWarmup: TimeSpan.FromMilliseconds(50));
        var stretches = new List<List<long>>();
        char last = ' ';
        foreach (var (side, at) in calls)
        {
            if (side != last) stretches.Add([]);
            stretches[^1].Add(at);
            last = side;
        }
        // o-block, then b b (round 0's b-block and round 1's), then o-block; each first block's 5 timed runs start after its warm-up time.
        Assert.Equal(3, stretches.Count);
        // A block's warm-up clock starts before its first call (and after the other side's last one), so the first timed run
        // is at least 50 ms after those points; measured from the first call itself, a delayed start could make it less.
        foreach (var (start, first) in new[] { (before, stretches[0]), (stretches[0][^1], stretches[1][..^6]) })
            Assert.True(System.Diagnostics.Stopwatch.GetElapsedTime(start, first[^5]) >= TimeSpan.FromMilliseconds(50));
        Assert.Equal(6, stretches[2].Count);
    }

    [Fact]
    public void Timing_reports_the_median_and_the_extremes()
    {
        Assert.Equal(new Timing(3, 1, 9), Timing.Of([9, 1, 3, 2, 4]));
        Assert.Equal(new Timing(2.5, 1, 4), Timing.Of([4, 1, 2, 3]));
    }

    [Fact]
    public void Human_table_names_the_machine_and_each_figure()
    {
        var stdout = new StringWriter();
        BenchCommand.Run(["bench", "--quick", "--threads", "1"], stdout);
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("machine: ", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("kfac_accumulate") && (l.Contains("openblas_ssyrk") || l.Contains("managed_syrk")));
        Assert.Contains(lines, l => l.StartsWith("linear_jvp") && l.Contains("two_gemms"));
    }

    /// <summary>SPEC §6: a row that fails is reported as failed (one line, the error's message) and the table goes on.</summary>
    [Fact]
    public void A_failing_row_is_reported_and_the_next_rows_still_print()
    {
        var stdout = new StringWriter();
        var table = new BenchCommand.TableWriter(stdout, "test machine", 10);
        var failed = ModelBenches.Row("score_kfac", "cpu", "8x128", "isotropic_score",
                                      () => throw FisherKernelsException.Unsupported("layer 'head': factor G is stored low rank"));
        Assert.Equal("layer 'head': factor G is stored low rank", failed.Error);
        table.Row(failed);
        table.Row(ModelBenches.Row("score", "cpu", "8x128", "forward", () => BenchResult.Timed("score", "cpu", "8x128", null,
            (new Timing(2, 1, 3), new Timing(1, 1, 1)), "forward")));
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.StartsWith("score_kfac") && l.Contains("failed: layer 'head': factor G is stored low rank"));
        Assert.Contains(lines, l => l.StartsWith("score ") && l.Contains("0.50x"));
        // An error that is not a user-facing one (a bug) is not swallowed.
        Assert.Throws<NullReferenceException>(() => ModelBenches.Row("x", "cpu", "1", "forward", () => throw new NullReferenceException()));
    }

    [Theory]
    [InlineData("--backend", "tpu", "unknown backend 'tpu'")]
    [InlineData("--threads", "0", "--threads must be")]
    [InlineData("--frobnicate", null, "unknown option '--frobnicate'")]
    [InlineData("--threads", null, "--threads needs a value")]
    public void Bad_options_fail_with_a_message_naming_the_option(string option, string? value, string message)
    {
        string[] args = value is null ? ["bench", option] : ["bench", option, value];
        var error = Assert.Throws<FisherKernelsException>(() => BenchCommand.Run(args, new StringWriter()));
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void Model_suite_times_every_spec_figure_against_its_baseline()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, BenchCommand.Run(["bench", "--quick", "--json", "--threads", "1", "--model", FisherKernels.Tests.Fixtures.Path("gpt2_tiny.onnx"),
                                          "--tokens", FisherKernels.Tests.Fixtures.Path("gpt2_tiny.tokens.npy")], stdout));
        using var document = JsonDocument.Parse(stdout.ToString());
        var results = document.RootElement.GetProperty("results").EnumerateArray()
            .ToDictionary(r => r.GetProperty("name").GetString()!, r => r.GetProperty("baseline").GetString());
        Assert.Equal("onnxruntime", results["forward"]);
        foreach (string name in new[] { "backward", "jvp", "fit", "score" }) Assert.Equal("forward", results[name]);
        Assert.Equal("isotropic_score", results["score_kfac"]);
    }
}

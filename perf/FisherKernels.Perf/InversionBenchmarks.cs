using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Native;

namespace FisherKernels.Perf;

/// <summary>
/// Kernel family 2 on the CPU backend: the batched Kronecker quadratic form against one X at a time, and the
/// Woodbury apply (n = 4096, r = 64) against the dense Cholesky solve (spotrf + spotrs) of the same n × n matrix.
/// Short in-process jobs: the machine is shared (and too busy to build BenchmarkDotNet's boilerplate project in time).
/// </summary>
[Config(typeof(ShortInProcess))]
[MemoryDiagnoser]
public class InversionBenchmarks
{
    private sealed class ShortInProcess : ManualConfig
    {
        public ShortInProcess() => AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(7));
    }

    private const int Count = 32, G = 512, A = 512;
    private const int N = 4096, R = 64, K = 64;

    private readonly CpuBackend backend = new();
    private KronEigenbasis basis = null!;
    private float[] xs = null!, quadratics = null!;
    private float[] d = null!, u = null!, s = null!, b = null!, output = null!, dense = null!, factor = null!, solution = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        basis = KronEigenbasis.Create(backend, Factor(backend, rng, A), A, Factor(backend, rng, G), G, positions: 1000, priorPrecision: 1);
        xs = Random(rng, Count * G * A);
        quadratics = new float[Count];

        d = Random(rng, N); for (int i = 0; i < N; i++) d[i] = 1.5f + d[i];
        u = Random(rng, N * R);
        s = Random(rng, R); for (int j = 0; j < R; j++) s[j] = 2 + s[j];
        b = Random(rng, N * K);
        output = new float[N * K];
        dense = new float[N * N];
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
            {
                double sum = i == j ? d[i] : 0;
                for (int q = 0; q < R; q++) sum += (double)u[i * R + q] * s[q] * u[j * R + q];
                dense[i * N + j] = (float)sum;
            }
        factor = new float[N * N];
        solution = new float[N * K];
    }

    [GlobalCleanup]
    public void Cleanup() => backend.Dispose();

    [Benchmark(Description = "kron_quadratic 32x512x512 batched")]
    public void KronQuadraticBatched() => backend.KronQuadratic(basis, xs, Count, quadratics);

    [Benchmark(Description = "kron_quadratic 32x512x512 one X at a time")]
    public void KronQuadraticOneAtATime()
    {
        for (int i = 0; i < Count; i++) backend.KronQuadratic(basis, xs.AsSpan(i * G * A, G * A), 1, quadratics.AsSpan(i, 1));
    }

    [Benchmark(Description = "woodbury_apply n=4096 r=64 k=64")]
    public void WoodburyApply() => backend.WoodburyApply(d, u, s, N, R, b, K, output);

    /// <summary>The baseline: factor the explicit n × n matrix (spotrf, on a copy, as it works in place) and solve (spotrs).</summary>
    [Benchmark(Description = "dense Cholesky solve n=4096 k=64 (spotrf+spotrs)")]
    public unsafe void DenseCholeskySolve()
    {
        if (!Lapack.HasFloatCholesky) throw new InvalidOperationException("the dense baseline needs OpenBLAS's LAPACK");
        dense.CopyTo(factor);
        for (int i = 0; i < N; i++)
            for (int c = 0; c < K; c++) solution[c * N + i] = b[i * K + c]; // spotrs takes right-hand sides column-major
        fixed (float* pf = factor, px = solution)
        {
            if (Lapack.Spotrf(N, pf) != 0 || Lapack.Spotrs(N, pf, px, K) != 0) throw new InvalidOperationException("spotrf/spotrs failed");
        }
    }

    private static float[] Random(Random rng, int length)
    {
        var data = new float[length];
        for (int i = 0; i < length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
        return data;
    }

    /// <summary>A K-FAC-like factor: the mean outer product of 2n random rows, plus a little ridge.</summary>
    private static float[] Factor(CpuBackend backend, Random rng, int n)
    {
        int rows = 2 * n;
        var x = Random(rng, rows * n);
        var f = new float[n * n];
        backend.Gemm(new GemmShape(n, n, rows, TransA: true, Alpha: 1f / rows), x, x, f);
        for (int i = 0; i < n; i++) f[i * n + i] += 1e-3f;
        return f;
    }
}

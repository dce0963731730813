using BenchmarkDotNet.Attributes;
using System.Numerics.Tensors;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Native;

namespace FisherKernels.Perf;

/// <summary>
/// Kernel family 2 on the CPU backend: the batched Kronecker quadratic form against the unfused per-X computation
/// (two GEMMs, then square and weighted sum as separate passes), and the
/// Woodbury apply (n = 4096, r = 64) against the dense Cholesky solve (spotrf + spotrs) of the same n × n matrix.
/// The job (short, in process) comes from Program.cs.
/// </summary>
[MemoryDiagnoser]
public class InversionBenchmarks
{
    private const int Count = 512, G = 64, A = 65;
    private const int N = 4096, R = 64, K = 64;

    private readonly CpuBackend backend = new();
    private KronEigenbasis basis = null!;
    private float[] xs = null!, quadratics = null!, t = null!, y = null!;
    private float[] d = null!, u = null!, s = null!, b = null!, output = null!, dense = null!, factor = null!, solution = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        basis = KronEigenbasis.Create(backend, Factor(backend, rng, A), A, Factor(backend, rng, G), G, positions: 1000, priorPrecision: 1);
        xs = Random(rng, Count * G * A);
        quadratics = new float[Count];
        t = new float[G * A]; y = new float[G * A];

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

    [Benchmark(Description = "kron_quadratic 512x64x65 batched, fused")]
    public void KronQuadraticBatched() => backend.KronQuadratic(basis, xs, Count, quadratics);

    [Benchmark(Description = "kron_quadratic 512x64x65 unfused, one X at a time")]
    public void KronQuadraticUnfused()
    {
        for (int i = 0; i < Count; i++)
        {
            backend.Gemm(new GemmShape(G, A, A), xs.AsSpan(i * G * A, G * A), basis.QA, t);
            backend.Gemm(new GemmShape(G, A, G, TransA: true), basis.QG, t, y);
            TensorPrimitives.Multiply(y, y, y);
            quadratics[i] = TensorPrimitives.Dot(y, basis.InverseDenominators);
        }
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

using System.Numerics.Tensors;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Linalg;
using FisherKernels.Native;

namespace FisherKernels.Cli.Bench;

/// <summary>
/// <c>kron_quadratic</c>: <c>vec(X)ᵀ(M·A⊗G + τI)⁻¹vec(X)</c> for a batch of gradients X [g × a] in the eigenbasis
/// (shape <c>count x g x a</c>: many small layers, and a GPT-2-sized one), against the unfused, unbatched
/// computation: per X two GEMMs, then square, weight and sum as separate vector passes.
/// </summary>
internal sealed class KronQuadraticBench : IBenchSuite
{
    public bool NeedsModel => false;

    public IEnumerable<BenchResult> Run(BenchContext context)
    {
        (int Count, int G, int A)[] shapes = context.Quick ? [(4, 16, 17)] : [(512, 64, 65), (8, 768, 769)];
        var backend = context.Backend;
        foreach (var (count, g, a) in shapes)
        {
            var basis = KronEigenbasis.Create(backend, BenchFactors.Factor(a, 1, context.Threads), a, BenchFactors.Factor(g, 2, context.Threads), g,
                                              positions: 1000, priorPrecision: 1);
            var xs = BenchData.Random((long)count * g * a, seed: 3);
            var ours = new float[count];
            var baseline = new float[count];
            int size = g * a;
            float[] t = new float[size], y = new float[size];
            var times = BenchTimer.Blocks(
                () => backend.KronQuadratic(basis, xs, count, ours),
                () =>
                {
                    for (int i = 0; i < count; i++)
                    {
                        backend.Gemm(new GemmShape(g, a, a), xs.AsSpan(i * size, size), basis.QA, t);
                        backend.Gemm(new GemmShape(g, a, g, TransA: true), basis.QG, t, y);
                        TensorPrimitives.Multiply(y, y, y);
                        baseline[i] = TensorPrimitives.Dot(y, basis.InverseDenominators);
                    }
                });
            for (int i = 0; i < count; i++) BenchCheck.Agree("kron_quadratic", ours[i], baseline[i]);
            double flops = 2.0 * count * g * a * (g + a) + 3.0 * count * g * a;
            yield return BenchResult.Timed("kron_quadratic", backend.Name, $"{count}x{g}x{a}", flops, times, "unfused_gemms");
        }
    }
}

/// <summary>
/// <c>woodbury_apply</c>: <c>(D + U S Uᵀ)⁻¹B</c> with n = 4096, r = 64 and k = 64 right-hand sides, against the dense
/// Cholesky solve of the explicit n × n matrix: LAPACK spotrf (on a fresh copy, as it factors in place) + spotrs,
/// or the managed float64 Cholesky where OpenBLAS is missing.
/// </summary>
internal sealed class WoodburyBench : IBenchSuite
{
    public bool NeedsModel => false;

    public IEnumerable<BenchResult> Run(BenchContext context)
    {
        var (n, r, k) = context.Quick ? (96, 8, 4) : (4096, 64, 64);
        var d = BenchData.Random(n, seed: 4);
        for (int i = 0; i < n; i++) d[i] += 1.5f;
        var u = BenchData.Random((long)n * r, seed: 5);
        var s = BenchData.Random(r, seed: 6);
        for (int j = 0; j < r; j++) s[j] += 2;
        var b = BenchData.Random((long)n * k, seed: 7);
        var output = new float[n * k];
        var dense = DenseSolve.Create(d, u, s, n, r, b, k, context.Threads);
        var times = BenchTimer.Blocks(() => context.Backend.WoodburyApply(d, u, s, n, r, b, k, output), dense.Run);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < k; c++) BenchCheck.Agree("woodbury_apply", output[i * k + c], dense.Solution(i, c), scale: dense.MaxAbsSolution);
        double flops = 2.0 * n * r * r + 4.0 * n * r * k;
        yield return BenchResult.Timed("woodbury_apply", context.Backend.Name, $"n={n},r={r}", flops, times, dense.Name);
    }

    private sealed class DenseSolve(float[] matrix, float[] rhs, int n, int k, int threads)
    {
        private readonly float[] factor = new float[matrix.Length], solution = new float[rhs.Length];
        private readonly double[] factor64 = Native ? [] : new double[matrix.Length], solution64 = Native ? [] : new double[rhs.Length];

        private static bool Native => Lapack.HasFloatCholesky;

        public string Name => Native ? "dense_cholesky_spotrf_spotrs" : "dense_cholesky_managed_f64";

        /// <summary>The explicit D + U S Uᵀ (built once, outside the timing) and B with its right-hand sides contiguous.</summary>
        public static DenseSolve Create(float[] d, float[] u, float[] s, int n, int r, float[] b, int k, int threads)
        {
            var scaled = new float[u.Length];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < r; j++) scaled[i * r + j] = u[i * r + j] * s[j];
            var matrix = new float[(long)n * n];
            using (var cpu = new CpuBackend(threads)) cpu.Gemm(new GemmShape(n, n, r, TransB: true), scaled, u, matrix);
            for (int i = 0; i < n; i++) matrix[(long)i * n + i] += d[i];
            var rhs = new float[b.Length];
            for (int i = 0; i < n; i++)
                for (int c = 0; c < k; c++) rhs[c * n + i] = b[i * k + c];
            return new DenseSolve(matrix, rhs, n, k, threads);
        }

        /// <summary>Component i of the solution for right-hand side c, after <see cref="Run"/>.</summary>
        public double Solution(int i, int c) => Native ? solution[c * n + i] : solution64[i * k + c];

        public double MaxAbsSolution => Math.Abs(Native ? TensorPrimitives.MaxMagnitude(solution)
                                                        : TensorPrimitives.MaxMagnitude(solution64));

        public unsafe void Run()
        {
            if (!Native)
            {
                for (int i = 0; i < matrix.Length; i++) factor64[i] = matrix[i];
                for (int i = 0; i < n; i++)
                    for (int c = 0; c < k; c++) solution64[i * k + c] = rhs[c * n + i];
                if (!Cholesky.TryFactor(factor64, n, useNative: false)) throw FisherKernelsException.Backend("dense baseline: matrix not positive definite");
                Cholesky.Solve(factor64, n, solution64, k);
                return;
            }
            matrix.CopyTo(factor, 0);
            rhs.CopyTo(solution, 0);
            using var native = Blas.Threads(threads);
            fixed (float* pf = factor, px = solution)
                if (Lapack.Spotrf(n, pf) != 0 || Lapack.Spotrs(n, pf, px, k) != 0)
                    throw FisherKernelsException.Backend("dense baseline: spotrf/spotrs failed");
        }
    }
}

/// <summary>K-FAC-like benchmark factors: the mean outer product of 2n seeded random rows, plus a small ridge.</summary>
internal static class BenchFactors
{
    public static float[] Factor(int n, int seed, int threads)
    {
        int rows = 2 * n;
        var x = BenchData.Random((long)rows * n, seed);
        var factor = new float[n * n];
        using (var cpu = new CpuBackend(threads)) cpu.Gemm(new GemmShape(n, n, rows, TransA: true, Alpha: 1f / rows), x, x, factor);
        for (int i = 0; i < n; i++) factor[i * n + i] += 1e-3f;
        return factor;
    }
}

/// <summary>A figure is only worth reporting if it computes what its baseline computes.</summary>
internal static class BenchCheck
{
    public static void Agree(string name, double ours, double baseline, double scale = 0)
    {
        double tolerance = 1e-3 * Math.Max(scale, Math.Abs(baseline));
        if (!(Math.Abs(ours - baseline) <= tolerance))
            throw FisherKernelsException.Backend($"bench {name}: the result {ours} disagrees with its baseline's {baseline}");
    }
}

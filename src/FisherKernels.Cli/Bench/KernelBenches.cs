using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Backends.Cuda;
using FisherKernels.Native;

namespace FisherKernels.Cli.Bench;

/// <summary>
/// <c>kfac_accumulate</c>: the EMA update <c>F ← λF + (1-λ)/M·XᵀX</c> of an activation block against
/// OpenBLAS <c>ssyrk</c> with the same α, β (which writes one triangle; ours writes both).
/// </summary>
internal sealed class AccumulateBench : IBenchSuite
{
    public bool NeedsModel => false;

    public IEnumerable<BenchResult> Run(BenchContext context)
    {
        (int Rows, int Cols)[] shapes = context.Quick ? [(256, 64), (128, 200)] : [(8192, 1024), (8192, 4096)];
        foreach (var (rows, cols) in shapes)
        {
            var x = BenchData.Random(rows * cols, seed: cols);
            var ours = new float[cols * cols];
            var baselineFactor = new float[cols * cols];
            const float lambda = 0.95f;
            float alpha = (1 - lambda) / rows;
            var baseline = SyrkBaseline.Create(context.Threads);
            using var cublas = CublasBaseline.TryCreate(context.Backend);
            var times = BenchTimer.Blocks(
                () => context.Backend.AccumulateFactor(x, rows, cols, false, alpha, lambda, ours),
                cublas is null ? () => baseline.Run(x, rows, cols, alpha, lambda, baselineFactor)
                               : () => cublas.Syrk(x, rows, cols, alpha, lambda, baselineFactor));
            // The symmetric rank-k update's own count (one triangle): what ssyrk is credited with.
            double flops = (double)rows * cols * (cols + 1);
            yield return BenchResult.Timed("kfac_accumulate", context.Backend.Name, $"{rows}x{cols}", flops, times,
                                           cublas is null ? baseline.Name : "cublas_ssyrk");
        }
    }

    /// <summary>OpenBLAS ssyrk, or the managed kernel (so the bench still runs) where OpenBLAS is missing.</summary>
    private sealed class SyrkBaseline(CpuBackend? managed, int threads)
    {
        public static SyrkBaseline Create(int threads) => OpenBlasLibrary.IsAvailable ? new SyrkBaseline(null, threads)
            : new SyrkBaseline(new CpuBackend(threads, useNativeBlas: false) { AccumulateKernel = AccumulateKernel.Scalar }, threads);

        public string Name => managed is null ? "openblas_ssyrk" : "managed_syrk";

        public unsafe void Run(float[] x, int rows, int cols, float alpha, float beta, float[] factor)
        {
            if (managed is not null) { managed.AccumulateFactor(x, rows, cols, false, alpha, beta, factor); return; }
            using var native = Blas.Threads(threads);
            fixed (float* px = x, pf = factor)
                Blas.Ssyrk(Blas.RowMajor, Blas.Upper, Blas.Trans, cols, rows, alpha, px, cols, beta, pf, cols);
        }
    }
}

/// <summary>
/// <c>linear_jvp</c>: <c>dy = x·dWᵀ + dx·Wᵀ + db</c> over a block of positions against two plain
/// GEMMs (β = 0, then β = 1) and a separate bias pass.
/// </summary>
internal sealed class LinearJvpBench : IBenchSuite
{
    public bool NeedsModel => false;

    public IEnumerable<BenchResult> Run(BenchContext context)
    {
        var (rows, inFeatures, outFeatures) = context.Quick ? (64, 48, 80) : (4096, 1024, 4096);
        var x = BenchData.Random(rows * inFeatures, 1); var dx = BenchData.Random(rows * inFeatures, 2);
        var w = BenchData.Random(outFeatures * inFeatures, 3); var dw = BenchData.Random(outFeatures * inFeatures, 4);
        var db = BenchData.Random(outFeatures, 5);
        var dy = new float[rows * outFeatures];
        var baselineDy = new float[rows * outFeatures];
        using var cpu = new CpuBackend(context.Threads);
        var first = new GemmShape(rows, outFeatures, inFeatures, TransB: true);
        var second = first with { Beta = 1f };
        using var cublas = CublasBaseline.TryCreate(context.Backend);
        var times = BenchTimer.Blocks(
            () => context.Backend.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, dy),
            cublas is not null ? () => cublas.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, baselineDy) : () =>
            {
                cpu.Gemm(first, x, dw, baselineDy);
                cpu.Gemm(second, dx, w, baselineDy);
                for (int r = 0; r < rows; r++)
                    System.Numerics.Tensors.TensorPrimitives.Add(baselineDy.AsSpan(r * outFeatures, outFeatures), db, baselineDy.AsSpan(r * outFeatures, outFeatures));
            });
        double flops = 4.0 * rows * inFeatures * outFeatures + (double)rows * outFeatures;
        yield return BenchResult.Timed("linear_jvp", context.Backend.Name, $"{rows}x{inFeatures}x{outFeatures}", flops, times,
                                       cublas is null ? "two_gemms" : "cublas_two_sgemm_sger");
    }
}

/// <summary>Seeded benchmark inputs in [-1, 1).</summary>
internal static class BenchData
{
    public static float[] Random(long length, int seed)
    {
        var rng = new Random(seed);
        var data = new float[length];
        for (long i = 0; i < length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
        return data;
    }
}

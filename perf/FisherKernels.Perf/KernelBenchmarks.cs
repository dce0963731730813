using BenchmarkDotNet.Attributes;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Native;

namespace FisherKernels.Perf;

/// <summary>Kernel family 1: the EMA factor update against OpenBLAS ssyrk (SkylakeX kernels) with the same α, β.</summary>
public class AccumulateBenchmarks
{
    private float[] x = [], ours = [], theirs = [];
    private CpuBackend backend = null!;

    [Params(1024, 4096)]
    public int Cols { get; set; }

    public const int Rows = 8192;

    [GlobalSetup]
    public void Setup()
    {
        x = Inputs.Random(Rows * Cols, Cols);
        ours = new float[Cols * Cols];
        theirs = new float[Cols * Cols];
        backend = new CpuBackend();
    }

    [GlobalCleanup]
    public void Cleanup() => backend.Dispose();

    [Benchmark(Baseline = true)]
    public unsafe void OpenBlasSsyrk()
    {
        fixed (float* px = x, pf = theirs)
            Blas.Ssyrk(Blas.RowMajor, Blas.Upper, Blas.Trans, Cols, Rows, 0.05f / Rows, px, Cols, 0.95f, pf, Cols);
    }

    [Benchmark]
    public void AccumulateFactor() => backend.AccumulateFactor(x, Rows, Cols, false, 0.05f / Rows, 0.95f, ours);
}

/// <summary>Kernel family 3: dy = x·dWᵀ + dx·Wᵀ + db against two plain GEMMs and a bias pass.</summary>
public class LinearJvpBenchmarks
{
    private const int Rows = 4096, In = 1024, Out = 4096;
    private float[] x = [], dx = [], w = [], dw = [], db = [], dy = [];
    private CpuBackend backend = null!;

    [GlobalSetup]
    public void Setup()
    {
        (x, dx) = (Inputs.Random(Rows * In, 1), Inputs.Random(Rows * In, 2));
        (w, dw) = (Inputs.Random(Out * In, 3), Inputs.Random(Out * In, 4));
        db = Inputs.Random(Out, 5);
        dy = new float[Rows * Out];
        backend = new CpuBackend();
    }

    [GlobalCleanup]
    public void Cleanup() => backend.Dispose();

    [Benchmark(Baseline = true)]
    public void TwoGemms()
    {
        var shape = new GemmShape(Rows, Out, In, TransB: true);
        backend.Gemm(shape, x, dw, dy);
        backend.Gemm(shape with { Beta = 1f }, dx, w, dy);
        for (int r = 0; r < Rows; r++)
            System.Numerics.Tensors.TensorPrimitives.Add(dy.AsSpan(r * Out, Out), db, dy.AsSpan(r * Out, Out));
    }

    [Benchmark]
    public void LinearJvp() => backend.LinearJvp(x, dx, w, dw, db, Rows, In, Out, dy);
}

internal static class Inputs
{
    /// <summary>Seeded values in [-1, 1).</summary>
    public static float[] Random(int length, int seed)
    {
        var rng = new Random(seed);
        var data = new float[length];
        for (int i = 0; i < length; i++) data[i] = rng.NextSingle() * 2 - 1;
        return data;
    }
}

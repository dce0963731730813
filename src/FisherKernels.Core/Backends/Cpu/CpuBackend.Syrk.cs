using FisherKernels.Native;

namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>
    /// The upper triangle (j ≥ i) of <c>A·Aᵀ</c> for a row-major A [n × k], into the row-major [n × n]
    /// <paramref name="c"/> (its lower triangle left as it was), by OpenBLAS ssyrk: half a GEMM's flops. False, having
    /// done nothing, without the native library.
    /// </summary>
    internal unsafe bool TrySymmetricProduct(ReadOnlySpan<float> a, int n, int k, Span<float> c)
    {
        if (!UsesNativeBlas || Blas.Ssyrk == null) return false;
        if (a.Length < (long)n * k || c.Length < (long)n * n) throw FisherKernelsException.Argument($"a symmetric product of [{n} × {k}] needs {(long)n * k} and {(long)n * n} floats");
        if (n == 0) return true;
        using var native = NativeThreads();
        fixed (float* pa = a, pc = c) Blas.Ssyrk(Blas.RowMajor, Blas.Upper, Blas.NoTrans, n, k, 1f, pa, Math.Max(1, k), 0f, pc, n);
        return true;
    }
}

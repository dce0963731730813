using System.Buffers;
using System.Numerics.Tensors;
using FisherKernels.Native;

namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    public unsafe void Gemm(in GemmShape s, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c)
    {
        CheckGemm(s, a.Length, b.Length, c.Length);
        if (s.M == 0 || s.N == 0) return;
        using var native = NativeThreads();
        fixed (float* pa = a, pb = b, pc = c)
        {
            for (int batch = 0; batch < s.BatchCount; batch++)
            {
                float* ab = pa + batch * s.StrideA, bb = pb + batch * s.StrideB, cb = pc + batch * s.StrideC;
                if (s.K == 0) ScaleInPlace(cb, (long)s.M * s.N, s.Beta);
                else if (UsesNativeBlas)
                    Blas.Sgemm(Blas.RowMajor, s.TransA ? Blas.Trans : Blas.NoTrans, s.TransB ? Blas.Trans : Blas.NoTrans,
                               s.M, s.N, s.K, s.Alpha, ab, s.TransA ? s.M : s.K, bb, s.TransB ? s.K : s.N, s.Beta, cb, s.N);
                else ManagedGemm(s, ab, bb, cb);
            }
        }
    }

    /// <summary>Checks that every batch's matrices lie inside the given buffers (strides may be 0 to broadcast).</summary>
    internal static void CheckGemm(in GemmShape s, long aLength, long bLength, long cLength)
    {
        if (s.M < 0 || s.N < 0 || s.K < 0 || s.BatchCount < 1 || s.StrideA < 0 || s.StrideB < 0 || s.StrideC < 0)
            throw FisherKernelsException.Argument($"invalid GEMM shape {s}");
        long last = s.BatchCount - 1;
        Need("A", last * s.StrideA + (long)s.M * s.K, aLength);
        Need("B", last * s.StrideB + (long)s.K * s.N, bLength);
        Need("C", last * s.StrideC + (long)s.M * s.N, cLength);
        if (s.BatchCount > 1 && s.StrideC < (long)s.M * s.N && s.M * s.N > 0)
            throw FisherKernelsException.Argument($"GEMM output batches overlap: StrideC {s.StrideC} < M·N {(long)s.M * s.N}");

        static void Need(string name, long needed, long length)
        {
            if (length < needed) throw FisherKernelsException.Argument($"GEMM operand {name} needs {needed} elements, got {length}");
        }
    }

    private static unsafe void ScaleInPlace(float* c, long length, float beta)
    {
        var span = new Span<float>(c, checked((int)length));
        if (beta == 0) span.Clear();
        else if (beta != 1) TensorPrimitives.Multiply(span, beta, span);
    }

    /// <summary>
    /// Fallback without OpenBLAS: transposed operands are packed so that the inner loop is a
    /// contiguous SIMD axpy over a row of B into a row of C; rows of C are split across threads.
    /// </summary>
    private unsafe void ManagedGemm(GemmShape s, float* a, float* b, float* c)
    {
        int m = s.M, n = s.N, k = s.K;
        float[]? packedA = null, packedB = null;
        try
        {
            if (s.TransA) { packedA = ArrayPool<float>.Shared.Rent(m * k); Transpose(a, k, m, packedA); }
            if (s.TransB) { packedB = ArrayPool<float>.Shared.Rent(k * n); Transpose(b, n, k, packedB); }
            fixed (float* pa0 = packedA, pb0 = packedB)
            {
                nint pa = (nint)(s.TransA ? pa0 : a), pb = (nint)(s.TransB ? pb0 : b), pc = (nint)c;
                float alpha = s.Alpha, beta = s.Beta;
                var rowsBody = (int i) =>
                {
                    var cRow = new Span<float>((float*)pc + (long)i * n, n);
                    if (beta == 0) cRow.Clear(); else if (beta != 1) TensorPrimitives.Multiply(cRow, beta, cRow);
                    float* aRow = (float*)pa + (long)i * k;
                    for (int p = 0; p < k; p++)
                    {
                        float coefficient = alpha * aRow[p];
                        if (coefficient == 0) continue;
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>((float*)pb + (long)p * n, n), coefficient, cRow, cRow);
                    }
                };
                if ((long)m * n * k < 1 << 18) for (int i = 0; i < m; i++) rowsBody(i);
                else Parallel.For(0, m, Parallelism, rowsBody);
            }
        }
        finally
        {
            if (packedA != null) ArrayPool<float>.Shared.Return(packedA);
            if (packedB != null) ArrayPool<float>.Shared.Return(packedB);
        }
    }

    /// <summary>dst[c, r] = src[r, c] for a row-major [rows × cols] source.</summary>
    private static unsafe void Transpose(float* src, int rows, int cols, float[] dst)
    {
        for (int r = 0; r < rows; r++)
            for (int col = 0; col < cols; col++)
                dst[(long)col * rows + r] = src[(long)r * cols + col];
    }
}

using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using FisherKernels.Native;

namespace FisherKernels.Linalg;

/// <summary>
/// Cholesky factorization and solve of a row-major symmetric positive definite float64 matrix:
/// LAPACK <c>dpotrf</c> where OpenBLAS is present, a managed row-oriented factorization otherwise.
/// </summary>
internal static class Cholesky
{
    /// <summary>
    /// Overwrites <paramref name="a"/> [n × n] (lower triangle read) with its lower factor L, A = L·Lᵀ, and zeroes
    /// the strict upper triangle. Returns false, leaving <paramref name="a"/> undefined, when A is not positive definite.
    /// </summary>
    public static unsafe bool TryFactor(Span<double> a, int n, bool useNative)
    {
        if (a.Length < (long)n * n) throw FisherKernelsException.Argument($"Cholesky of [{n} × {n}] needs {(long)n * n} elements, got {a.Length}");
        bool ok;
        if (useNative && Lapack.HasCholesky)
            using (Blas.Threads(1)) // one thread, as the eigensolver: the factor's bits depend on A alone
            fixed (double* p = a) ok = Lapack.Dpotrf(n, p) == 0;
        else ok = TryFactorManaged(a, n);
        if (!ok) return false;
        for (int i = 0; i < n; i++) a.Slice(i * n + i + 1, n - i - 1).Clear();
        return true;
    }

    /// <summary>Cholesky–Banachiewicz: L[i, j] from the dot product of rows i and j of L, both contiguous.</summary>
    private static bool TryFactorManaged(Span<double> a, int n)
    {
        for (int i = 0; i < n; i++)
        {
            var rowI = a.Slice(i * n, i);
            for (int j = 0; j <= i; j++)
            {
                double sum = a[i * n + j] - TensorPrimitives.Dot(rowI[..j], a.Slice(j * n, j));
                if (i == j)
                {
                    if (!(sum > 0)) return false;
                    a[i * n + i] = Math.Sqrt(sum);
                }
                else a[i * n + j] = sum / a[j * n + j];
            }
        }
        return true;
    }

    /// <summary>Solves L·Lᵀ·X = B in place for the row-major [n × k] <paramref name="b"/>, given the factor from <see cref="TryFactor"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Solve(ReadOnlySpan<double> l, int n, Span<double> b, int k)
    {
        for (int i = 0; i < n; i++) // L·Y = B, forward
        {
            var row = b.Slice(i * k, k);
            for (int p = 0; p < i; p++) Axpy(-l[i * n + p], b.Slice(p * k, k), row);
            Scale(1 / l[i * n + i], row);
        }
        for (int i = n - 1; i >= 0; i--) // Lᵀ·X = Y, backward
        {
            var row = b.Slice(i * k, k);
            for (int p = i + 1; p < n; p++) Axpy(-l[p * n + i], b.Slice(p * k, k), row);
            Scale(1 / l[i * n + i], row);
        }
    }

    // Explicit SIMD loops rather than TensorPrimitives calls: short rows, many calls, and a first call that must not run tier-0 code.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy(double alpha, ReadOnlySpan<double> x, Span<double> y)
    {
        int j = 0;
        for (; j <= y.Length - Vector<double>.Count; j += Vector<double>.Count)
            (new Vector<double>(y[j..]) + alpha * new Vector<double>(x[j..])).CopyTo(y[j..]);
        for (; j < y.Length; j++) y[j] += alpha * x[j];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scale(double alpha, Span<double> y)
    {
        int j = 0;
        for (; j <= y.Length - Vector<double>.Count; j += Vector<double>.Count)
            (alpha * new Vector<double>(y[j..])).CopyTo(y[j..]);
        for (; j < y.Length; j++) y[j] *= alpha;
    }
}

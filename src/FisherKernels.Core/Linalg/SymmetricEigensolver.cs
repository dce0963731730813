using FisherKernels.Native;
using MathNet.Numerics.LinearAlgebra;

namespace FisherKernels.Linalg;

/// <summary>
/// Symmetric eigendecomposition in float64: LAPACK <c>dsyevd</c> (divide and conquer) where OpenBLAS is
/// present, MathNet.Numerics' managed Householder tridiagonalization + implicit QL otherwise.
/// Float64 throughout because K-FAC factors span many orders of magnitude and the damped inverse
/// weighs the small eigenvalues most, exactly where float32 eigenvectors lose their accuracy.
/// </summary>
internal static class SymmetricEigensolver
{
    /// <summary>
    /// <paramref name="a"/> is row-major [n × n] and is symmetrized as (A + Aᵀ)/2; ascending eigenvalues go to
    /// <paramref name="eigenvalues"/>, eigenvectors to the columns of the row-major <paramref name="eigenvectors"/>.
    /// </summary>
    public static unsafe void Decompose(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors, bool useNative)
    {
        long size = CheckSizes(n, a.Length, eigenvalues.Length, eigenvectors.Length);
        Finite.Require(a, "the matrix to eigendecompose");
        if (n == 0) return;

        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
                eigenvectors[i * n + j] = eigenvectors[j * n + i] = 0.5 * (a[i * n + j] + a[j * n + i]);

        if (useNative && Lapack.HasEigen)
        {
            int info;
            using (Blas.Threads(1)) // one thread: the eigenvectors' bits then depend on the matrix alone (see Blas.Threads)
            fixed (double* v = eigenvectors)
            fixed (double* w = eigenvalues)
                info = Lapack.Dsyevd(n, v, w);
            if (info != 0) throw FisherKernelsException.Backend($"LAPACK dsyevd failed on a [{n} × {n}] matrix (info {info})");
            TransposeInPlace(eigenvectors, n); // LAPACK's column-major eigenvector columns → row-major columns
        }
        else DecomposeManaged(eigenvectors, n, eigenvalues);
    }

    /// <summary>
    /// Float32 <see cref="Decompose(ReadOnlySpan{double}, int, Span{double}, Span{double}, bool)"/>: LAPACK <c>ssyevd</c>, about
    /// twice as fast as <c>dsyevd</c> (half the memory traffic in the tridiagonal reduction). Without OpenBLAS, the managed
    /// float64 solver's result rounded to float32. Callers check its accuracy (<see cref="KronEigenbasis"/> does, in float64).
    /// </summary>
    public static unsafe void Decompose(ReadOnlySpan<float> a, int n, Span<float> eigenvalues, Span<float> eigenvectors, bool useNative)
    {
        long size = CheckSizes(n, a.Length, eigenvalues.Length, eigenvectors.Length);
        Finite.Require(a, "the matrix to eigendecompose");
        if (n == 0) return;

        if (!(useNative && Lapack.HasFloatEigen))
        {
            var wide = new double[size];
            for (long i = 0; i < size; i++) wide[i] = a[(int)i];
            var values = new double[n];
            var vectors = new double[size];
            Decompose(wide, n, values, vectors, useNative);
            for (int i = 0; i < n; i++) eigenvalues[i] = (float)values[i];
            for (long i = 0; i < size; i++) eigenvectors[(int)i] = (float)vectors[i];
            return;
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
                eigenvectors[i * n + j] = eigenvectors[j * n + i] = 0.5f * (a[i * n + j] + a[j * n + i]);
        int info;
        using (Blas.Threads(1)) // one thread, as dsyevd: the bits depend on the matrix alone
        fixed (float* v = eigenvectors)
        fixed (float* w = eigenvalues)
            info = Lapack.Ssyevd(n, v, w);
        if (info != 0) throw FisherKernelsException.Backend($"LAPACK ssyevd failed on a [{n} × {n}] matrix (info {info})");
        TransposeInPlace(eigenvectors, n);
    }

    private static void DecomposeManaged(Span<double> symmetric, int n, Span<double> eigenvalues)
    {
        var evd = Matrix<double>.Build.Dense(n, n, symmetric.ToArray()).Evd(Symmetricity.Symmetric);
        var values = new double[n];
        for (int i = 0; i < n; i++) values[i] = evd.EigenValues[i].Real;
        var order = new int[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Array.Sort((double[])values.Clone(), order); // ascending, whatever order the provider returns
        var vectors = evd.EigenVectors;
        for (int j = 0; j < n; j++)
        {
            eigenvalues[j] = values[order[j]];
            for (int i = 0; i < n; i++) symmetric[i * n + j] = vectors[i, order[j]];
        }
    }

    /// <summary>The checks both precisions make of the sizes they are given; returns n² (in 64 bits).</summary>
    private static long CheckSizes(int n, int aLength, int eigenvaluesLength, int eigenvectorsLength)
    {
        if (n < 0) throw FisherKernelsException.Argument($"eigendecomposition: negative size {n}");
        long size = (long)n * n;
        // Sizes in 64 bits: n > 46,340 makes n² overflow an int, and no .NET array or span holds that many entries anyway.
        if (size > Array.MaxLength)
            throw FisherKernelsException.Argument($"eigendecomposition of [{n} × {n}]: {size} entries exceed the {Array.MaxLength} a .NET array holds; a factor this large must take the low-rank form (a smaller --memory-budget)");
        if (aLength != size) throw FisherKernelsException.Argument($"eigendecomposition of [{n} × {n}] needs {size} elements, got {aLength}");
        if (eigenvaluesLength != n) throw FisherKernelsException.Argument($"eigendecomposition of [{n} × {n}] needs {n} eigenvalue slots, got {eigenvaluesLength}");
        if (eigenvectorsLength != size) throw FisherKernelsException.Argument($"eigendecomposition of [{n} × {n}] needs {size} eigenvector elements, got {eigenvectorsLength}");
        return size;
    }

    private static void TransposeInPlace<T>(Span<T> m, int n)
    {
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                (m[i * n + j], m[j * n + i]) = (m[j * n + i], m[i * n + j]);
    }
}

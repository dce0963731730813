namespace FisherKernels.Native;

/// <summary>
/// LAPACK entry points from OpenBLAS (Debian's build carries LAPACK), Fortran calling convention:
/// every argument by reference, column-major matrices, LP64 integers, and one hidden length argument
/// per character argument at the end. Each pointer is null when the library or symbol is missing.
/// A row-major symmetric matrix is its own column-major image, so callers pass row-major buffers as they are.
/// </summary>
internal static unsafe class Lapack
{
    private static readonly delegate* unmanaged<byte*, byte*, int*, double*, int*, double*, double*, int*, int*, int*, int*, nint, nint, void> DsyevdExport =
        (delegate* unmanaged<byte*, byte*, int*, double*, int*, double*, double*, int*, int*, int*, int*, nint, nint, void>)OpenBlasLibrary.Export("dsyevd_");

    private static readonly delegate* unmanaged<byte*, byte*, int*, float*, int*, float*, float*, int*, int*, int*, int*, nint, nint, void> SsyevdExport =
        (delegate* unmanaged<byte*, byte*, int*, float*, int*, float*, float*, int*, int*, int*, int*, nint, nint, void>)OpenBlasLibrary.Export("ssyevd_");

    private static readonly delegate* unmanaged<byte*, int*, double*, int*, int*, nint, void> DpotrfExport =
        (delegate* unmanaged<byte*, int*, double*, int*, int*, nint, void>)OpenBlasLibrary.Export("dpotrf_");

    private static readonly delegate* unmanaged<byte*, int*, float*, int*, int*, nint, void> SpotrfExport =
        (delegate* unmanaged<byte*, int*, float*, int*, int*, nint, void>)OpenBlasLibrary.Export("spotrf_");

    private static readonly delegate* unmanaged<byte*, int*, int*, float*, int*, float*, int*, int*, nint, void> SpotrsExport =
        (delegate* unmanaged<byte*, int*, int*, float*, int*, float*, int*, int*, nint, void>)OpenBlasLibrary.Export("spotrs_");

    public static bool HasEigen => DsyevdExport != null;
    public static bool HasFloatEigen => SsyevdExport != null;
    public static bool HasCholesky => DpotrfExport != null;
    public static bool HasFloatCholesky => SpotrfExport != null && SpotrsExport != null;

    /// <summary>
    /// Divide-and-conquer symmetric eigendecomposition of the column-major [n × n] <paramref name="a"/> (upper
    /// triangle read): ascending eigenvalues in <paramref name="w"/>, eigenvectors overwrite <paramref name="a"/>
    /// as its columns (column-major). Returns LAPACK's info (0 = success).
    /// </summary>
    public static int Dsyevd(int n, double* a, double* w)
    {
        byte jobz = (byte)'V', uplo = (byte)'U';
        int lda = Math.Max(1, n), info = 0, query = -1, iworkSize = 0;
        double workSize = 0;
        DsyevdExport(&jobz, &uplo, &n, a, &lda, w, &workSize, &query, &iworkSize, &query, &info, 1, 1);
        if (info != 0) return info;
        int lwork = checked((int)workSize), liwork = iworkSize;
        var work = GC.AllocateUninitializedArray<double>(lwork); // 1 + 6n + 2n² doubles: dsyevd's price for speed
        var iwork = GC.AllocateUninitializedArray<int>(liwork);
        fixed (double* pw = work)
        fixed (int* piw = iwork)
            DsyevdExport(&jobz, &uplo, &n, a, &lda, w, pw, &lwork, piw, &liwork, &info, 1, 1);
        return info;
    }

    /// <summary>
    /// Float32 <see cref="Dsyevd"/>. The workspace sizes are LAPACK's documented minimum (1 + 6n + 2n² floats, 3 + 5n
    /// integers) rather than the workspace query's answer: the query returns the size as a float, which cannot hold
    /// 1 + 6n + 2n² exactly once that passes 2²⁴ (n ≳ 2,900), and a rounded-down size makes ssyevd refuse to run.
    /// </summary>
    public static int Ssyevd(int n, float* a, float* w)
    {
        byte jobz = (byte)'V', uplo = (byte)'U';
        int lda = Math.Max(1, n), info = 0;
        long lworkLong = 1 + 6L * n + 2L * n * n;
        if (lworkLong > int.MaxValue) return -8;
        int lwork = (int)lworkLong, liwork = 3 + 5 * n;
        var work = GC.AllocateUninitializedArray<float>(lwork);
        var iwork = GC.AllocateUninitializedArray<int>(liwork);
        fixed (float* pw = work)
        fixed (int* piw = iwork)
            SsyevdExport(&jobz, &uplo, &n, a, &lda, w, pw, &lwork, piw, &liwork, &info, 1, 1);
        return info;
    }

    /// <summary>
    /// Cholesky factorization in place: for a row-major symmetric positive definite [n × n] matrix the
    /// result is the row-major lower factor L (A = L·Lᵀ) in the lower triangle; the strict upper triangle
    /// is left as it was. Returns info (0 = success, k &gt; 0 = the leading minor of order k is not positive).
    /// </summary>
    public static int Dpotrf(int n, double* a)
    {
        byte uplo = (byte)'U'; // column-major upper Uᵀ·U is row-major lower L·Lᵀ
        int lda = Math.Max(1, n), info = 0;
        DpotrfExport(&uplo, &n, a, &lda, &info, 1);
        return info;
    }

    /// <summary>Float32 <see cref="Dpotrf"/> (the dense baseline of the Woodbury benchmark).</summary>
    public static int Spotrf(int n, float* a)
    {
        byte uplo = (byte)'U';
        int lda = Math.Max(1, n), info = 0;
        SpotrfExport(&uplo, &n, a, &lda, &info, 1);
        return info;
    }

    /// <summary>
    /// Solves A·X = B with the factor from <see cref="Spotrf"/>; <paramref name="b"/> holds the
    /// <paramref name="k"/> right-hand sides one after another (each of length n), overwritten by the solutions.
    /// </summary>
    public static int Spotrs(int n, float* factor, float* b, int k)
    {
        byte uplo = (byte)'U';
        int lda = Math.Max(1, n), ldb = Math.Max(1, n), info = 0;
        SpotrsExport(&uplo, &n, &k, factor, &lda, b, &ldb, &info, 1);
        return info;
    }
}

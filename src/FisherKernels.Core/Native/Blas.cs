namespace FisherKernels.Native;

/// <summary>Typed CBLAS entry points from OpenBLAS; each is null when the library or symbol is missing.</summary>
internal static unsafe class Blas
{
    public const int RowMajor = 101, NoTrans = 111, Trans = 112, Upper = 121, Lower = 122;

    public static readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> Sgemm =
        (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)OpenBlasLibrary.Export("cblas_sgemm");

    public static readonly delegate* unmanaged<int, int, int, int, int, float, float*, int, float, float*, int, void> Ssyrk =
        (delegate* unmanaged<int, int, int, int, int, float, float*, int, float, float*, int, void>)OpenBlasLibrary.Export("cblas_ssyrk");

    private static readonly delegate* unmanaged<int, void> SetNumThreads =
        (delegate* unmanaged<int, void>)OpenBlasLibrary.Export("openblas_set_num_threads");

    private static int current;

    /// <summary>
    /// OpenBLAS's thread count is process-wide and a product's rounding depends on it, so each backend sets its own
    /// before every native call (a no-op while it is already set): one backend's results never depend on what
    /// another backend in the process asked for before.
    /// </summary>
    public static void SetThreads(int threads)
    {
        if (SetNumThreads == null || threads <= 0 || Volatile.Read(ref current) == threads) return;
        SetNumThreads(threads);
        Volatile.Write(ref current, threads);
    }
}

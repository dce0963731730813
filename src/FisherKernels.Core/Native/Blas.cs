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

    private static readonly delegate* unmanaged<byte*> GetCoreName = (delegate* unmanaged<byte*>)OpenBlasLibrary.Export("openblas_get_corename");

    private static int current;

    /// <summary>
    /// The kernel family OpenBLAS chose at load time ("SkylakeX" for its AVX-512 kernels, "Haswell" or "Zen" for AVX2), or
    /// null without OpenBLAS: benchmarks name it beside their baselines.
    /// </summary>
    public static string? CoreName => GetCoreName == null ? null : System.Runtime.InteropServices.Marshal.PtrToStringAnsi((nint)GetCoreName());

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

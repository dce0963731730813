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

    /// <summary>
    /// The kernel family OpenBLAS chose at load time ("SkylakeX" for its AVX-512 kernels, "Haswell" or "Zen" for AVX2), or
    /// null without OpenBLAS: benchmarks name it beside their baselines.
    /// </summary>
    public static string? CoreName => GetCoreName == null ? null : System.Runtime.InteropServices.Marshal.PtrToStringAnsi((nint)GetCoreName());

    private static readonly object gate = new();
    private static int current, inFlight, waitingForChange;

    /// <summary>
    /// Runs OpenBLAS/LAPACK calls at <paramref name="threads"/> threads until the returned scope is disposed. OpenBLAS's
    /// thread count is process-wide and a result's rounding depends on it (dsyevd's and dsymv's reductions split by
    /// thread), so setting it before a call is not enough when another engine or worker in the process may set another
    /// count before the call starts. Calls at the same count run side by side; a call at another count waits until
    /// those in flight finish (and holds back new ones meanwhile, so it is not starved). Scopes must not nest: wrap the
    /// native calls themselves, nothing that may make another.
    /// </summary>
    public static NativeThreadsScope Threads(int threads)
    {
        if (SetNumThreads == null || threads <= 0) return default;
        lock (gate)
        {
            bool registered = false;
            while (inFlight > 0 && (current != threads || (!registered && waitingForChange > 0)))
            {
                if (!registered && current != threads) { waitingForChange++; registered = true; }
                Monitor.Wait(gate);
            }
            if (registered) waitingForChange--;
            if (current != threads) { SetNumThreads(threads); current = threads; }
            inFlight++;
        }
        return new NativeThreadsScope(entered: true);
    }

    /// <summary>The scope of <see cref="Threads"/>; disposing it lets calls at another thread count proceed.</summary>
    public readonly struct NativeThreadsScope(bool entered) : IDisposable
    {
        public void Dispose()
        {
            if (!entered) return;
            lock (gate)
                if (--inFlight == 0) Monitor.PulseAll(gate);
        }
    }
}

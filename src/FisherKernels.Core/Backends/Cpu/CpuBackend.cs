using FisherKernels.Native;

namespace FisherKernels.Backends.Cpu;

/// <summary>
/// The CPU backend: the correctness reference and a fast path (SIMD microkernels, OpenBLAS/LAPACK
/// through P/Invoke where present, managed fallbacks otherwise). One partial file per kernel family.
/// </summary>
public sealed partial class CpuBackend : IComputeBackend
{
    /// <param name="threads">Worker threads for this backend's kernels (and OpenBLAS); 0 = all cores.</param>
    /// <param name="useNativeBlas">False forces the managed paths even where OpenBLAS is present.</param>
    public CpuBackend(int threads = 0, bool useNativeBlas = true)
    {
        if (threads < 0) throw FisherKernelsException.Argument($"--threads must be at least 1, got {threads}");
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
        UsesNativeBlas = useNativeBlas && OpenBlasLibrary.IsAvailable;
        Parallelism = new ParallelOptions { MaxDegreeOfParallelism = Threads };
    }

    public string Name => "cpu";

    public string Device => $"{Threads} threads{(UsesNativeBlas ? ", OpenBLAS" : ", managed BLAS")}";

    public int Threads { get; }

    /// <summary>True when OpenBLAS/LAPACK calls are used; false on the managed fallback.</summary>
    public bool UsesNativeBlas { get; }

    private ParallelOptions Parallelism { get; }

    /// <summary>Around each OpenBLAS/LAPACK call: the call's thread count, this backend's unless given (see <see cref="Blas.Threads"/>).</summary>
    private Blas.NativeThreadsScope NativeThreads(int threads = 0) =>
        UsesNativeBlas ? Blas.Threads(threads > 0 ? threads : Threads) : default;

    public void Dispose() { }
}

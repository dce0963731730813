namespace FisherKernels.Backends.Cpu;

/// <summary>
/// The CPU backend: the correctness reference and a fast path (SIMD microkernels, OpenBLAS/LAPACK
/// through P/Invoke where present, managed fallbacks otherwise). One partial file per kernel family.
/// </summary>
public sealed partial class CpuBackend : IComputeBackend
{
    public string Name => "cpu";

    public string Device => $"{Environment.ProcessorCount} logical cores";

    public void Dispose() { }
}

using FisherKernels.Backends.Ilgpu;

namespace FisherKernels.Tests;

/// <summary>
/// The conformance suite on the first CUDA device, at full size; skipped (with the reason) on a machine
/// without one.
/// </summary>
[RequiresCuda]
public sealed class CudaConformance() : BackendConformance(Device.Value)
{
    private static readonly Lazy<SharedBackend> Device = new(() => new SharedBackend(
        IlgpuBackend.TryCreateCuda() ?? throw new InvalidOperationException(RequiresCudaAttribute.SkipReason)));
}

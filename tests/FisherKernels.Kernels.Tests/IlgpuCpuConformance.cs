using FisherKernels.Backends.Ilgpu;

namespace FisherKernels.Tests;

/// <summary>
/// The conformance suite on ILGPU's CPU emulator: the same kernels that run on CUDA and OpenCL, at
/// small sizes (every emulated thread is an OS thread). The large cases still span several 64-wide
/// tiles with ragged edges.
/// </summary>
public sealed class IlgpuCpuConformance() : BackendConformance(Emulator.Value)
{
    private static readonly Lazy<SharedBackend> Emulator = new(() => new SharedBackend(IlgpuBackend.CreateCpuEmulator()));

    protected override int LargeDim => 70;

    /// <summary>Several 16-row steps with a ragged last one; each step costs two barriers of 256 emulated threads.</summary>
    protected override int MaxAccumulateRows => 75;
}

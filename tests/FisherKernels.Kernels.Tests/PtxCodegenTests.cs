using System.Reflection;
using FisherKernels.Backends.Ilgpu;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace FisherKernels.Tests;

/// <summary>
/// Every kernel goes through ILGPU's PTX backend without a device (the CUDA driver is only needed to
/// load the module), for the H100/H200 architecture: the kernels the emulator checks numerically
/// also compile for CUDA, with the shared memory and barriers the tiling relies on.
/// </summary>
public sealed class PtxCodegenTests
{
    public static TheoryData<string> KernelNames => new(IlgpuBackend.Kernels.Select(kernel => kernel.Kernel.Name));

    [Theory, MemberData(nameof(KernelNames))]
    public void Kernel_compiles_to_ptx_for_an_sm90_device(string name)
    {
        var (kernel, explicitlyGrouped) = IlgpuBackend.Kernels.Single(k => k.Kernel.Name == name);
        using var context = Context.Create(builder => IlgpuBackend.Configure(builder).Cuda());
        using var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_83, nvvmAPI: null!);
        var entry = explicitlyGrouped
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel);
        var compiled = Assert.IsType<PTXCompiledKernel>(backend.Compile(entry, new KernelSpecialization()));
        string ptx = compiled.PTXAssembly;
        Assert.Matches(@"\.target sm_\d+", ptx); // ILGPU targets the newest PTX target it knows (sm_80 here); the driver JITs it for sm_90
        Assert.Contains(".entry", ptx);
        if (UsesSharedMemory(kernel))
        {
            Assert.Contains(".shared", ptx);
            Assert.Contains("bar.sync", ptx);
        }
    }

    /// <summary>The explicitly grouped kernels are the tiled/reduction ones that stage data in shared memory.</summary>
    private static bool UsesSharedMemory(MethodInfo kernel) => IlgpuBackend.Kernels.Single(k => k.Kernel == kernel).ExplicitlyGrouped;
}

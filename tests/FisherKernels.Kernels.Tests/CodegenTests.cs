using System.Reflection;
using FisherKernels.Backends.Ilgpu;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace FisherKernels.Tests;

/// <summary>
/// Every kernel goes through ILGPU's PTX and OpenCL C code generators without a device (a driver is
/// only needed to load the module): the kernels the emulator checks numerically also compile for CUDA
/// (for an H100/H200-class device) and OpenCL 2.0, with the shared memory and barriers the tiling relies on.
/// </summary>
public sealed class CodegenTests
{
    public static TheoryData<string> KernelNames => new(IlgpuBackend.Kernels.Select(kernel => kernel.Kernel.Name));

    [Theory, MemberData(nameof(KernelNames))]
    public void Kernel_compiles_to_ptx_for_an_sm90_device(string name)
    {
        using var context = Context.Create(builder => IlgpuBackend.Configure(builder).Cuda());
        using var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_83, nvvmAPI: null!);
        string ptx = Assert.IsType<PTXCompiledKernel>(Compile(backend, name, out bool tiled)).PTXAssembly;
        Assert.Matches(@"\.target sm_\d+", ptx); // ILGPU targets the newest PTX target it knows (sm_80 here); the driver JITs it for sm_90
        Assert.Contains(".entry", ptx);
        if (tiled)
        {
            Assert.Contains(".shared", ptx);
            Assert.Contains("bar.sync", ptx);
        }
    }

    [Theory, MemberData(nameof(KernelNames))]
    public void Kernel_compiles_to_opencl_c_2(string name)
    {
        using var context = Context.Create(builder => IlgpuBackend.Configure(builder).OpenCL());
        var capabilities = new CLCapabilityContext(false, false, false, false, false);
        using var backend = new CLBackend(context, capabilities, CLDeviceVendor.Other, CLCVersion.CL20);
        string source = Assert.IsType<CLCompiledKernel>(Compile(backend, name, out bool tiled)).Source;
        Assert.Contains("kernel void", source);
        if (tiled)
        {
            Assert.Matches(@"local float \w+\[\d+\]", source);
            Assert.Matches(@"work_group_barrier\s*\(", source);
        }
    }

    /// <summary>Compiles one kernel; <paramref name="tiled"/>: it is explicitly grouped, i.e. stages data in shared memory.</summary>
    private static CompiledKernel Compile(Backend backend, string name, out bool tiled)
    {
        (MethodInfo kernel, tiled) = IlgpuBackend.Kernels.Single(k => k.Kernel.Name == name);
        var entry = tiled
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel);
        return backend.Compile(entry, new KernelSpecialization());
    }
}

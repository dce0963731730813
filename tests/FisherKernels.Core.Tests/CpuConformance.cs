using System.Runtime.Intrinsics.X86;
using FisherKernels.Backends.Cpu;

namespace FisherKernels.Tests;

/// <summary>The conformance suite on the CPU backend with OpenBLAS (where present), the kernels it picks itself.</summary>
public sealed class CpuConformance() : BackendConformance(new CpuBackend());

/// <summary>The conformance suite on the CPU backend's managed fallbacks (no OpenBLAS).</summary>
public sealed class CpuManagedConformance() : BackendConformance(new CpuBackend(useNativeBlas: false));

/// <summary>One worker thread: the sequential paths of every kernel.</summary>
public sealed class CpuSingleThreadConformance() : BackendConformance(new CpuBackend(threads: 1));

/// <summary>The AVX-512 accumulation microkernel at every size (Auto hands narrow factors to ssyrk).</summary>
public sealed class CpuAvx512AccumulateConformance()
    : BackendConformance(new CpuBackend(threads: 2) { AccumulateKernel = Pinned(AccumulateKernel.Avx512, Avx512F.IsSupported) })
{
    internal static AccumulateKernel Pinned(AccumulateKernel kernel, bool supported) => supported ? kernel : AccumulateKernel.Auto;
}

/// <summary>The AVX2 accumulation microkernel.</summary>
public sealed class CpuAvx2AccumulateConformance()
    : BackendConformance(new CpuBackend(threads: 2) { AccumulateKernel = CpuAvx512AccumulateConformance.Pinned(AccumulateKernel.Avx2, Avx2.IsSupported && Fma.IsSupported) });

/// <summary>The portable accumulation kernel, without OpenBLAS.</summary>
public sealed class CpuScalarAccumulateConformance()
    : BackendConformance(new CpuBackend(threads: 2, useNativeBlas: false) { AccumulateKernel = AccumulateKernel.Scalar });

/// <summary>OpenBLAS ssyrk for accumulation (with the mask and homogeneous column applied by packing).</summary>
public sealed class CpuSsyrkAccumulateConformance()
    : BackendConformance(new CpuBackend(threads: 2) { AccumulateKernel = CpuAvx512AccumulateConformance.Pinned(AccumulateKernel.Ssyrk, new CpuBackend().UsesNativeBlas) });

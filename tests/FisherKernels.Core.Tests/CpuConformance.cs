using FisherKernels.Backends.Cpu;

namespace FisherKernels.Tests;

/// <summary>The conformance suite on the CPU backend with OpenBLAS (where present).</summary>
public sealed class CpuConformance() : BackendConformance(new CpuBackend());

/// <summary>The conformance suite on the CPU backend's managed fallbacks (no OpenBLAS).</summary>
public sealed class CpuManagedConformance() : BackendConformance(new CpuBackend(useNativeBlas: false));

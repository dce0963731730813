using System.Reflection;
using FisherKernels.Backends.Cpu;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// The ILGPU backend: hand-written kernels (one partial file per kernel family) on a CUDA or OpenCL
/// device, or on ILGPU's CPU emulator (for tests only: it is slow). Kernels are compiled once per
/// backend on first use; device buffers are pooled per role and grown, so steady-state calls allocate
/// nothing on the device. Host spans are uploaded and results downloaded on every call (the seam is
/// host memory, see <see cref="IComputeBackend"/>).
/// </summary>
public sealed partial class IlgpuBackend : IComputeBackend
{
    private readonly Context context;
    private readonly Accelerator accelerator;
    private readonly List<IDeviceBuffer> pooled = [];

    private IlgpuBackend(Context context, Accelerator accelerator, string name)
    {
        this.context = context;
        this.accelerator = accelerator;
        Name = name;
        gemmA = Pool<float>(); gemmB = Pool<float>(); gemmC = Pool<float>();
        accumulateX = Pool<float>(); accumulateMask = Pool<byte>(); accumulateFactor = Pool<float>();
        jvpBias = Pool<float>();
        quadXs = Pool<float>(); quadT = Pool<float>(); quadY = Pool<float>(); quadOut = Pool<float>();
        basisQA = Pool<float>(); basisQG = Pool<float>(); basisWeights = Pool<float>();
        woodburyD = Pool<float>(); woodburyU = Pool<float>(); woodburyW = Pool<float>(); woodburyZ = Pool<float>();
        woodburyProducts = Pool<float>(); woodburySolved = Pool<float>(); woodburyB = Pool<float>();
        gemmKernel = new(() => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(GemmKernel));
        biasRowsKernel = new(() => accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(BroadcastRowsKernel));
        accumulateKernel = new(() => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<byte>, ArrayView<float>, AccumulateArgs>(AccumulateKernel));
        quadraticKernel = new(() => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(WeightedSquareSumKernel));
        scaleRowsKernel = new(() => accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(DivideRowsKernel));
    }

    /// <summary>The backend on the first CUDA device, or null when there is none (no driver, no GPU).</summary>
    public static IlgpuBackend? TryCreateCuda() => TryCreate("cuda", builder => builder.Cuda(), AcceleratorType.Cuda);

    /// <summary>The backend on the first usable OpenCL device (ILGPU needs OpenCL 2.0 generic address space), or null.</summary>
    public static IlgpuBackend? TryCreateOpenCL() => TryCreate("opencl", builder => builder.OpenCL(), AcceleratorType.OpenCL);

    /// <summary>
    /// The backend on ILGPU's CPU emulator, for tests of the kernels without a GPU. One multiprocessor
    /// with groups of up to <see cref="Tiling.GroupSize"/> threads; every emulated thread is an OS thread.
    /// Out-of-bounds checks on every view access are on: the emulator exists to find kernel bugs.
    /// </summary>
    public static IlgpuBackend CreateCpuEmulator()
    {
        var device = new CPUDevice(numThreadsPerWarp: 4, numWarpsPerMultiprocessor: Tiling.GroupSize / 4, numMultiprocessors: 1);
        var backend = TryCreate("ilgpu-cpu", builder => builder.CPU(device).Assertions(), AcceleratorType.CPU);
        return backend ?? throw FisherKernelsException.Backend("ilgpu-cpu: ILGPU's CPU emulator could not be created");
    }

    /// <summary>
    /// The context settings of every ILGPU backend (and of the code-generation tests). The Algorithms library gives
    /// XMath's exp, tanh, pow, … their PTX intrinsics (the device plans' kernels use them).
    /// </summary>
    internal static Context.Builder Configure(Context.Builder builder) =>
        builder.Math(MathMode.Fast32BitOnly).Optimize(OptimizationLevel.O2).EnableAlgorithms();

    private static IlgpuBackend? TryCreate(string name, Func<Context.Builder, Context.Builder> enable,
                                           AcceleratorType type)
    {
        Context? context = null;
        try
        {
            context = Context.Create(builder => enable(Configure(builder)));
            var device = context.Devices.FirstOrDefault(candidate => candidate.AcceleratorType == type);
            if (device == null) { context.Dispose(); return null; }
            var accelerator = device is CPUDevice cpu
                ? cpu.CreateCPUAccelerator(context, CPUAcceleratorMode.Parallel) // Auto would go sequential (far slower) under a debugger
                : device.CreateAccelerator(context);
            return new IlgpuBackend(context, accelerator, name);
        }
        catch (Exception e) when (e is not FisherKernelsException)
        {
            context?.Dispose();
            throw FisherKernelsException.Backend($"{name}: the device was found but could not be opened: {e.Message}", e);
        }
    }

    public string Name { get; }

    /// <summary>The ILGPU accelerator (for baselines that run on the same device context, e.g. cuBLAS).</summary>
    internal Accelerator Accelerator => accelerator;

    public string Device => $"{accelerator.Name} ({accelerator.AcceleratorType}, {accelerator.MemorySize / (1 << 20)} MiB)";

    /// <summary>
    /// Symmetric eigendecomposition runs on the host in float64 (CPU backend: LAPACK or managed):
    /// it happens once per curvature, float32 is not accurate enough for it, and no GPU library is
    /// available through ILGPU. The per-query work (KronQuadratic, Woodbury) runs on the device.
    /// </summary>
    private readonly CpuBackend host = new();

    private DeviceBuffer<T> Pool<T>() where T : unmanaged
    {
        var buffer = new DeviceBuffer<T>(accelerator);
        pooled.Add(buffer);
        return buffer;
    }

    /// <summary>Device allocations made so far by all pooled buffers (constant in steady state).</summary>
    internal int DeviceAllocations => pooled.Sum(buffer => buffer.Allocations);

    /// <summary>Every kernel this backend launches, with whether it is explicitly grouped (for code-generation tests).</summary>
    internal static IReadOnlyList<(MethodInfo Kernel, bool ExplicitlyGrouped)> Kernels { get; } =
    [
        (Method(nameof(GemmKernel)), true),
        (Method(nameof(BroadcastRowsKernel)), false),
        (Method(nameof(AccumulateKernel)), true),
        (Method(nameof(WeightedSquareSumKernel)), true),
        (Method(nameof(DivideRowsKernel)), false),
        // Device-resident plans (IlgpuBackend.Tensors.cs)
        (Method(nameof(CopyPairsKernel)), false),
        (Method(nameof(UnaryKernel)), false),
        (Method(nameof(BinaryKernel)), false),
        (Method(nameof(NormalizeKernel)), false),
        (Method(nameof(SoftmaxKernel)), false),
        (Method(nameof(ReduceKernel)), false),
        (Method(nameof(GatherKernel)), false),
        (Method(nameof(AttentionKernel)), false),
        // Their reverse and tangent passes (IlgpuBackend.Derivatives.cs)
        (Method(nameof(FillKernel)), false),
        (Method(nameof(UnaryVjpKernel)), false),
        (Method(nameof(AddReducedKernel)), false),
        (Method(nameof(AddGatheredKernel)), false),
        (Method(nameof(ScatterRowsKernel)), false),
        (Method(nameof(NormalizeDerivativeKernel)), false),
        (Method(nameof(SoftmaxVjpKernel)), false),
    ];

    private static MethodInfo Method(string name) =>
        typeof(IlgpuBackend).GetMethod(name, BindingFlags.NonPublic | BindingFlags.Static)
        ?? throw new InvalidOperationException($"kernel {name} not found");

    /// <summary>Waits for the device and maps a device failure to a clear error.</summary>
    private void Synchronize()
    {
        try { accelerator.Synchronize(); }
        catch (Exception e) when (e is not FisherKernelsException)
        {
            throw FisherKernelsException.Backend($"{Name}: device error: {e.Message}", e);
        }
    }

    private static void Download(ArrayView1D<float, Stride1D.Dense> view, Span<float> target, AcceleratorStream stream)
    {
        if (!target.IsEmpty) view.SubView(0, target.Length).CopyToCPU(stream, target);
    }

    public void Dispose()
    {
        foreach (var buffer in pooled) buffer.Dispose();
        pooled.Clear();
        host.Dispose();
        accelerator.Dispose();
        context.Dispose();
    }
}

using FisherKernels.Backends.Cpu;
using FisherKernels.Backends.Ilgpu;

namespace FisherKernels.Backends;

/// <summary>
/// Opens a backend by name: "cpu", "cuda", "opencl", "ilgpu-cpu", or null / "best" for the fastest
/// available one (CUDA when a device is present, else the CPU backend). OpenCL is opened only when asked
/// for by name, and the ILGPU CPU emulator (a test tool, far slower than "cpu") never as "best".
/// </summary>
public static class BackendRegistry
{
    public const string Best = "best";

    /// <summary>Every backend name this build knows, in order of preference.</summary>
    public static IReadOnlyList<string> Names { get; } = ["cuda", "cpu", "opencl", "ilgpu-cpu"];

    private static readonly Lazy<IReadOnlyList<string>> Probed = new(Probe);

    /// <summary>Opens the named backend; <paramref name="threads"/> applies to the CPU backend (0 = all cores).</summary>
    public static IComputeBackend Create(string? name = null, int threads = 0)
    {
        string key = (name ?? Best).Trim().ToLowerInvariant();
        if (key == Best) return TryOpen("cuda", threads) ?? new CpuBackend(threads);
        if (!Names.Contains(key))
            throw FisherKernelsException.Argument(
                $"unknown backend '{name}': choose one of {string.Join(", ", Names)} or '{Best}' (available here: {string.Join(", ", Available())})");
        return TryOpen(key, threads) ?? throw FisherKernelsException.Backend(
            $"backend '{key}' is not available: {WhyNot(key)} (available here: {string.Join(", ", Available())})");
    }

    /// <summary>The backends that can be opened on this machine, in order of preference (probed once per process by opening each).</summary>
    public static IReadOnlyList<string> Available() => Probed.Value;

    /// <summary>The backend, or null when its device is absent.</summary>
    private static IComputeBackend? TryOpen(string key, int threads) => key switch
    {
        "cpu" => new CpuBackend(threads),
        "cuda" => IlgpuBackend.TryCreateCuda(),
        "opencl" => IlgpuBackend.TryCreateOpenCL(),
        "ilgpu-cpu" => IlgpuBackend.CreateCpuEmulator(),
        _ => null,
    };

    private static string WhyNot(string key) => key == "cuda"
        ? "no CUDA device (or no NVIDIA driver) was found"
        : "no OpenCL 2.0 device with generic address space support was found";

    private static IReadOnlyList<string> Probe()
    {
        var available = new List<string>();
        foreach (string name in Names)
        {
            try
            {
                using var backend = TryOpen(name, threads: 1);
                if (backend != null) available.Add(name);
            }
            catch (FisherKernelsException) { }
        }
        return available;
    }
}

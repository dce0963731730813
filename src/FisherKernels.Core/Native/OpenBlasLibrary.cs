using System.Runtime.InteropServices;

namespace FisherKernels.Native;

/// <summary>
/// Loads OpenBLAS (which on Debian also carries LAPACK) once, lazily, and hands out its exports.
/// Absent library ⇒ <see cref="IsAvailable"/> is false and callers take their managed path.
/// </summary>
internal static unsafe class OpenBlasLibrary
{
    private static readonly string[] Candidates =
    [
        "libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "libopenblas.so",
    ];

    private static readonly Lazy<nint> Handle = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Set FISHERKERNELS_NO_BLAS=1 to force the managed paths (tests use this to cover both).</summary>
    public static bool IsAvailable => Handle.Value != 0;

    /// <summary>The export's address, or 0 when the library or the symbol is missing.</summary>
    public static nint Export(string name) =>
        IsAvailable && NativeLibrary.TryGetExport(Handle.Value, name, out var p) ? p : 0;

    private static nint Load()
    {
        if (Environment.GetEnvironmentVariable("FISHERKERNELS_NO_BLAS") == "1") return 0;
        // Debian's OpenBLAS 0.3.21 does not recognise Zen 5 and falls back to AVX2 kernels; its
        // AVX-512 (SkylakeX) kernels run correctly there and are much faster. OpenBLAS reads the
        // variable in its load-time constructor, and .NET on Unix keeps Environment variables in a
        // managed copy, so set it in the C environment before loading. A user's own choice wins.
        if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE") is null
            && System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
            setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
        foreach (var name in Candidates)
            if (NativeLibrary.TryLoad(name, out var handle)) return handle;
        return 0;
    }

    [DllImport("libc", CharSet = CharSet.Ansi)]
    private static extern int setenv(string name, string value, int overwrite);
}

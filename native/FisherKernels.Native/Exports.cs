namespace FisherKernels.Native;

/// <summary>The [UnmanagedCallersOnly] entry points behind native/include/fisherkernels.h (SPEC §8).</summary>
internal static class Exports
{
}

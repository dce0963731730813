using System.Runtime.Intrinsics;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Scans for elements that are not ±0 (NaN counts as non-zero), 8 at a time by their bits: derivatives are often zero
/// in whole rows (every row after the scored position in a score's reverse pass), and the work on them is skipped.
/// (<c>Span.IndexOfAnyExcept(0f)</c> compares floats one at a time: float equality is not bitwise.)
/// </summary>
internal static class Nonzero
{
    /// <summary>The index of the first element of x[0..n) that is not ±0, or −1.</summary>
    public static unsafe int First(float* x, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (var magnitude = Vector256.Create(0x7FFFFFFFu); i + 8 <= n; i += 8)
            {
                uint nonzero = ~Vector256.Equals(Vector256.Load((uint*)x + i) & magnitude, Vector256<uint>.Zero).ExtractMostSignificantBits() & 0xFF;
                if (nonzero != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(nonzero);
            }
        for (; i < n; i++)
            if ((BitConverter.SingleToUInt32Bits(x[i]) & 0x7FFFFFFFu) != 0) return i;
        return -1;
    }

    /// <summary>The index of the last element of x[0..n) that is not ±0, or −1.</summary>
    public static unsafe int Last(float* x, int n)
    {
        int i = n;
        if (Vector256.IsHardwareAccelerated)
            for (var magnitude = Vector256.Create(0x7FFFFFFFu); i - 8 >= 0; i -= 8)
            {
                uint nonzero = ~Vector256.Equals(Vector256.Load((uint*)x + i - 8) & magnitude, Vector256<uint>.Zero).ExtractMostSignificantBits() & 0xFF;
                if (nonzero != 0) return i - 8 + 31 - System.Numerics.BitOperations.LeadingZeroCount(nonzero);
            }
        for (i--; i >= 0; i--)
            if ((BitConverter.SingleToUInt32Bits(x[i]) & 0x7FFFFFFFu) != 0) return i;
        return -1;
    }

    /// <summary>Whether every element of <paramref name="x"/> is ±0.</summary>
    public static unsafe bool IsZero(ReadOnlySpan<float> x)
    {
        fixed (float* p = x) return First(p, x.Length) < 0;
    }
}

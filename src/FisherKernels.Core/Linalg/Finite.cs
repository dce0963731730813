using System.Numerics;
using System.Runtime.CompilerServices;

namespace FisherKernels.Linalg;

/// <summary>
/// Refuses non-finite input before it reaches a solver: NaN makes LAPACK's iterations misbehave and
/// every result meaningless, so the caller gets one message naming the operand and the element instead.
/// </summary>
internal static class Finite
{
    public static void Require(ReadOnlySpan<float> values, string what)
    {
        if (AllFinite(values)) return;
        int i = 0;
        while (float.IsFinite(values[i])) i++;
        throw FisherKernelsException.Argument($"{what} has a non-finite value {values[i]} at element {i}");
    }

    public static void Require(ReadOnlySpan<double> values, string what)
    {
        if (AllFinite(values)) return;
        int i = 0;
        while (double.IsFinite(values[i])) i++;
        throw FisherKernelsException.Argument($"{what} has a non-finite value {values[i]} at element {i}");
    }

    /// <summary>x·0 is 0 for every finite x and NaN for ∞ and NaN: one multiply-add per element, at memory speed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool AllFinite<T>(ReadOnlySpan<T> values) where T : unmanaged, INumber<T>
    {
        var poison = Vector<T>.Zero;
        int i = 0;
        for (; i <= values.Length - Vector<T>.Count; i += Vector<T>.Count) poison += new Vector<T>(values[i..]) * Vector<T>.Zero;
        T tail = T.Zero;
        for (; i < values.Length; i++) tail += values[i] * T.Zero;
        return Vector.Sum(poison) == T.Zero && tail == T.Zero;
    }
}

using System.Numerics.Tensors;

namespace FisherKernels.Linalg;

/// <summary>
/// Refuses non-finite input before it reaches a solver: NaN makes LAPACK's iterations misbehave and
/// every result meaningless, so the caller gets one message naming the operand and the element instead.
/// </summary>
internal static class Finite
{
    public static void Require(ReadOnlySpan<float> values, string what)
    {
        // MaxMagnitude is vectorized and returns NaN if any value is NaN, ∞ if any is infinite.
        if (values.IsEmpty || float.IsFinite(TensorPrimitives.MaxMagnitude(values))) return;
        int i = 0;
        while (float.IsFinite(values[i])) i++;
        throw FisherKernelsException.Argument($"{what} has a non-finite value {values[i]} at element {i}");
    }

    public static void Require(ReadOnlySpan<double> values, string what)
    {
        if (values.IsEmpty || double.IsFinite(TensorPrimitives.MaxMagnitude(values))) return;
        int i = 0;
        while (double.IsFinite(values[i])) i++;
        throw FisherKernelsException.Argument($"{what} has a non-finite value {values[i]} at element {i}");
    }
}

using System.Numerics;
using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Clip (opset 11+): y = min(max(x, min), max) with <c>min</c> and <c>max</c> optional scalar inputs (absent: no bound;
/// min above max gives max everywhere, as min(max(·)) does). Float and every integer type. The derivative with respect to x
/// is 1 where min ≤ x ≤ max and 0 elsewhere (torch's clamp convention at the bounds); the bounds get none.
/// </summary>
internal sealed class Clip : Operator
{
    public Clip(OperatorNode node) : base(node) => RequireInputs(1, 3);

    public override bool IsDifferentiable(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        if (x.Type == ElementType.Bool) throw UnsupportedError($"input of type {x.Type} is not supported");
        for (int i = 1; i < inputs.Length; i++)
            if (inputs[i] is { } bound && (bound.Type != x.Type || bound.Length != 1))
                throw Error($"{(i == 1 ? "min" : "max")} must be one {x.Type} element, got {bound}");
        return [new TensorInfo(x.Type, x.Shape)];
    }

    private static float Bound(ReadOnlySpan<NdArray?> inputs, int index, float absent) =>
        index < inputs.Length && inputs[index] is NdArray<float> b ? b.Data[0] : absent;

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (inputs[0], outputs[0])
        {
            case (NdArray<float> x, NdArray<float> y):
                TensorPrimitives.Max(x.Span, Bound(inputs, 1, float.NegativeInfinity), y.Span);
                TensorPrimitives.Min(y.Span, Bound(inputs, 2, float.PositiveInfinity), y.Span);
                break;
            case (NdArray<long> x, NdArray<long> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<int> x, NdArray<int> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<sbyte> x, NdArray<sbyte> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<byte> x, NdArray<byte> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<short> x, NdArray<short> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<ushort> x, NdArray<ushort> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<uint> x, NdArray<uint> y): ClipIntegers(inputs, x, y); break;
            case (NdArray<ulong> x, NdArray<ulong> y): ClipIntegers(inputs, x, y); break;
            default: throw UnsupportedError($"element type {inputs[0]!.ElementType} is not supported");
        }
    }

    /// <summary>Integers: an absent bound is the type's own limit.</summary>
    private static void ClipIntegers<T>(ReadOnlySpan<NdArray?> inputs, NdArray<T> x, NdArray<T> y) where T : unmanaged, INumber<T>, IMinMaxValue<T>
    {
        T lo = inputs.Length > 1 && inputs[1] is NdArray<T> l ? l.Data[0] : T.MinValue, hi = inputs.Length > 2 && inputs[2] is NdArray<T> h ? h.Data[0] : T.MaxValue;
        for (int i = 0; i < x.Data.Length; i++) y.Data[i] = T.Min(T.Max(x.Data[i], lo), hi);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy || inputGrads[0] is not { } gx) return;
        var x = ((NdArray<float>)inputs[0]!).Data;
        float lo = Bound(inputs, 1, float.NegativeInfinity), hi = Bound(inputs, 2, float.PositiveInfinity);
        for (int i = 0; i < x.Length; i++)
            if (x[i] >= lo && x[i] <= hi) gx.Data[i] += gy.Data[i];
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is not { } tx) { ty.Span.Clear(); return; }
        var x = ((NdArray<float>)inputs[0]!).Data;
        float lo = Bound(inputs, 1, float.NegativeInfinity), hi = Bound(inputs, 2, float.PositiveInfinity);
        for (int i = 0; i < x.Length; i++) ty.Data[i] = x[i] >= lo && x[i] <= hi ? tx.Data[i] : 0;
    }
}

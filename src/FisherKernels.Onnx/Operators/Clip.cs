using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Clip (opset 11+): y = min(max(x, min), max) with <c>min</c> and <c>max</c> optional scalar inputs (absent: no bound;
/// min above max gives max everywhere, as min(max(·)) does). Float, int64 and int32. The derivative with respect to x
/// is 1 where min ≤ x ≤ max and 0 elsewhere (torch's clamp convention at the bounds); the bounds get none.
/// </summary>
internal sealed class Clip : Operator
{
    public Clip(OperatorNode node) : base(node) => RequireInputs(1, 3);

    public override bool IsDifferentiable(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        if (x.Type is not (ElementType.Float32 or ElementType.Int64 or ElementType.Int32)) throw UnsupportedError($"input of type {x.Type} is not supported");
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
            case (NdArray<long> x, NdArray<long> y):
                long lo = inputs.Length > 1 && inputs[1] is NdArray<long> l ? l.Data[0] : long.MinValue, hi = inputs.Length > 2 && inputs[2] is NdArray<long> h ? h.Data[0] : long.MaxValue;
                for (int i = 0; i < x.Data.Length; i++) y.Data[i] = Math.Min(Math.Max(x.Data[i], lo), hi);
                break;
            case (NdArray<int> x, NdArray<int> y):
                int lo32 = inputs.Length > 1 && inputs[1] is NdArray<int> l32 ? l32.Data[0] : int.MinValue, hi32 = inputs.Length > 2 && inputs[2] is NdArray<int> h32 ? h32.Data[0] : int.MaxValue;
                for (int i = 0; i < x.Data.Length; i++) y.Data[i] = Math.Min(Math.Max(x.Data[i], lo32), hi32);
                break;
            default: throw UnsupportedError($"element type {inputs[0]!.ElementType} is not supported");
        }
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

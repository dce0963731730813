using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// com.microsoft BiasAdd (ONNX Runtime contrib schema): Y = X + bias + skip with X and skip [N, S, C] and bias [C]
/// added to every row. Linear in all three inputs.
/// </summary>
internal sealed class BiasAdd : Operator
{
    public BiasAdd(OperatorNode node) : base(node) => RequireInputs(3, 3);

    public override bool IsDifferentiable(int input) => true;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "X");
        var bias = RequiredFloat(inputs, 1, "bias");
        var skip = RequiredFloat(inputs, 2, "skip");
        if (x.Shape.Length != 3 || !Tensors.SameShape(skip.Shape, x.Shape) || !Tensors.SameShape(bias.Shape, [x.Shape[2]]))
            throw Error($"X [{ShapeUtil.Format(x.Shape)}] must be [N, S, C] with skip of the same shape and bias [C], got skip [{ShapeUtil.Format(skip.Shape)}] and bias [{ShapeUtil.Format(bias.Shape)}]");
        return [new TensorInfo(ElementType.Float32, x.Shape)];
    }

    /// <summary>y = a + b + c, with <paramref name="c"/> one row repeated (empty spans are zeros).</summary>
    private static void Sum(ReadOnlySpan<float> a, ReadOnlySpan<float> row, ReadOnlySpan<float> b, Span<float> y, int channels)
    {
        if (a.IsEmpty) y.Clear(); else a.CopyTo(y);
        if (!b.IsEmpty) TensorPrimitives.Add(y, b, y);
        if (row.IsEmpty) return;
        for (int r = 0; r < y.Length; r += channels) TensorPrimitives.Add(y.Slice(r, channels), row, y.Slice(r, channels));
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) =>
        Sum(((NdArray<float>)inputs[0]!).Data, ((NdArray<float>)inputs[1]!).Data, ((NdArray<float>)inputs[2]!).Data,
            ((NdArray<float>)outputs[0]).Data, inputs[1]!.Shape[0]);

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        if (inputGrads[0] is { } gx) TensorPrimitives.Add(gx.Span, gy.Span, gx.Span);
        if (inputGrads[2] is { } gSkip) TensorPrimitives.Add(gSkip.Span, gy.Span, gSkip.Span);
        if (inputGrads[1] is not { } gBias) return;
        int channels = gBias.Data.Length;
        for (int r = 0; r < gy.Data.Length; r += channels) TensorPrimitives.Add(gBias.Span, gy.Span.Slice(r, channels), gBias.Span);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is { } ty)
            Sum(inputTangents[0]?.Data, inputTangents[1]?.Data, inputTangents[2]?.Data, ty.Data, inputs[1]!.Shape[0]);
    }
}

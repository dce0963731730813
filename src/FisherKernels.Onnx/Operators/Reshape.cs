namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Reshape (opset 5+): the target shape is a known int64 input; 0 copies the input's dimension
/// (unless allowzero = 1, opset 14+), one -1 is inferred. A view: the elements do not move.
/// </summary>
internal sealed class Reshape : Operator
{
    private readonly bool allowZero;

    public Reshape(OperatorNode node) : base(node)
    {
        RequireInputs(2, 2);
        allowZero = node.Attributes.GetInt("allowzero", 0) != 0;
    }

    public override bool IsView => true;

    public override bool IsDifferentiable(int input) => input == 0;

    public override bool NeedsValue(int input) => input == 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var data = Required(inputs, 0, "data");
        var requested = ConstantInts(Required(inputs, 1, "shape"), "shape");
        var shape = new int[requested.Length];
        int inferred = -1;
        long known = 1;
        for (int i = 0; i < requested.Length; i++)
        {
            long d = requested[i];
            if (d == -1)
            {
                if (inferred >= 0) throw Error("the shape has more than one -1");
                inferred = i;
                continue;
            }
            if (d == 0 && !allowZero)
            {
                if (i >= data.Shape.Length) throw Error($"shape[{i}] = 0 copies a dimension the input [{ShapeUtil.Format(data.Shape)}] does not have");
                d = data.Shape[i];
            }
            if (d < 0 || d > int.MaxValue) throw Error($"invalid dimension {requested[i]} in shape [{string.Join(", ", requested)}]");
            shape[i] = (int)d;
            known *= d;
        }
        long total = data.Length;
        if (inferred >= 0)
        {
            if (known == 0 || total % known != 0) throw Error($"cannot reshape [{ShapeUtil.Format(data.Shape)}] to [{string.Join(", ", requested)}]");
            shape[inferred] = (int)(total / known);
        }
        else if (known != total) throw Error($"cannot reshape [{ShapeUtil.Format(data.Shape)}] ({total} elements) to [{ShapeUtil.Format(shape)}]");
        return [new TensorInfo(data.Type, shape, data.Value is null ? null : Tensors.WithShape(data.Value, shape))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) =>
        Tensors.CopyElements(inputs[0]!, outputs[0]);

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads) =>
        PassThroughVjp(outputGrads, inputGrads);

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents) =>
        PassThroughJvp(inputTangents, outputTangents);
}

using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Operators whose output 0 is input 0's elements unchanged under a (possibly) new shape: Identity,
/// Squeeze, Unsqueeze, Flatten (and <see cref="Dropout"/> in inference). The graph may alias them (<see cref="Operator.IsView"/>); derivatives are the identity.
/// </summary>
internal sealed class View : Operator
{
    private readonly long[]? axesAttribute;

    public View(OperatorNode node) : base(node)
    {
        switch (node.OpType)
        {
            case "Identity": RequireInputs(1, 1); break;
            case "Flatten": RequireInputs(1, 1); break;
            default: RequireInputs(1, node.Opset >= 13 ? 2 : 1); break;
        }
        if (node.OpType is "Squeeze" or "Unsqueeze" && node.Opset < 13) axesAttribute = node.Attributes.GetInts("axes");
    }

    public override bool IsView => true;

    public override bool IsDifferentiable(int input) => input == 0;

    public override bool NeedsValue(int input) => Node.OpType is "Squeeze" or "Unsqueeze" && Node.Opset >= 13 && input == 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        int[] shape = Node.OpType switch
        {
            "Identity" => x.Shape,
            "Flatten" => FlattenShape(x.Shape),
            "Squeeze" => SqueezeShape(x.Shape, Axes(inputs)),
            _ => UnsqueezeShape(x.Shape, Axes(inputs) ?? throw Error("axes are required")),
        };
        return [new TensorInfo(x.Type, shape, x.Value is null ? null : Tensors.WithShape(x.Value, shape))];
    }

    private long[]? Axes(ReadOnlySpan<TensorInfo?> inputs) =>
        Node.Opset >= 13 ? (inputs.Length > 1 && inputs[1] is { } a ? ConstantInts(a, "axes") : null) : axesAttribute;

    private int[] FlattenShape(int[] shape)
    {
        int a = (int)Node.Attributes.GetInt("axis", 1);
        if (a < 0) a += shape.Length;
        if (a < 0 || a > shape.Length) throw Error($"axis {Node.Attributes.GetInt("axis", 1)} is out of range for rank {shape.Length}");
        return [Tensors.Product(shape, 0, a), Tensors.Product(shape, a, shape.Length)];
    }

    private int[] SqueezeShape(int[] shape, long[]? axes)
    {
        if (axes is null) return shape.Where(d => d != 1).ToArray();
        var drop = new bool[shape.Length];
        foreach (long axis in axes)
        {
            int a = NormalizeAxis(axis, shape.Length, "axes");
            if (shape[a] != 1) throw Error($"cannot squeeze axis {axis} of size {shape[a]}");
            drop[a] = true;
        }
        return shape.Where((_, i) => !drop[i]).ToArray();
    }

    private int[] UnsqueezeShape(int[] shape, long[] axes)
    {
        int rank = shape.Length + axes.Length;
        var inserted = new bool[rank];
        foreach (long axis in axes)
        {
            int a = NormalizeAxis(axis, rank, "axes");
            if (inserted[a]) throw Error($"axis {axis} appears twice");
            inserted[a] = true;
        }
        var result = new int[rank];
        for (int i = 0, j = 0; i < rank; i++) result[i] = inserted[i] ? 1 : shape[j++];
        return result;
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

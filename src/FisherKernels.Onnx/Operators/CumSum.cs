using System.Numerics;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// CumSum along the axis given by input 1 (a known scalar), with the exclusive and reverse attributes; float,
/// int64 and int32 (exports compute position ids as cumsum(attention_mask) − 1). Linear: the JVP is the same
/// scan of the tangent, the VJP the scan of the cotangent in the opposite direction.
/// </summary>
internal sealed class CumSum : Operator
{
    private readonly bool exclusive, reverse;

    public CumSum(OperatorNode node) : base(node)
    {
        RequireInputs(2, 2);
        exclusive = node.Attributes.GetInt("exclusive", 0) != 0;
        reverse = node.Attributes.GetInt("reverse", 0) != 0;
    }

    public override bool IsDifferentiable(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "x");
        if (x.Type is not (ElementType.Float32 or ElementType.Int64 or ElementType.Int32)) throw UnsupportedError($"element type {x.Type} is not supported");
        var axis = Required(inputs, 1, "axis");
        if (axis.Length != 1) throw Error($"axis must be a scalar, got [{ShapeUtil.Format(axis.Shape)}]");
        if (axis.Value is not null) NormalizeAxis(ConstantInts(axis, "axis")[0], x.Shape.Length);
        return [new TensorInfo(x.Type, x.Shape)];
    }

    private (int Outer, int Length, int Inner) Layout(NdArray x, NdArray axisInput)
    {
        long axis = axisInput switch
        {
            NdArray<long> l => l.Data[0],
            NdArray<int> i => i.Data[0],
            _ => throw Error($"axis must be int64 or int32, got {axisInput.ElementType}"),
        };
        int a = NormalizeAxis(axis, x.Rank);
        return (Tensors.Product(x.Shape, 0, a), x.Shape[a], Tensors.Product(x.Shape, a + 1, x.Rank));
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var layout = Layout(inputs[0]!, inputs[1]!);
        switch (inputs[0], outputs[0])
        {
            case (NdArray<float> x, NdArray<float> y): Scan(x.Data, y.Data, layout, reverse, false); break;
            case (NdArray<long> x, NdArray<long> y): Scan(x.Data, y.Data, layout, reverse, false); break;
            case (NdArray<int> x, NdArray<int> y): Scan(x.Data, y.Data, layout, reverse, false); break;
            default: throw UnsupportedError($"element type {inputs[0]!.ElementType} is not supported");
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is { } gy && inputGrads[0] is { } gx) Scan(gy.Data, gx.Data, Layout(inputs[0]!, inputs[1]!), !reverse, true);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is { } tx) Scan(tx.Data, ty.Data, Layout(inputs[0]!, inputs[1]!), reverse, false);
        else ty.Span.Clear();
    }

    /// <summary>y (+)= running sums of x along the axis, from the end when <paramref name="backwards"/>.</summary>
    private void Scan<T>(T[] x, T[] y, (int Outer, int Length, int Inner) layout, bool backwards, bool accumulate) where T : INumber<T>
    {
        var (outer, length, inner) = layout;
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                T sum = T.Zero;
                for (int step = 0; step < length; step++)
                {
                    int j = backwards ? length - 1 - step : step;
                    int index = (o * length + j) * inner + i;
                    T value = x[index];
                    if (!exclusive) sum += value;
                    y[index] = accumulate ? y[index] + sum : sum;
                    if (exclusive) sum += value;
                }
            }
    }
}

using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// A decomposed GELU (tanh or erf form) fused at plan time in a derivative plan: outputs Y and its slope dY/dX,
/// both written by the forward pass. Every reverse or tangent pass over that forward (the score runs one per
/// position) is then one multiply by the slope instead of re-evaluating exp and erf. Long arrays are split
/// across the threads. The slope is read by these derivatives alone, so its own derivatives are not taken.
/// </summary>
internal sealed class GeluWithSlope(OperatorNode node, bool tanh) : Operator(node)
{
    public override bool IsDifferentiable(int input) => true;

    /// <summary>The input gradient is written outright when it is fresh (no zeroing pass before).</summary>
    public override bool WritesFreshGradients => true;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "X");
        return [x, x];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = Tensors.Float(inputs[0], Node, "X").Data;
        var y = Tensors.Float(outputs[0], Node, "Y").Data;
        var slope = Tensors.Float(outputs[1], Node, "slope").Data;
        ParallelWork.ForRanges(x.Length, context.Threads, BinaryElementwise.ParallelMinimum, (start, count) =>
        {
            if (tanh)
            {
                FastMath.GeluTanh(x.AsSpan(start, count), y.AsSpan(start, count));
                FastMath.GeluTanhDerivative(x.AsSpan(start, count), slope.AsSpan(start, count));
            }
            else
            {
                FastMath.GeluErf(x.AsSpan(start, count), y.AsSpan(start, count));
                FastMath.GeluErfDerivative(x.AsSpan(start, count), slope.AsSpan(start, count));
            }
        });
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (inputGrads[0] is not { } gx) return;
        bool fresh = (context.FreshGradients & 1) != 0;
        if (outputGrads[0] is not { } gy)
        {
            if (fresh) gx.Span.Clear();
            return;
        }
        var slope = ((NdArray<float>)outputs[1]).Data;
        ParallelWork.ForRanges(gx.Data.Length, context.Threads, BinaryElementwise.ParallelMinimum, (start, count) =>
        {
            var target = gx.Data.AsSpan(start, count);
            if (fresh) TensorPrimitives.Multiply(gy.Data.AsSpan(start, count), slope.AsSpan(start, count), target);
            else TensorPrimitives.MultiplyAdd(gy.Data.AsSpan(start, count), slope.AsSpan(start, count), target, target);
        });
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is not { } tx) { ty.Span.Clear(); return; }
        var slope = ((NdArray<float>)outputs[1]).Data;
        ParallelWork.ForRanges(ty.Data.Length, context.Threads, BinaryElementwise.ParallelMinimum, (start, count) =>
            TensorPrimitives.Multiply(tx.Data.AsSpan(start, count), slope.AsSpan(start, count), ty.Data.AsSpan(start, count)));
    }
}

using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// ReduceSum, ReduceMean, ReduceMax over float. Axes from the attribute (ReduceSum before 13, the others
/// before 18) or the optional second input (after); keepdims (default 1); no axes reduces everything unless
/// noop_with_empty_axes = 1. ReduceMax's derivative flows to every element equal to the maximum.
/// </summary>
internal sealed class Reduce : Operator
{
    private enum Kind { Sum, Mean, Max }

    private readonly Kind kind;
    private readonly bool keepDims, noopWithEmptyAxes, axesAsInput;
    private readonly long[]? axesAttribute;

    public Reduce(OperatorNode node) : base(node)
    {
        kind = node.OpType switch { "ReduceSum" => Kind.Sum, "ReduceMean" => Kind.Mean, _ => Kind.Max };
        axesAsInput = node.Opset >= (kind == Kind.Sum ? 13 : 18);
        RequireInputs(1, axesAsInput ? 2 : 1);
        keepDims = node.Attributes.GetInt("keepdims", 1) != 0;
        noopWithEmptyAxes = node.Attributes.GetInt("noop_with_empty_axes", 0) != 0;
        if (!axesAsInput) axesAttribute = node.Attributes.GetInts("axes");
    }

    public override bool IsDifferentiable(int input) => input == 0;

    public override bool NeedsValue(int input) => axesAsInput && input == 1;

    private ReadOnlySpan<long> Axes(NdArray? axesInput) => axesAsInput
        ? axesInput switch { null => default, NdArray<long> l => l.Data, _ => throw Error($"axes must be int64, got {axesInput.ElementType}") }
        : axesAttribute;

    /// <summary>Marks the reduced axes; false when the node is the identity (no axes and noop_with_empty_axes).</summary>
    private bool Reduced(int rank, NdArray? axesInput, Span<bool> reduced)
    {
        var axes = Axes(axesInput);
        if (axes.IsEmpty) { reduced.Fill(!noopWithEmptyAxes); return !noopWithEmptyAxes; }
        reduced.Clear();
        foreach (long axis in axes) reduced[NormalizeAxis(axis, rank, "axes")] = true;
        return true;
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "data");
        NdArray? axes = null;
        if (axesAsInput && inputs.Length > 1 && inputs[1] is { } a) { ConstantInts(a, "axes"); axes = a.Value; }
        var reduced = new bool[x.Shape.Length];
        if (!Reduced(x.Shape.Length, axes, reduced)) return [new TensorInfo(x.Type, x.Shape)];
        if (kind == Kind.Max && x.Length == 0) throw Error("ReduceMax of an empty tensor");
        var shape = Enumerable.Range(0, x.Shape.Length).Where(i => keepDims || !reduced[i]).Select(i => reduced[i] ? 1 : x.Shape[i]).ToArray();
        return [new TensorInfo(x.Type, shape)];
    }

    /// <summary>The broadcast layout over the input with the output (keepdims form) as operand 1, and the reduced count.</summary>
    private (Broadcast Layout, long Count) Layout(NdArray x, ReadOnlySpan<NdArray?> inputs)
    {
        Span<bool> reduced = stackalloc bool[x.Rank];
        Span<int> kept = stackalloc int[x.Rank];
        bool reduces = Reduced(x.Rank, inputs.Length > 1 ? inputs[1] : null, reduced);
        long count = 1;
        for (int i = 0; i < x.Rank; i++)
        {
            kept[i] = reduces && reduced[i] ? 1 : x.Shape[i];
            if (reduces && reduced[i]) count *= x.Shape[i];
        }
        return (Broadcast.Create(x.Shape, x.Shape, kept), count);
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = Tensors.Float(inputs[0], Node, "data");
        var y = Tensors.Float(outputs[0], Node, "reduced");
        y.Span.Fill(kind == Kind.Max ? float.NegativeInfinity : 0);
        var (layout, count) = Layout(x, inputs);
        var run = new ForwardRun { X = x.Data, Y = y.Data, Max = kind == Kind.Max, StepY = layout.Step1 };
        layout.ForEachRun(ref run);
        if (kind == Kind.Mean) TensorPrimitives.Multiply(y.Span, 1f / count, y.Span);
    }

    private struct ForwardRun : IRunAction
    {
        public float[] X, Y; public bool Max; public int StepY;

        public readonly void Run(int input, int unused, int output, int unused2, int length)
        {
            var x = X.AsSpan(input, length);
            if (StepY == 0) Y[output] = Max ? MathF.Max(Y[output], TensorPrimitives.Max(x)) : Y[output] + TensorPrimitives.Sum(x);
            else if (Max) TensorPrimitives.Max(Y.AsSpan(output, length), x, Y.AsSpan(output, length));
            else TensorPrimitives.Add(Y.AsSpan(output, length), x, Y.AsSpan(output, length));
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy || inputGrads[0] is not { } gx) return;
        var x = Tensors.Float(inputs[0], Node, "data");
        var y = Tensors.Float(outputs[0], Node, "reduced");
        var (layout, count) = Layout(x, inputs);
        var run = new DerivativeRun { X = x.Data, Y = y.Data, Source = gy.Data, Target = gx.Data, Reverse = true, Kind = kind, Scale = 1f / count, StepY = layout.Step1 };
        layout.ForEachRun(ref run);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        ty.Span.Clear();
        if (inputTangents[0] is not { } tx) return;
        var x = Tensors.Float(inputs[0], Node, "data");
        var y = Tensors.Float(outputs[0], Node, "reduced");
        var (layout, count) = Layout(x, inputs);
        var run = new DerivativeRun { X = x.Data, Y = y.Data, Source = tx.Data, Target = ty.Data, Reverse = false, Kind = kind, Scale = 1f / count, StepY = layout.Step1 };
        layout.ForEachRun(ref run);
    }

    /// <summary>Reverse: gx[i] += w_i·gy[o(i)]. Forward: ty[o(i)] += w_i·tx[i]. w = 1 (sum), 1/count (mean), [x_i = max] (max).</summary>
    private struct DerivativeRun : IRunAction
    {
        public float[] X, Y, Source, Target; public bool Reverse; public Kind Kind; public float Scale; public int StepY;

        public readonly void Run(int input, int unused, int output, int unused2, int length)
        {
            if (Kind != Kind.Max)
            {
                // Sum and mean are linear with one weight: whole runs at once.
                float w = Kind == Kind.Sum ? 1 : Scale;
                var x = (Reverse ? Target : Source).AsSpan(input, length);
                if (StepY == 1)
                {
                    var y = (Reverse ? Source : Target).AsSpan(output, length);
                    if (Reverse) TensorPrimitives.MultiplyAdd(y, w, x, x); else TensorPrimitives.MultiplyAdd(x, w, y, y);
                }
                else if (Reverse) TensorPrimitives.Add(x, w * Source[output], x);
                else Target[output] += w * TensorPrimitives.Sum(x);
                return;
            }
            for (int i = 0; i < length; i++, output += StepY)
            {
                float w = Kind switch { Kind.Sum => 1, Kind.Mean => Scale, _ => X[input + i] == Y[output] ? 1 : 0 };
                if (w == 0) continue;
                if (Reverse) Target[input + i] += w * Source[output];
                else Target[output] += w * Source[input + i];
            }
        }
    }
}

using System.Numerics;
using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// ScatterND (opset 11+): a copy of <c>data</c> whose slices addressed by the last axis of <c>indices</c>
/// (k leading coordinates, negative ones counting from the end) are replaced by (reduction "none") or
/// increased by (reduction "add", opset 16+) the matching slices of <c>updates</c>. The specification leaves
/// duplicate indices undefined under "none": they are refused. Reductions "mul", "max", "min" are not supported.
/// </summary>
internal sealed class ScatterND : Operator
{
    private readonly bool add;

    public ScatterND(OperatorNode node) : base(node)
    {
        RequireInputs(3, 3);
        string reduction = node.Attributes.GetString("reduction", "none");
        add = reduction switch
        {
            "none" => false,
            "add" when node.Opset >= 16 => true,
            "add" => throw FisherKernelsException.Format($"reduction 'add' needs opset 16, the model uses opset {node.Opset}"),
            "mul" or "max" or "min" => throw FisherKernelsException.Unsupported($"reduction '{reduction}' is not supported (none and add are)"),
            _ => throw FisherKernelsException.Format($"reduction '{reduction}' is not a ScatterND reduction"),
        };
    }

    public override bool IsDifferentiable(int input) => input != 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var data = Required(inputs, 0, "data");
        var indices = Required(inputs, 1, "indices");
        var updates = Required(inputs, 2, "updates");
        if (indices.Type != ElementType.Int64) throw Error($"indices must be int64, got {indices.Type}");
        if (indices.Shape.Length == 0) throw Error("indices must have rank 1 or more");
        int k = indices.Shape[^1], r = data.Shape.Length;
        if (k > r) throw Error($"indices address {k} axes, data has rank {r}");
        int[] expected = [.. indices.Shape[..^1], .. data.Shape[k..]];
        if (!Tensors.SameShape(updates.Shape, expected))
            throw Error($"updates has shape [{ShapeUtil.Format(updates.Shape)}], expected [{ShapeUtil.Format(expected)}] (indices.shape[:-1] + data.shape[{k}:])");
        if (updates.Type != data.Type) throw Error($"updates are {updates.Type}, data is {data.Type}");
        if (add && data.Type == ElementType.Bool) throw Error("reduction 'add' needs numbers, data is bool");
        return [new TensorInfo(data.Type, data.Shape)];
    }

    /// <summary>Geometry of one call: <see cref="Count"/> index tuples, each addressing a slice of <see cref="Slice"/> elements.</summary>
    private readonly record struct Layout(int Count, int Slice, int K);

    private static Layout Describe(NdArray data, NdArray indices)
    {
        int k = indices.Shape[^1];
        return new Layout(Tensors.Product(indices.Shape, 0, indices.Rank - 1), Tensors.Product(data.Shape, k, data.Rank), k);
    }

    /// <summary>Element offset in data of the slice addressed by index tuple <paramref name="j"/>.</summary>
    private int Offset(NdArray data, long[] indices, Layout layout, int j) => checked(Slot(data, indices, layout, j) * layout.Slice);

    /// <summary>Which of the data's slices (row-major over its first k axes) index tuple <paramref name="j"/> addresses.</summary>
    private int Slot(NdArray data, long[] indices, Layout layout, int j)
    {
        long offset = 0;
        for (int d = 0; d < layout.K; d++)
        {
            long i = indices[(long)j * layout.K + d], dim = data.Shape[d];
            long a = i < 0 ? i + dim : i;
            if (a < 0 || a >= dim) throw FisherKernelsException.Argument($"{Node}: index {i} on axis {d} is outside [{-dim}, {dim - 1}]");
            offset = offset * dim + a;
        }
        return (int)offset;
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var data = inputs[0]!;
        var indices = ((NdArray<long>)inputs[1]!).Data;
        var layout = Describe(data, inputs[1]!);
        if (!add) RefuseDuplicates(context, data, indices, layout);
        switch (outputs[0])
        {
            case NdArray<float> y: Scatter(data, indices, layout, (NdArray<float>)inputs[2]!, y); break;
            case NdArray<long> y: Scatter(data, indices, layout, (NdArray<long>)inputs[2]!, y); break;
            case NdArray<int> y: Scatter(data, indices, layout, (NdArray<int>)inputs[2]!, y); break;
            case NdArray<bool> y:
                ((NdArray<bool>)data).Data.AsSpan().CopyTo(y.Data);
                var u = ((NdArray<bool>)inputs[2]!).Data;
                for (int j = 0; j < layout.Count; j++) u.AsSpan(j * layout.Slice, layout.Slice).CopyTo(y.Data.AsSpan(Offset(data, indices, layout, j)));
                break;
            default: throw UnsupportedError($"element type {outputs[0].ElementType} is not supported");
        }
    }

    private void Scatter<T>(NdArray data, long[] indices, Layout layout, NdArray<T> updates, NdArray<T> y) where T : unmanaged, INumber<T>
    {
        ((NdArray<T>)data).Data.AsSpan().CopyTo(y.Data);
        for (int j = 0; j < layout.Count; j++)
        {
            var from = updates.Data.AsSpan(j * layout.Slice, layout.Slice);
            var to = y.Data.AsSpan(Offset(data, indices, layout, j), layout.Slice);
            if (add) for (int e = 0; e < to.Length; e++) to[e] += from[e];
            else from.CopyTo(to);
        }
    }

    /// <summary>Under "none" a slice written twice has no defined value: refuse it (marks live in the scratch buffer).</summary>
    private void RefuseDuplicates(OpContext context, NdArray data, long[] indices, Layout layout)
    {
        var marks = context.Scratch(Tensors.Product(data.Shape, 0, layout.K));
        marks.Clear();
        for (int j = 0; j < layout.Count; j++)
        {
            int slot = Slot(data, indices, layout, j);
            if (marks[slot] != 0)
                throw FisherKernelsException.Argument($"{Node}: index tuple {j} addresses a slice already written (duplicate indices are undefined for reduction 'none')");
            marks[slot] = 1;
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var data = inputs[0]!;
        var indices = ((NdArray<long>)inputs[1]!).Data;
        var layout = Describe(data, inputs[1]!);
        var gData = inputGrads[0];
        var gUpdates = inputGrads.Length > 2 ? inputGrads[2] : null;
        if (gData is not null) TensorPrimitives.Add(gData.Data, gy.Data, gData.Data);
        for (int j = 0; j < layout.Count; j++)
        {
            int offset = Offset(data, indices, layout, j);
            var g = gy.Data.AsSpan(offset, layout.Slice);
            // Under "none" the written slices no longer depend on data (indices are distinct).
            if (!add && gData is not null) TensorPrimitives.Subtract(gData.Data.AsSpan(offset, layout.Slice), g, gData.Data.AsSpan(offset, layout.Slice));
            if (gUpdates is not null) TensorPrimitives.Add(gUpdates.Data.AsSpan(j * layout.Slice, layout.Slice), g, gUpdates.Data.AsSpan(j * layout.Slice, layout.Slice));
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var data = inputs[0]!;
        var indices = ((NdArray<long>)inputs[1]!).Data;
        var layout = Describe(data, inputs[1]!);
        if (inputTangents[0] is { } tData) tData.Data.AsSpan().CopyTo(ty.Data); else ty.Data.AsSpan().Clear();
        var tUpdates = inputTangents.Length > 2 ? inputTangents[2] : null;
        for (int j = 0; j < layout.Count; j++)
        {
            var to = ty.Data.AsSpan(Offset(data, indices, layout, j), layout.Slice);
            if (tUpdates is null) { if (!add) to.Clear(); continue; }
            var from = tUpdates.Data.AsSpan(j * layout.Slice, layout.Slice);
            if (add) TensorPrimitives.Add(to, from, to); else from.CopyTo(to);
        }
    }
}

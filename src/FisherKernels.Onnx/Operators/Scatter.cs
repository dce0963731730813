using System.Numerics;
using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// ScatterND (opset 11+): a copy of <c>data</c> whose slices addressed by the last axis of <c>indices</c>
/// (k leading coordinates, negative ones counting from the end) are replaced by (reduction "none") or
/// combined with the matching slices of <c>updates</c>, one index tuple after another (reductions "add" and
/// "mul", opset 16+; "max" and "min", opset 18+). The specification leaves duplicate indices undefined under
/// "none": they are refused.
/// </summary>
internal sealed class ScatterND : Operator
{
    private enum Reduction { None, Add, Mul, Max, Min }

    private readonly Reduction reduction;

    public ScatterND(OperatorNode node) : base(node)
    {
        RequireInputs(3, 3);
        string name = node.Attributes.GetString("reduction", "none");
        (reduction, int since) = name switch
        {
            "none" => (Reduction.None, 11),
            "add" => (Reduction.Add, 16),
            "mul" => (Reduction.Mul, 16),
            "max" => (Reduction.Max, 18),
            "min" => (Reduction.Min, 18),
            _ => throw FisherKernelsException.Format($"reduction '{name}' is not a ScatterND reduction"),
        };
        if (node.Opset < since) throw FisherKernelsException.Format($"reduction '{name}' needs opset {since}, the model uses opset {node.Opset}");
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
        if (reduction != Reduction.None && data.Type == ElementType.Bool) throw Error($"reduction '{Node.Attributes.GetString("reduction", "none")}' needs numbers, data is bool");
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
        if (reduction == Reduction.None) RefuseDuplicates(context, data, indices, layout);
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
            switch (reduction)
            {
                case Reduction.None: from.CopyTo(to); break;
                case Reduction.Add: for (int e = 0; e < to.Length; e++) to[e] += from[e]; break;
                case Reduction.Mul: for (int e = 0; e < to.Length; e++) to[e] *= from[e]; break;
                // Max/Min keep the value already there on a tie (and so its derivative, as Coefficients does).
                case Reduction.Max: for (int e = 0; e < to.Length; e++) if (from[e] > to[e]) to[e] = from[e]; break;
                case Reduction.Min: for (int e = 0; e < to.Length; e++) if (from[e] < to[e]) to[e] = from[e]; break;
            }
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
        if (reduction is Reduction.Mul or Reduction.Max or Reduction.Min)
        {
            var (dData, dUpdates) = Coefficients((NdArray<float>)data, indices, layout, (NdArray<float>)inputs[2]!);
            if (gData is not null) for (int i = 0; i < dData.Length; i++) gData.Data[i] += gy.Data[i] * dData[i];
            if (gUpdates is null) return;
            for (int j = 0; j < layout.Count; j++)
            {
                int offset = Offset(data, indices, layout, j);
                for (int e = 0; e < layout.Slice; e++) gUpdates.Data[j * layout.Slice + e] += gy.Data[offset + e] * dUpdates[j * layout.Slice + e];
            }
            return;
        }
        if (gData is not null) TensorPrimitives.Add(gData.Data, gy.Data, gData.Data);
        for (int j = 0; j < layout.Count; j++)
        {
            int offset = Offset(data, indices, layout, j);
            var g = gy.Data.AsSpan(offset, layout.Slice);
            // Under "none" the written slices no longer depend on data (indices are distinct).
            if (reduction == Reduction.None && gData is not null) TensorPrimitives.Subtract(gData.Data.AsSpan(offset, layout.Slice), g, gData.Data.AsSpan(offset, layout.Slice));
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
        var tUpdates = inputTangents.Length > 2 ? inputTangents[2] : null;
        if (reduction is Reduction.Mul or Reduction.Max or Reduction.Min)
        {
            var (dData, dUpdates) = Coefficients((NdArray<float>)data, indices, layout, (NdArray<float>)inputs[2]!);
            if (inputTangents[0] is { } t0) TensorPrimitives.Multiply(t0.Data, dData, ty.Data); else ty.Data.AsSpan().Clear();
            if (tUpdates is null) return;
            for (int j = 0; j < layout.Count; j++)
            {
                int offset = Offset(data, indices, layout, j);
                for (int e = 0; e < layout.Slice; e++) ty.Data[offset + e] += tUpdates.Data[j * layout.Slice + e] * dUpdates[j * layout.Slice + e];
            }
            return;
        }
        if (inputTangents[0] is { } tData) tData.Data.AsSpan().CopyTo(ty.Data); else ty.Data.AsSpan().Clear();
        for (int j = 0; j < layout.Count; j++)
        {
            var to = ty.Data.AsSpan(Offset(data, indices, layout, j), layout.Slice);
            if (tUpdates is null) { if (reduction == Reduction.None) to.Clear(); continue; }
            var from = tUpdates.Data.AsSpan(j * layout.Slice, layout.Slice);
            if (reduction == Reduction.Add) TensorPrimitives.Add(to, from, to); else from.CopyTo(to);
        }
    }

    /// <summary>
    /// ∂y/∂data (data's shape) and ∂y/∂updates (updates' shape) under "mul", "max" or "min". Each addressed slot is
    /// data combined with its tuples' updates in order: for "mul", each factor's derivative is the product of the
    /// others (products before and after it, so a zero factor is no division); for "max"/"min", 1 for the value the
    /// forward kept (the earliest of equal ones) and 0 for the rest. Unaddressed elements pass unchanged (1).
    /// </summary>
    private (float[] DData, float[] DUpdates) Coefficients(NdArray<float> data, long[] indices, Layout layout, NdArray<float> updates)
    {
        var dData = new float[data.Data.Length];
        var dUpdates = new float[updates.Data.Length];
        dData.AsSpan().Fill(1);
        var bySlot = new Dictionary<int, List<int>>();
        for (int j = 0; j < layout.Count; j++)
        {
            int slot = Slot(data, indices, layout, j);
            if (!bySlot.TryGetValue(slot, out var tuples)) bySlot[slot] = tuples = [];
            tuples.Add(j);
        }
        foreach (var (slot, tuples) in bySlot)
        {
            int m = tuples.Count;
            var before = new float[m];
            for (int e = 0; e < layout.Slice; e++)
            {
                int at = slot * layout.Slice + e;
                float U(int k) => updates.Data[tuples[k] * layout.Slice + e];
                if (reduction == Reduction.Mul)
                {
                    float product = data.Data[at];
                    for (int k = 0; k < m; k++) { before[k] = product; product *= U(k); }
                    float after = 1;
                    for (int k = m - 1; k >= 0; k--) { dUpdates[tuples[k] * layout.Slice + e] = before[k] * after; after *= U(k); }
                    dData[at] = after;
                    continue;
                }
                int kept = -1;
                float value = data.Data[at];
                for (int k = 0; k < m; k++)
                    if (reduction == Reduction.Max ? U(k) > value : U(k) < value) (kept, value) = (k, U(k));
                dData[at] = kept < 0 ? 1 : 0;
                if (kept >= 0) dUpdates[tuples[kept] * layout.Slice + e] = 1;
            }
        }
        return (dData, dUpdates);
    }
}

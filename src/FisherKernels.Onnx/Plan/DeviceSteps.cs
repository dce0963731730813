using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// Each plan step as device launches (<see cref="DevicePlan"/>): arithmetic, normalizations, softmax, reductions,
/// GEMMs and attention map to their <see cref="ITensorDevice"/> kernels; pure data movement (transpose, slice,
/// concat, split, expand, tile, pad, gather by constant indices) becomes a constant table of (target, source) element
/// pairs, found by running the host operator once per data input on index-numbered arrays, so that the device copies
/// exactly what the host operator moves.
/// </summary>
internal static class DeviceSteps
{
    /// <summary>Operators that only move elements (output elements are input elements or constants); value: their data inputs (-1: all).</summary>
    private static readonly Dictionary<string, int> Movement = new()
    {
        ["Transpose"] = 0, ["Slice"] = 0, ["Split"] = 0, ["Expand"] = 0, ["Tile"] = 0, ["Pad"] = 0, ["Trilu"] = 0, ["Concat"] = -1,
    };

    private static readonly Dictionary<string, DeviceBinary> Binaries = new()
    {
        ["Add"] = DeviceBinary.Add, ["Sub"] = DeviceBinary.Sub, ["Mul"] = DeviceBinary.Mul, ["Div"] = DeviceBinary.Div,
        ["Pow"] = DeviceBinary.Pow, ["Max"] = DeviceBinary.Max, ["Min"] = DeviceBinary.Min, ["Equal"] = DeviceBinary.Equal,
        ["Less"] = DeviceBinary.Less, ["Greater"] = DeviceBinary.Greater, ["LessOrEqual"] = DeviceBinary.LessOrEqual,
        ["GreaterOrEqual"] = DeviceBinary.GreaterOrEqual, ["And"] = DeviceBinary.And, ["Or"] = DeviceBinary.Or,
    };

    private static readonly Dictionary<string, DeviceUnary> Unaries = new()
    {
        ["Sqrt"] = DeviceUnary.Sqrt, ["Reciprocal"] = DeviceUnary.Reciprocal, ["Neg"] = DeviceUnary.Neg, ["Exp"] = DeviceUnary.Exp,
        ["Log"] = DeviceUnary.Log, ["Tanh"] = DeviceUnary.Tanh, ["Erf"] = DeviceUnary.Erf, ["Sigmoid"] = DeviceUnary.Sigmoid,
        ["Relu"] = DeviceUnary.Relu, ["Cos"] = DeviceUnary.Cos, ["Sin"] = DeviceUnary.Sin, ["Abs"] = DeviceUnary.Abs,
        ["Not"] = DeviceUnary.Not, ["Identity"] = DeviceUnary.Identity, ["Dropout"] = DeviceUnary.Identity,
    };

    public static IEnumerable<Action> Translate(DevicePlan plan, ExecutionPlan.Step step)
    {
        var op = step.Op;
        var node = op.Node;
        var device = plan.Device;
        string type = node.OpType;
        switch (op)
        {
            case PackedMatMul packed: return PackedGemm(plan, step, packed.Activation);
            case MatMul: return BatchedGemm(plan, step);
            case FusedAttention attention: return Attention(plan, step, attention);
            case Normalization when step.Outputs.Length == 1 && !type.StartsWith("Skip", StringComparison.Ordinal): return Normalize(plan, step);
            case Softmax when type == "Softmax": return SoftmaxRows(plan, step);
            case Reduce when type is "ReduceMean" or "ReduceSum": return ReduceAxes(plan, step);
            case Where: return [Elementwise(plan, step, DeviceBinary.Where)];
            case Cast: return [CastValues(plan, step)];
            case Gather when !plan.IsConstant(step, 1): return [GatherRows(plan, step)];
            case GeluWithSlope: return GeluAndSlope(plan, step);
        }
        if (op is BinaryElementwise or Compare && Binaries.TryGetValue(type, out var binary) && node.InputCount == 2)
            return [Elementwise(plan, step, binary)];
        if (op is UnaryElementwise or Not or View && step.Inputs.Length == 1 && UnaryOf(node) is { } unary)
        {
            var x = plan.Input(step, 0, "X");
            var y = plan.Buffer(step.Outputs[0]);
            long length = step.Outputs[0].Length;
            return [() => device.Unary(unary, x, y, length)];
        }
        if (Movement.TryGetValue(type, out int data) || type == "Gather")
            return Move(plan, step, type == "Gather" ? 0 : data);
        throw Unsupported(plan, step, "has no device form yet");
    }

    /// <summary>Whether an operator only moves elements; <paramref name="dataInputs"/>: its data input (-1: all).</summary>
    internal static bool IsMovement(string type, out int dataInputs) => Movement.TryGetValue(type, out dataInputs);

    internal static DeviceUnary? UnaryOf(OperatorNode node) => node.OpType switch
    {
        "Gelu" => node.Attributes.GetString("approximate", "none") == "tanh" ? DeviceUnary.GeluTanh : DeviceUnary.GeluErf,
        var t when node.Domain.Length == 0 && Unaries.TryGetValue(t, out var u) => u,
        _ => null,
    };

    internal static FisherKernelsException Unsupported(DevicePlan plan, ExecutionPlan.Step step, string why) =>
        FisherKernelsException.Unsupported($"{step.Op.Node}: {why} on the {plan.Backend} backend (use --backend cpu for this model)");

    private static Action Elementwise(DevicePlan plan, ExecutionPlan.Step step, DeviceBinary function)
    {
        int operands = function == DeviceBinary.Where ? 3 : 2;
        var y = step.Outputs[0];
        var layout = BroadcastLayout.For(y.Shape, step.Inputs[..operands].ToArray().Select(i => i!.Shape).ToArray());
        var a = plan.Input(step, 0, "A");
        var b = plan.Input(step, 1, "B");
        var c = operands == 3 ? plan.Input(step, 2, "C") : null;
        var output = plan.Buffer(y);
        var device = plan.Device;
        return () => device.Binary(function, layout, a, b, c, output);
    }

    /// <summary>A derivative plan's GELU: Y and the slope dY/dX its derivative passes read.</summary>
    private static IEnumerable<Action> GeluAndSlope(DevicePlan plan, ExecutionPlan.Step step)
    {
        bool tanh = step.Op.Node.Attributes.GetString("approximate", "none") == "tanh";
        var (x, y, slope) = (plan.Input(step, 0, "X"), plan.Buffer(step.Outputs[0]), plan.Buffer(step.Outputs[1]));
        long length = step.Outputs[0].Length;
        var device = plan.Device;
        yield return () => device.Unary(tanh ? DeviceUnary.GeluTanh : DeviceUnary.GeluErf, x, y, length);
        yield return () => device.Unary(tanh ? DeviceUnary.GeluTanhSlope : DeviceUnary.GeluErfSlope, x, slope, length);
    }

    private static Action CastValues(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (from, to) = (step.Inputs[0]!.ElementType, step.Outputs[0].ElementType);
        var function = to == ElementType.Bool ? DeviceUnary.NotZero
            : from == ElementType.Float32 && to is ElementType.Int64 or ElementType.Int32 ? DeviceUnary.Truncate
            : DeviceUnary.Identity;
        var x = plan.Input(step, 0, "input");
        var y = plan.Buffer(step.Outputs[0]);
        long length = step.Outputs[0].Length;
        var device = plan.Device;
        return () => device.Unary(function, x, y, length);
    }

    /// <summary>A MatMul by a constant weight [K × N], with its bias Add and GELU: one GEMM over all rows, then the epilogue in place.</summary>
    private static IEnumerable<Action> PackedGemm(DevicePlan plan, ExecutionPlan.Step step, Activation activation)
    {
        var weight = step.Inputs[1]!;
        int k = weight.Shape[0], n = weight.Shape[1];
        var y = step.Outputs[0];
        int m = checked((int)(y.Length / Math.Max(n, 1)));
        var (a, w, output) = (plan.Input(step, 0, "A"), plan.Input(step, 1, "weight"), plan.Buffer(y));
        var device = plan.Device;
        var shape = new GemmShape(m, n, k);
        yield return () => device.Gemm(shape, a, w, output);
        if (step.Inputs.Length > 2 && step.Inputs[2] is not null)
        {
            var bias = plan.Input(step, 2, "bias");
            var layout = BroadcastLayout.For([m, n], [m, n], [n]);
            yield return () => device.Binary(DeviceBinary.Add, layout, output, bias, null, output);
        }
        if (activation != Activation.None)
        {
            var function = activation == Activation.GeluTanh ? DeviceUnary.GeluTanh : DeviceUnary.GeluErf;
            yield return () => device.Unary(function, output, output, y.Length);
        }
    }

    /// <summary>
    /// MatMul of [..., M, K] by [..., K, N]: one GEMM when either side has no batch (a side without batch is shared by
    /// every batch; rows of a batched A by one B are one tall GEMM), a strided batched GEMM when both have the output's batch.
    /// </summary>
    private static IEnumerable<Action> BatchedGemm(DevicePlan plan, ExecutionPlan.Step step)
    {
        var shape = MatMulShape(plan, step);
        var (a, b, y) = (plan.Input(step, 0, "A"), plan.Input(step, 1, "B"), plan.Buffer(step.Outputs[0]));
        var device = plan.Device;
        yield return () => device.Gemm(shape, a, b, y);
    }

    /// <summary>The GEMM of a MatMul step (<see cref="BatchedGemm"/>), β = 0.</summary>
    internal static GemmShape MatMulShape(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (aShape, bShape, yShape) = (step.Inputs[0]!.Shape, step.Inputs[1]!.Shape, step.Outputs[0].Shape);
        if (aShape.Length < 2 || bShape.Length < 2)
            throw Unsupported(plan, step, $"a 1-D operand ([{ShapeUtil.Format(aShape)}] by [{ShapeUtil.Format(bShape)}]) has no device form yet");
        int m = aShape[^2], k = aShape[^1], n = bShape[^1];
        long aBatch = ShapeUtil.Product(aShape[..^2]), bBatch = ShapeUtil.Product(bShape[..^2]), batch = ShapeUtil.Product(yShape[..^2]);
        GemmShape shape;
        if (bBatch == 1) shape = new GemmShape(checked((int)(aBatch * m)), n, k, BatchCount: aBatch == batch ? 1 : 0);
        else if (aBatch == batch && bBatch == batch)
            shape = new GemmShape(m, n, k, BatchCount: checked((int)batch), StrideA: (long)m * k, StrideB: (long)k * n, StrideC: (long)m * n);
        else if (aBatch == 1 && bBatch == batch)
            shape = new GemmShape(m, n, k, BatchCount: checked((int)batch), StrideA: 0, StrideB: (long)k * n, StrideC: (long)m * n);
        else shape = default;
        if (shape.BatchCount == 0)
            throw Unsupported(plan, step, $"a partly broadcast batch ([{ShapeUtil.Format(aShape)}] by [{ShapeUtil.Format(bShape)}]) has no device form yet");
        return shape;
    }

    private static IEnumerable<Action> Normalize(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (rows, cols, epsilon, centered) = NormalizeShape(step);
        var (input, scale, output) = (plan.Input(step, 0, "X"), plan.Input(step, 1, "scale"), plan.Buffer(step.Outputs[0]));
        var bias = centered && step.Inputs.Length > 2 && step.Inputs[2] is not null ? plan.Input(step, 2, "bias") : null;
        var device = plan.Device;
        yield return () => device.Normalize(input, scale, bias, output, rows, cols, epsilon, centered);
    }

    /// <summary>A normalization's rows and columns (the normalized block), ε, and whether it centres (LayerNorm) or not (RMSNorm).</summary>
    internal static (int Rows, int Cols, float Epsilon, bool Centered) NormalizeShape(ExecutionPlan.Step step)
    {
        var node = step.Op.Node;
        var x = step.Inputs[0]!;
        int axis = (int)node.Attributes.GetInt("axis", -1);
        if (axis < 0) axis += x.Rank;
        int cols = Tensors.Product(x.Shape, axis, x.Rank), rows = cols == 0 ? 0 : (int)(x.Length / cols);
        return (rows, cols, node.Attributes.GetFloat("epsilon", 1e-5f), node.OpType == "LayerNormalization");
    }

    private static IEnumerable<Action> SoftmaxRows(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (rows, cols) = SoftmaxShape(plan, step);
        var (input, output) = (plan.Input(step, 0, "X"), plan.Buffer(step.Outputs[0]));
        var device = plan.Device;
        yield return () => device.Softmax(input, output, rows, cols);
    }

    /// <summary>A softmax's rows and their length (the last axis; before opset 13 the flattened trailing axes).</summary>
    internal static (int Rows, int Cols) SoftmaxShape(DevicePlan plan, ExecutionPlan.Step step)
    {
        var node = step.Op.Node;
        var x = step.Inputs[0]!;
        int axis = (int)node.Attributes.GetInt("axis", node.Opset >= 13 ? -1 : 1);
        if (axis < 0) axis += x.Rank;
        if (node.Opset >= 13 && axis != x.Rank - 1) throw Unsupported(plan, step, $"softmax over axis {axis} of rank {x.Rank} (not the last) has no device form yet");
        int cols = Tensors.Product(x.Shape, axis, x.Rank);
        return (cols == 0 ? 0 : (int)(x.Length / cols), cols);
    }

    /// <summary>ReduceMean / ReduceSum over one run of adjacent axes (as [outer × length × inner]).</summary>
    private static IEnumerable<Action> ReduceAxes(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (outer, length, inner) = ReduceShape(plan, step);
        bool mean = step.Op.Node.OpType == "ReduceMean";
        var (input, output) = (plan.Input(step, 0, "X"), plan.Buffer(step.Outputs[0]));
        var device = plan.Device;
        yield return () => device.Reduce(input, output, outer, length, inner, mean);
    }

    /// <summary>A reduction's input as [outer × length × inner], the reduced axes one adjacent run in the middle.</summary>
    internal static (int Outer, int Length, int Inner) ReduceShape(DevicePlan plan, ExecutionPlan.Step step)
    {
        var node = step.Op.Node;
        var x = step.Inputs[0]!;
        bool asInput = node.Opset >= (node.OpType == "ReduceSum" ? 13 : 18);
        long[] axes = asInput
            ? step.Inputs.Length > 1 && step.Inputs[1] is { } given ? Tensors.ToLongs(given)! : []
            : node.Attributes.GetInts("axes") ?? [];
        var reduced = new bool[x.Rank];
        if (axes.Length == 0)
        {
            if (node.Attributes.GetInt("noop_with_empty_axes", 0) != 0) throw Unsupported(plan, step, "a reduction without axes as the identity has no device form yet");
            Array.Fill(reduced, true);
        }
        foreach (long a in axes) reduced[a < 0 ? a + x.Rank : a] = true;
        int first = Array.IndexOf(reduced, true), last = Array.LastIndexOf(reduced, true);
        if (first < 0 || Enumerable.Range(first, last - first + 1).Any(d => !reduced[d]))
            throw Unsupported(plan, step, "a reduction over axes that are not adjacent has no device form yet");
        return (Tensors.Product(x.Shape, 0, first), Tensors.Product(x.Shape, first, last + 1), Tensors.Product(x.Shape, last + 1, x.Rank));
    }

    /// <summary>Gather by indices computed at run time (token embeddings).</summary>
    private static Action GatherRows(DevicePlan plan, ExecutionPlan.Step step)
    {
        var (outer, rows, inner, count) = GatherShape(step);
        var (table, indices, output) = (plan.Input(step, 0, "data"), plan.Input(step, 1, "indices"), plan.Buffer(step.Outputs[0]));
        var device = plan.Device;
        return () => device.Gather(table, indices, output, outer, rows, inner, count);
    }

    /// <summary>A Gather's table as [outer × rows × inner] around its axis, and how many indices it reads.</summary>
    internal static (int Outer, int Rows, int Inner, int Count) GatherShape(ExecutionPlan.Step step)
    {
        var data = step.Inputs[0]!;
        int axis = (int)step.Op.Node.Attributes.GetInt("axis", 0);
        if (axis < 0) axis += data.Rank;
        return (Tensors.Product(data.Shape, 0, axis), data.Shape[axis], Tensors.Product(data.Shape, axis + 1, data.Rank), checked((int)step.Inputs[1]!.Length));
    }

    private static IEnumerable<Action> Attention(DevicePlan plan, ExecutionPlan.Step step, FusedAttention op)
    {
        var permutations = op.Permutations;
        var (q, k, v, o) = (step.Inputs[0]!, step.Inputs[1]!, step.Inputs[2]!, step.Outputs[0]);
        int[] Permute(int[] shape, int[] perm) => perm.Select(p => shape[p]).ToArray();
        long[] Strides(int[] shape, int[] perm)
        {
            var source = new long[4];
            long stride = 1;
            for (int i = 3; i >= 0; i--) { source[i] = stride; stride *= shape[i]; }
            return perm.Select(p => source[p]).ToArray();
        }
        var (qShape, kShape, vShape) = (Permute(q.Shape, permutations[0]), Permute(k.Shape, permutations[1]), Permute(v.Shape, permutations[2]));
        var keyT = Strides(k.Shape, permutations[1]); // logical Kᵀ [B, H, D, Sk]; the kernel reads K as [B, H, Sk, D]
        var outputStrides = new long[4];
        var dense = Strides(o.Shape, [0, 1, 2, 3]);
        for (int j = 0; j < 4; j++) outputStrides[permutations[3][j]] = dense[j];
        var maskStrides = new long[4];
        var mask = op.Mask == FusedAttention.MaskKind.None ? null : step.Inputs[3];
        if (mask is not null)
        {
            int offset = 4 - mask.Rank;
            long stride = 1;
            int[] logical = [qShape[0], qShape[1], qShape[2], kShape[3]];
            for (int i = 3; i >= 0; i--)
            {
                int d = i < offset ? 1 : mask.Shape[i - offset];
                maskStrides[i] = d == 1 && logical[i] != 1 ? 0 : stride;
                stride *= d;
            }
        }
        var layout = new AttentionLayout(qShape[0], qShape[1], qShape[2], kShape[3], qShape[3], vShape[3],
            Strides(q.Shape, permutations[0]), [keyT[0], keyT[1], keyT[3], keyT[2]], Strides(v.Shape, permutations[2]), outputStrides,
            maskStrides, op.Mask switch { FusedAttention.MaskKind.Select => AttentionMask.Select, FusedAttention.MaskKind.Add => AttentionMask.Add, _ => AttentionMask.None },
            op.Scale, op.Fill, op.KeepWhere);
        var (qd, kd, vd, od) = (plan.Input(step, 0, "Q"), plan.Input(step, 1, "K"), plan.Input(step, 2, "V"), plan.Buffer(o));
        var md = mask is null ? null : plan.Input(step, 3, "mask");
        var device = plan.Device;
        yield return () => device.Attention(layout, qd, kd, vd, md, od);
    }

    /// <summary>One data input's elements moved into one output: (target, source) element pairs.</summary>
    internal sealed record MoveTable(int Input, int Output, int[] Pairs);

    /// <summary>Output elements that come from no input (pads, Trilu's zeros): (target, target) pairs into the zero-input run's output.</summary>
    internal sealed record FillTable(int Output, int[] Pairs, NdArray Values);

    /// <summary>
    /// A step that only moves elements, as (target, source) pairs per data input: the host operator runs on arrays whose
    /// elements are their own index + 1 (one data input at a time, the others zero), so each output element names the
    /// element it came from. Elements that come from no input (pads, Trilu's zeros) are copied from the output of a run
    /// on zero inputs, kept on the device. Inputs other than the data (starts, pads, shapes…) take their constant values.
    /// </summary>
    private static IEnumerable<Action> Move(DevicePlan plan, ExecutionPlan.Step step, int dataInputs)
    {
        var (moves, fills) = MovementTables(plan, step, dataInputs);
        var device = plan.Device;
        var launches = new List<Action>();
        foreach (var move in moves)
        {
            var (source, table, target) = (plan.Input(step, move.Input, $"data {move.Input}"), plan.Table(move.Pairs), plan.Buffer(step.Outputs[move.Output]));
            launches.Add(() => device.Copy(source, table, target));
        }
        foreach (var fill in fills)
        {
            var values = device.Allocate(fill.Values.Length);
            device.Upload(DevicePlan.AsFloats(fill.Values, $"{step.Op.Node}: output {fill.Output}"), values);
            plan.Own(values);
            var (table, target) = (plan.Table(fill.Pairs), plan.Buffer(step.Outputs[fill.Output]));
            launches.Add(() => device.Copy(values, table, target));
        }
        return launches;
    }

    /// <summary>The element pairs of a data-movement step (<see cref="Move"/>); <paramref name="dataInputs"/>: the data input (-1: all).</summary>
    internal static (List<MoveTable> Moves, List<FillTable> Fills) MovementTables(DevicePlan plan, ExecutionPlan.Step step, int dataInputs)
    {
        var op = step.Op;
        var data = Enumerable.Range(0, step.Inputs.Length).Where(i => step.Inputs[i] is not null && (dataInputs < 0 || i == dataInputs)).ToArray();
        for (int i = 0; i < step.Inputs.Length; i++)
            if (step.Inputs[i] is not null && !data.Contains(i) && !plan.IsConstant(step, i))
                throw Unsupported(plan, step, $"input {i} is computed at run time, which the device's data movement does not take");
        NdArray[] Run(int numbered)
        {
            var inputs = new NdArray?[step.Inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
            {
                if (step.Inputs[i] is not { } given) continue;
                if (!data.Contains(i)) { inputs[i] = given; continue; }
                var array = Tensors.Allocate(given.ElementType, (int[])given.Shape.Clone());
                if (i == numbered) Number(plan, step, array);
                inputs[i] = array;
            }
            var outputs = step.Outputs.Select(o => Tensors.Allocate(o.ElementType, (int[])o.Shape.Clone())).ToArray();
            op.Forward(plan.FoldingContext, inputs, outputs);
            return outputs;
        }
        var zero = Run(-1);
        var covered = step.Outputs.Select(o => new bool[o.Length]).ToArray();
        var moves = new List<MoveTable>();
        foreach (int i in data)
        {
            var numbered = Run(i);
            for (int j = 0; j < numbered.Length; j++)
            {
                var values = Values(numbered[j]);
                var pairs = new List<int>();
                for (int e = 0; e < values.Length; e++)
                    if (values[e] != 0 && !covered[j][e])
                    {
                        covered[j][e] = true;
                        pairs.Add(e);
                        pairs.Add(checked((int)values[e] - 1));
                    }
                if (pairs.Count > 0) moves.Add(new MoveTable(i, j, [.. pairs]));
            }
        }
        var fills = new List<FillTable>();
        for (int j = 0; j < zero.Length; j++)
        {
            var rest = Enumerable.Range(0, covered[j].Length).Where(e => !covered[j][e]).SelectMany(e => new[] { e, e }).ToArray();
            if (rest.Length > 0) fills.Add(new FillTable(j, rest, zero[j]));
        }
        return (moves, fills);
    }

    /// <summary>Fills <paramref name="array"/> with index + 1 (float indices are exact below 2²⁴).</summary>
    private static void Number(DevicePlan plan, ExecutionPlan.Step step, NdArray array)
    {
        switch (array)
        {
            case NdArray<float> f:
                if (f.Length >= 1 << 24) throw Unsupported(plan, step, $"moving {f.Length} elements (2^24 or more)");
                for (int e = 0; e < f.Data.Length; e++) f.Data[e] = e + 1;
                break;
            case NdArray<long> l: for (int e = 0; e < l.Data.Length; e++) l.Data[e] = e + 1; break;
            case NdArray<int> n: for (int e = 0; e < n.Data.Length; e++) n.Data[e] = e + 1; break;
            default: throw Unsupported(plan, step, $"moving {array.ElementType} values");
        }
    }

    private static long[] Values(NdArray array) => array is NdArray<float> f ? Array.ConvertAll(f.Data, v => (long)v) : Tensors.ToLongs(array)!;
}

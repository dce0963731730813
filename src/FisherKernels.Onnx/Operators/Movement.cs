using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>Receives the copies of a data-movement operator: <paramref name="length"/> elements of input
/// <paramref name="input"/> from <paramref name="source"/> on, <paramref name="sourceStride"/> apart (0 repeats
/// one element, negative walks backwards), go to output <paramref name="output"/> at <paramref name="destination"/> on, contiguous.</summary>
internal interface ICopySink
{
    void Run(int input, int source, int sourceStride, int output, int destination, int length);
}

/// <summary>
/// Operators that only move elements (Transpose, Slice, Gather, Concat, Split, Expand, Trilu): each
/// describes its copies once, as runs, and the forward (any element type), the JVP (the same copies of the
/// tangents) and the VJP (the copies reversed, adding, so broadcast and repeated sources sum up) all follow.
/// </summary>
internal abstract class MovementOperator(OperatorNode node) : Operator(node)
{
    /// <summary>Enumerates the copies from the inputs to the outputs (shapes as in the forward).</summary>
    protected abstract void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
        where TSink : struct, ICopySink, allows ref struct;

    /// <summary>False when some output elements are no copy (Trilu's zeros): outputs are cleared first.</summary>
    protected virtual bool CoversOutputs => true;

    /// <summary>Inputs whose elements move (the others are indices, shapes, axes).</summary>
    protected virtual bool IsData(int input) => input == 0;

    public override bool IsDifferentiable(int input) => IsData(input);

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (outputs[0])
        {
            case NdArray<float>: Copy<float>(inputs, outputs); break;
            case NdArray<long>: Copy<long>(inputs, outputs); break;
            case NdArray<int>: Copy<int>(inputs, outputs); break;
            case NdArray<bool>: Copy<bool>(inputs, outputs); break;
            case NdArray<sbyte>: Copy<sbyte>(inputs, outputs); break;
            case NdArray<byte>: Copy<byte>(inputs, outputs); break;
            case NdArray<short>: Copy<short>(inputs, outputs); break;
            case NdArray<ushort>: Copy<ushort>(inputs, outputs); break;
            case NdArray<uint>: Copy<uint>(inputs, outputs); break;
            case NdArray<ulong>: Copy<ulong>(inputs, outputs); break;
            default: throw UnsupportedError($"element type {outputs[0].ElementType} is not supported");
        }
    }

    private void Copy<T>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) where T : unmanaged
    {
        if (!CoversOutputs) foreach (var o in outputs) ((NdArray<T>)o).Span.Clear();
        var sink = new CopySink<T> { Inputs = inputs, Outputs = outputs };
        Runs(inputs, outputs, ref sink);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (!CoversOutputs) foreach (var t in outputTangents) t?.Span.Clear();
        var sink = new TangentSink { Inputs = inputTangents, Outputs = outputTangents };
        Runs(inputs, outputs, ref sink);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        var sink = new GradientSink { InputGrads = inputGrads, OutputGrads = outputGrads, Fresh = WritesFreshGradients ? context.FreshGradients : 0 };
        Runs(inputs, outputs, ref sink);
    }

    private ref struct CopySink<T> : ICopySink where T : unmanaged
    {
        public ReadOnlySpan<NdArray?> Inputs;
        public ReadOnlySpan<NdArray> Outputs;

        public readonly void Run(int input, int source, int sourceStride, int output, int destination, int length) =>
            Move(((NdArray<T>)Inputs[input]!).Data, source, sourceStride, ((NdArray<T>)Outputs[output]).Data.AsSpan(destination, length));
    }

    private ref struct TangentSink : ICopySink
    {
        public ReadOnlySpan<NdArray<float>?> Inputs;
        public ReadOnlySpan<NdArray<float>?> Outputs;

        public readonly void Run(int input, int source, int sourceStride, int output, int destination, int length)
        {
            if (Outputs[output] is not { } target) return;
            var to = target.Data.AsSpan(destination, length);
            if (input < Inputs.Length && Inputs[input] is { } tangent) Move(tangent.Data, source, sourceStride, to);
            else to.Clear();
        }
    }

    private ref struct GradientSink : ICopySink
    {
        public ReadOnlySpan<NdArray<float>?> InputGrads;
        public ReadOnlySpan<NdArray<float>?> OutputGrads;
        /// <summary>Input gradients to write rather than add into (only for operators that reach each input element once).</summary>
        public int Fresh;

        public readonly void Run(int input, int source, int sourceStride, int output, int destination, int length)
        {
            if (input >= InputGrads.Length || InputGrads[input] is not { } g) return;
            if ((Fresh >> input & 1) != 0)
            {
                // Every element of this input is reached once: copy (zero where the output has no gradient).
                float[] target = g.Data;
                if (OutputGrads[output] is not { } cotangent)
                {
                    for (int i = 0; i < length; i++) target[source + i * sourceStride] = 0;
                    return;
                }
                if (sourceStride == 1) cotangent.Data.AsSpan(destination, length).CopyTo(target.AsSpan(source, length));
                else for (int i = 0; i < length; i++) target[source + i * sourceStride] = cotangent.Data[destination + i];
                return;
            }
            if (OutputGrads[output] is not { } gy) return;
            if (sourceStride == 1) TensorPrimitives.Add(g.Data.AsSpan(source, length), gy.Data.AsSpan(destination, length), g.Data.AsSpan(source, length));
            else if (sourceStride == 0) g.Data[source] += TensorPrimitives.Sum(gy.Data.AsSpan(destination, length));
            else for (int i = 0; i < length; i++) g.Data[source + i * sourceStride] += gy.Data[destination + i];
        }
    }

    private static void Move<T>(T[] from, int source, int stride, Span<T> to)
    {
        if (stride == 1) from.AsSpan(source, to.Length).CopyTo(to);
        else if (stride == 0) to.Fill(from[source]);
        else for (int i = 0; i < to.Length; i++) to[i] = from[source + i * stride];
    }

    /// <summary>Row-major element strides of a shape.</summary>
    protected static void Strides(ReadOnlySpan<int> shape, Span<int> strides)
    {
        int s = 1;
        for (int i = shape.Length - 1; i >= 0; i--) { strides[i] = s; s *= shape[i]; }
    }

    /// <summary>
    /// Copies of an n-d block: element index i (over <paramref name="shape"/>) reads input at
    /// sourceBase + Σ i_d·sourceStrides_d and writes output at destinationBase + Σ i_d·destinationStrides_d.
    /// Dimensions that are contiguous on both sides are merged so runs are as long as possible.
    /// </summary>
    protected static void StridedRuns<TSink>(ref TSink sink, int input, int output, scoped ReadOnlySpan<int> shape,
                                             scoped ReadOnlySpan<int> sourceStrides, int sourceBase,
                                             scoped ReadOnlySpan<int> destinationStrides, int destinationBase)
        where TSink : struct, ICopySink, allows ref struct
    {
        if (shape.Length > Broadcast.MaxRank) throw FisherKernelsException.Unsupported($"rank {shape.Length} is above the supported {Broadcast.MaxRank}");
        Span<int> dims = stackalloc int[Broadcast.MaxRank], src = stackalloc int[Broadcast.MaxRank], dst = stackalloc int[Broadcast.MaxRank];
        int rank = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == 0) return;
            if (shape[i] == 1) continue;
            if (rank > 0 && src[rank - 1] == sourceStrides[i] * shape[i] && dst[rank - 1] == destinationStrides[i] * shape[i])
            {
                dims[rank - 1] *= shape[i]; src[rank - 1] = sourceStrides[i]; dst[rank - 1] = destinationStrides[i];
                continue;
            }
            dims[rank] = shape[i]; src[rank] = sourceStrides[i]; dst[rank] = destinationStrides[i];
            rank++;
        }
        if (rank == 0) { sink.Run(input, sourceBase, 1, output, destinationBase, 1); return; }
        // Runs along the innermost dimension (strided on the source side when it is not contiguous there).
        bool run = dst[rank - 1] == 1;
        int outer = run ? rank - 1 : rank, length = run ? dims[rank - 1] : 1, stride = run ? src[rank - 1] : 1;
        Span<int> index = stackalloc int[Broadcast.MaxRank];
        index.Clear();
        int s = sourceBase, d = destinationBase;
        while (true)
        {
            sink.Run(input, s, stride, output, d, length);
            int k = outer - 1;
            for (; k >= 0; k--)
            {
                s += src[k]; d += dst[k];
                if (++index[k] < dims[k]) break;
                s -= src[k] * dims[k]; d -= dst[k] * dims[k];
                index[k] = 0;
            }
            if (k < 0) return;
        }
    }
}

/// <summary>Transpose by <c>perm</c> (default: reversed axes).</summary>
internal sealed class Transpose : MovementOperator
{
    private readonly long[]? perm;

    public Transpose(OperatorNode node) : base(node)
    {
        RequireInputs(1, 1);
        perm = node.Attributes.GetInts("perm");
    }

    private int[] Permutation(int rank)
    {
        var p = new int[rank];
        for (int i = 0; i < rank; i++) p[i] = perm is null ? rank - 1 - i : (int)perm[i];
        return p;
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "data");
        int rank = x.Shape.Length;
        if (perm is not null && (perm.Length != rank || perm.Any(a => a < 0 || a >= rank) || perm.Distinct().Count() != rank))
            throw Error($"perm [{string.Join(", ", perm)}] is not a permutation of the {rank} axes");
        var p = Permutation(rank);
        return [new TensorInfo(x.Type, Array.ConvertAll(p, a => x.Shape[a]))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        if (outputs[0] is NdArray<float> y && SwapsLastTwoAxes(y.Rank)) SwapLastTwoAxes((NdArray<float>)inputs[0]!, y);
        else base.Forward(context, inputs, outputs);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is { } ty && inputTangents[0] is { } tx && SwapsLastTwoAxes(ty.Rank)) SwapLastTwoAxes(tx, ty);
        else base.Jvp(context, inputs, outputs, inputTangents, outputTangents);
    }

    /// <summary>A permutation reaches each input element once: a first gradient is written, not zeroed and added.</summary>
    public override bool WritesFreshGradients => true;

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        // Kᵀ's gradient, written fresh: the transpose of gY by register blocks, as the forward.
        if ((context.FreshGradients & 1) != 0 && outputGrads[0] is { } gy && inputGrads[0] is { } gx && SwapsLastTwoAxes(gy.Rank)) SwapLastTwoAxes(gy, gx);
        else base.Vjp(context, inputs, outputs, outputGrads, inputGrads);
    }

    /// <summary>Whether the permutation swaps the last two axes and keeps the others (Kᵀ in attention).</summary>
    private bool SwapsLastTwoAxes(int rank)
    {
        if (rank < 2) return false;
        for (int i = 0; i < rank; i++)
        {
            long axis = perm is null ? rank - 1 - i : perm[i];
            if (axis != (i < rank - 2 ? i : 2 * rank - 3 - i)) return false;
        }
        return true;
    }

    /// <summary>Each [R×C] matrix of the batch by 8×8 register transposes (the strided copies read one element per cache line).</summary>
    private static unsafe void SwapLastTwoAxes(NdArray<float> x, NdArray<float> y)
    {
        int rows = x.Shape[^2], cols = x.Shape[^1];
        long matrix = (long)rows * cols, batches = matrix == 0 ? 0 : x.Length / matrix;
        fixed (float* px = x.Data, py = y.Data)
            for (long i = 0; i < batches; i++) MatMul.Transpose(px + i * matrix, rows, cols, cols, py + i * matrix, rows);
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var x = inputs[0]!;
        int rank = x.Rank;
        Span<int> inStrides = stackalloc int[rank], src = stackalloc int[rank], dst = stackalloc int[rank];
        Strides(x.Shape, inStrides);
        Strides(outputs[0].Shape, dst);
        for (int i = 0; i < rank; i++) src[i] = inStrides[perm is null ? rank - 1 - i : (int)perm[i]];
        StridedRuns(ref sink, 0, 0, outputs[0].Shape, src, 0, dst, 0);
    }
}

/// <summary>Expand: broadcast the input to the broadcast of its shape and the given shape.</summary>
internal sealed class Expand : MovementOperator
{
    public Expand(OperatorNode node) : base(node) => RequireInputs(2, 2);

    public override bool NeedsValue(int input) => input == 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        var requested = ConstantInts(Required(inputs, 1, "shape"), "shape");
        if (requested.Any(d => d < 0 || d > int.MaxValue)) throw Error($"invalid shape [{string.Join(", ", requested)}]");
        var shape = Broadcast.Shape(x.Shape, Array.ConvertAll(requested, d => (int)d))
            ?? throw Error($"cannot expand [{ShapeUtil.Format(x.Shape)}] to [{string.Join(", ", requested)}]");
        return [new TensorInfo(x.Type, shape)];
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var x = inputs[0]!;
        var y = outputs[0];
        int rank = y.Rank, offset = rank - x.Rank;
        Span<int> inStrides = stackalloc int[x.Rank], src = stackalloc int[rank], dst = stackalloc int[rank];
        Strides(x.Shape, inStrides);
        Strides(y.Shape, dst);
        for (int i = 0; i < rank; i++) src[i] = i < offset || x.Shape[i - offset] == 1 ? 0 : inStrides[i - offset];
        StridedRuns(ref sink, 0, 0, y.Shape, src, 0, dst, 0);
    }
}

/// <summary>Slice with starts/ends/axes/steps as inputs (opset 10+) or attributes (before 10), ONNX clamping.</summary>
internal sealed class Slice : MovementOperator
{
    private readonly long[]? startsAttribute, endsAttribute, axesAttribute;

    public Slice(OperatorNode node) : base(node)
    {
        if (node.Opset >= 10) { RequireInputs(3, 5); return; }
        RequireInputs(1, 1);
        startsAttribute = node.Attributes.GetInts("starts") ?? throw FisherKernelsException.Format("attribute 'starts' is required");
        endsAttribute = node.Attributes.GetInts("ends") ?? throw FisherKernelsException.Format("attribute 'ends' is required");
        axesAttribute = node.Attributes.GetInts("axes");
    }

    /// <summary>The int64 elements of an int64 or int32 array (int32 converted into <paramref name="buffer"/>).</summary>
    private ReadOnlySpan<long> Longs(NdArray? array, Span<long> buffer, string name)
    {
        switch (array)
        {
            case null: return default;
            case NdArray<long> l: return l.Data;
            case NdArray<int> i when i.Data.Length <= buffer.Length:
                for (int k = 0; k < i.Data.Length; k++) buffer[k] = i.Data[k];
                return buffer[..i.Data.Length];
            default: throw Error($"{name} must be int64 or int32 of at most {buffer.Length} elements, got {array.ElementType} [{ShapeUtil.Format(array.Shape)}]");
        }
    }

    /// <summary>Per axis of the input: first index, step and count (untouched axes: 0, 1, the dimension).</summary>
    private void Plan(ReadOnlySpan<int> shape, ReadOnlySpan<NdArray?> values, Span<int> start, Span<int> step, Span<int> count)
    {
        Span<long> b0 = stackalloc long[Broadcast.MaxRank], b1 = stackalloc long[Broadcast.MaxRank],
                   b2 = stackalloc long[Broadcast.MaxRank], b3 = stackalloc long[Broadcast.MaxRank];
        scoped ReadOnlySpan<long> starts, ends, axes, steps;
        if (Node.Opset >= 10)
        {
            starts = Longs(values[1], b0, "starts");
            ends = Longs(values[2], b1, "ends");
            axes = values.Length > 3 ? Longs(values[3], b2, "axes") : default;
            steps = values.Length > 4 ? Longs(values[4], b3, "steps") : default;
        }
        else
        {
            starts = startsAttribute;
            ends = endsAttribute;
            axes = axesAttribute;
            steps = default;
        }
        if (ends.Length != starts.Length || (!axes.IsEmpty && axes.Length != starts.Length) || (!steps.IsEmpty && steps.Length != starts.Length))
            throw Error($"starts, ends, axes and steps must have one length, got {starts.Length}, {ends.Length}, {axes.Length}, {steps.Length}");
        int rank = shape.Length;
        for (int i = 0; i < rank; i++) { start[i] = 0; step[i] = 1; count[i] = shape[i]; }
        Span<bool> seen = stackalloc bool[rank];
        for (int i = 0; i < starts.Length; i++)
        {
            int axis = NormalizeAxis(axes.IsEmpty ? i : axes[i], rank, "axes");
            if (seen[axis]) throw Error($"axis {(axes.IsEmpty ? i : axes[i])} appears twice");
            seen[axis] = true;
            long dim = shape[axis], st = steps.IsEmpty ? 1 : steps[i];
            if (st == 0) throw Error("steps must not be 0");
            long b = starts[i] < 0 ? starts[i] + dim : starts[i];
            long e = ends[i] < 0 ? ends[i] + dim : ends[i];
            if (st > 0) { b = Math.Clamp(b, 0, dim); e = Math.Clamp(e, 0, dim); }
            else { b = Math.Clamp(b, 0, dim - 1); e = Math.Clamp(e, -1, dim - 1); }
            long n = st > 0 ? (e - b + st - 1) / st : (b - e - st - 1) / -st;
            start[axis] = (int)b; step[axis] = (int)Math.Clamp(st, -dim - 1, dim + 1); count[axis] = (int)Math.Max(0, n);
        }
    }

    public override bool NeedsValue(int input) => Node.Opset >= 10 && input >= 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "data");
        var values = new NdArray?[inputs.Length];
        if (Node.Opset >= 10)
        {
            values[1] = Known(Required(inputs, 1, "starts"), "starts");
            values[2] = Known(Required(inputs, 2, "ends"), "ends");
            if (inputs.Length > 3 && inputs[3] is { } a) values[3] = Known(a, "axes");
            if (inputs.Length > 4 && inputs[4] is { } s) values[4] = Known(s, "steps");
        }
        if (x.Shape.Length > Broadcast.MaxRank) throw UnsupportedError($"rank {x.Shape.Length} is above the supported {Broadcast.MaxRank}");
        int rank = x.Shape.Length;
        var count = new int[rank];
        Plan(x.Shape, values, stackalloc int[rank], stackalloc int[rank], count);
        return [new TensorInfo(x.Type, count)];
    }

    private NdArray Known(TensorInfo info, string name)
    {
        ConstantInts(info, name);
        return info.Value!;
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var x = inputs[0]!;
        int rank = x.Rank, baseOffset = 0;
        Span<int> start = stackalloc int[rank], step = stackalloc int[rank], count = stackalloc int[rank];
        Plan(x.Shape, inputs, start, step, count);
        Span<int> inStrides = stackalloc int[rank], src = stackalloc int[rank], dst = stackalloc int[rank];
        Strides(x.Shape, inStrides);
        Strides(count, dst);
        for (int i = 0; i < rank; i++) { src[i] = inStrides[i] * step[i]; baseOffset += start[i] * inStrides[i]; }
        StridedRuns(ref sink, 0, 0, count, src, baseOffset, dst, 0);
    }
}

/// <summary>Concat along one axis (negative allowed); inputs of one type.</summary>
internal sealed class Concat : MovementOperator
{
    private readonly long axis;

    public Concat(OperatorNode node) : base(node)
    {
        if (node.InputCount < 1) throw Error("expects at least one input");
        axis = node.Attributes.GetIntOrNull("axis") ?? throw Error("attribute 'axis' is required");
    }

    protected override bool IsData(int input) => true;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var first = Required(inputs, 0, "inputs");
        int rank = first.Shape.Length, a = NormalizeAxis(axis, rank);
        var shape = (int[])first.Shape.Clone();
        shape[a] = 0;
        for (int i = 0; i < inputs.Length; i++)
        {
            var x = Required(inputs, i, "inputs");
            if (x.Type != first.Type) throw Error($"input {i} is {x.Type}, input 0 is {first.Type}");
            if (x.Shape.Length != rank || Enumerable.Range(0, rank).Any(d => d != a && x.Shape[d] != first.Shape[d]))
                throw Error($"input {i} [{ShapeUtil.Format(x.Shape)}] does not match input 0 [{ShapeUtil.Format(first.Shape)}] outside axis {axis}");
            shape[a] += x.Shape[a];
        }
        return [new TensorInfo(first.Type, shape)];
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var y = outputs[0];
        int rank = y.Rank, a = NormalizeAxis(axis, rank), offset = 0;
        Span<int> dst = stackalloc int[rank], src = stackalloc int[rank];
        Strides(y.Shape, dst);
        for (int i = 0; i < inputs.Length; i++)
        {
            var x = inputs[i]!;
            Strides(x.Shape, src);
            StridedRuns(ref sink, i, 0, x.Shape, src, 0, dst, offset * dst[a]);
            offset += x.Shape[a];
        }
    }
}

/// <summary>
/// Split along an axis: sizes from the 'split' input (opset 13+) or attribute (before 13), else
/// num_outputs (opset 18: the last part smaller when uneven), else equal parts.
/// </summary>
internal sealed class Split : MovementOperator
{
    private readonly long axis;

    public Split(OperatorNode node) : base(node)
    {
        RequireInputs(1, node.Opset >= 13 ? 2 : 1);
        axis = node.Attributes.GetInt("axis", 0);
    }

    /// <summary>The parts cover the input once: a first gradient is copied, not zeroed and added.</summary>
    public override bool WritesFreshGradients => true;

    public override bool NeedsValue(int input) => Node.Opset >= 13 && input == 1;

    private int[] Sizes(int dim, ReadOnlySpan<TensorInfo?> inputs)
    {
        int parts = Node.OutputCount;
        long[]? split = Node.Opset >= 13
            ? (inputs.Length > 1 && inputs[1] is { } s ? ConstantInts(s, "split") : null)
            : Node.Attributes.GetInts("split");
        if (split is not null)
        {
            if (split.Length != parts || split.Any(v => v < 0) || split.Sum() != dim)
                throw Error($"split [{string.Join(", ", split)}] does not divide {dim} into {parts} outputs");
            return Array.ConvertAll(split, v => (int)v);
        }
        long? numOutputs = Node.Attributes.GetIntOrNull("num_outputs");
        if (numOutputs is { } n && n != parts) throw Error($"num_outputs {n} but the node has {parts} outputs");
        int chunk = numOutputs is null ? (dim % parts == 0 ? dim / parts : throw Error($"dimension {dim} does not split into {parts} equal parts"))
                                       : (dim + parts - 1) / parts;
        var sizes = new int[parts];
        for (int i = 0, left = dim; i < parts; i++) { sizes[i] = Math.Min(chunk, left); left -= sizes[i]; }
        return sizes;
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        int a = NormalizeAxis(axis, x.Shape.Length);
        var sizes = Sizes(x.Shape[a], inputs);
        return Array.ConvertAll(sizes, s => { var shape = (int[])x.Shape.Clone(); shape[a] = s; return new TensorInfo(x.Type, shape); });
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var x = inputs[0]!;
        int rank = x.Rank, a = NormalizeAxis(axis, rank), offset = 0;
        Span<int> src = stackalloc int[rank], dst = stackalloc int[rank];
        Strides(x.Shape, src);
        for (int j = 0; j < outputs.Length; j++)
        {
            var y = outputs[j];
            Strides(y.Shape, dst);
            StridedRuns(ref sink, 0, j, y.Shape, src, offset * src[a], dst, 0);
            offset += y.Shape[a];
        }
    }
}

/// <summary>Gather along an axis; negative indices count from the end; an index out of range is an error naming it.</summary>
internal sealed class Gather : MovementOperator
{
    private readonly long axis;

    public Gather(OperatorNode node) : base(node)
    {
        RequireInputs(2, 2);
        axis = node.Attributes.GetInt("axis", 0);
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var data = Required(inputs, 0, "data");
        var indices = Required(inputs, 1, "indices");
        if (indices.Type is not (ElementType.Int64 or ElementType.Int32)) throw Error($"indices must be int64 or int32, got {indices.Type}");
        int a = NormalizeAxis(axis, data.Shape.Length);
        if (indices.Value is { } known) foreach (long i in Tensors.ToLongs(known)!) Index(i, data.Shape[a]);
        return [new TensorInfo(data.Type, [.. data.Shape[..a], .. indices.Shape, .. data.Shape[(a + 1)..]])];
    }

    private int Index(long index, int dim)
    {
        long i = index < 0 ? index + dim : index;
        if (i < 0 || i >= dim) throw FisherKernelsException.Argument($"{Node}: index {index} is outside [{-dim}, {dim - 1}] (dimension {dim})");
        return (int)i;
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var data = inputs[0]!;
        int a = NormalizeAxis(axis, data.Rank), dim = data.Shape[a];
        int outer = Tensors.Product(data.Shape, 0, a), inner = Tensors.Product(data.Shape, a + 1, data.Rank);
        var indices = inputs[1]!;
        int count = (int)indices.Length;
        for (int o = 0; o < outer; o++)
            for (int j = 0; j < count; j++)
            {
                long index = indices is NdArray<long> l ? l.Data[j] : ((NdArray<int>)indices).Data[j];
                sink.Run(0, (o * dim + Index(index, dim)) * inner, 1, 0, (o * count + j) * inner, inner);
            }
    }
}

/// <summary>Trilu: keeps the upper (default) or lower triangle of the last two axes, shifted by k (input 1).</summary>
internal sealed class Trilu : MovementOperator
{
    private readonly bool upper;

    public Trilu(OperatorNode node) : base(node)
    {
        RequireInputs(1, 2);
        upper = node.Attributes.GetInt("upper", 1) != 0;
    }

    protected override bool CoversOutputs => false;

    public override bool NeedsValue(int input) => input == 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        if (x.Shape.Length < 2) throw Error($"input must have rank 2 or more, got [{ShapeUtil.Format(x.Shape)}]");
        if (inputs.Length > 1 && inputs[1] is { } k) ConstantInts(k, "k");
        return [new TensorInfo(x.Type, x.Shape)];
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        var x = inputs[0]!;
        long k = inputs.Length > 1 && inputs[1] is { } kk ? Tensors.ToLongs(kk)![0] : 0;
        int rows = x.Shape[^2], cols = x.Shape[^1], matrices = (int)(x.Length / Math.Max(1, (long)rows * cols));
        for (int m = 0; m < matrices; m++)
            for (int i = 0; i < rows; i++)
            {
                // upper keeps j ≥ i + k, lower keeps j ≤ i + k
                long from = upper ? Math.Clamp(i + k, 0, cols) : 0;
                long to = upper ? cols : Math.Clamp(i + k + 1, 0, cols);
                if (to > from)
                {
                    int offset = (m * rows + i) * cols + (int)from;
                    sink.Run(0, offset, 1, 0, offset, (int)(to - from));
                }
            }
    }
}

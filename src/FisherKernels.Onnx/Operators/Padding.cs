namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Pad: pads (or, with negative pads, crops) every axis, in mode constant (fill with <c>constant_value</c>),
/// reflect (mirror without repeating the edge), edge (repeat the edge) or wrap (opset 19+, periodic).
/// Pads, constant value and mode are attributes before opset 11 and inputs after; opset 18 adds the
/// optional <c>axes</c> input (pads then cover those axes only). The pads must be known when the plan is built.
/// </summary>
/// <remarks>Every output element reads one input element (or the constant), so the copies are
/// <see cref="MovementOperator"/> runs; the constant's derivative is the sum over the padded elements.</remarks>
internal sealed class Pad : MovementOperator
{
    private enum Mode { Constant, Reflect, Edge, Wrap }

    private readonly Mode mode;
    private readonly long[]? padsAttribute;
    private readonly float valueAttribute;

    public Pad(OperatorNode node) : base(node)
    {
        string name = node.Attributes.GetString("mode", "constant");
        mode = name switch
        {
            "constant" => Mode.Constant,
            "reflect" => Mode.Reflect,
            "edge" => Mode.Edge,
            "wrap" when node.Opset >= 19 => Mode.Wrap,
            _ => throw FisherKernelsException.Format($"mode '{name}' is not a Pad mode at opset {node.Opset} (constant, reflect, edge{(node.Opset >= 19 ? ", wrap" : "")})"),
        };
        if (node.Opset >= 11) { RequireInputs(2, node.Opset >= 18 ? 4 : 3); return; }
        RequireInputs(1, 1);
        padsAttribute = node.Attributes.GetInts("pads") ?? throw FisherKernelsException.Format("attribute 'pads' is required");
        valueAttribute = node.Attributes.GetFloat("value", 0f);
    }

    protected override bool CoversOutputs => mode != Mode.Constant;

    public override bool IsDifferentiable(int input) => input == 0 || (input == 2 && mode == Mode.Constant);

    public override bool NeedsValue(int input) => Node.Opset >= 11 && input is 1 or 3;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var data = Required(inputs, 0, "data");
        int rank = data.Shape.Length;
        if (Node.Opset >= 11)
        {
            var pads = Required(inputs, 1, "pads");
            if (pads.Value is null) throw UnsupportedError("input 'pads' must be known when the plan is built (a constant or a folded shape computation)");
            if (pads.Type != ElementType.Int64) throw Error($"pads must be int64, got {pads.Type}");
            if (inputs.Length > 3 && inputs[3] is { } axes)
            {
                if (axes.Value is null) throw UnsupportedError("input 'axes' must be known when the plan is built");
                if (axes.Type is not (ElementType.Int64 or ElementType.Int32)) throw Error($"axes must be int64 or int32, got {axes.Type}");
            }
            if (inputs.Length > 2 && inputs[2] is { } value && (value.Type != data.Type || value.Length != 1))
                throw Error($"constant_value must be one {data.Type} element, got {value}");
        }
        Span<int> begin = stackalloc int[rank], end = stackalloc int[rank];
        ReadPads(rank, inputs.Length > 1 ? inputs[1]?.Value : null, inputs.Length > 3 ? inputs[3]?.Value : null, begin, end);
        var shape = new int[rank];
        for (int d = 0; d < rank; d++)
        {
            long size = (long)data.Shape[d] + begin[d] + end[d], kept = (long)data.Shape[d] - Math.Max(0, -begin[d]) - Math.Max(0, -end[d]);
            if (kept < 0) throw Error($"pads {begin[d]}, {end[d]} remove more than the {data.Shape[d]} elements of axis {d}");
            if (size > 0 && kept == 0 && mode != Mode.Constant) throw Error($"cannot pad the empty axis {d} in mode {mode.ToString().ToLowerInvariant()}");
            shape[d] = checked((int)size);
        }
        return [new TensorInfo(data.Type, shape)];
    }

    /// <summary>Begin and end pads per axis from the attribute, or from the pads (and axes) values.</summary>
    private void ReadPads(int rank, NdArray? pads, NdArray? axes, Span<int> begin, Span<int> end)
    {
        begin.Clear(); end.Clear();
        int count = padsAttribute?.Length ?? (pads is null ? 0 : (int)pads.Length);
        int axisCount = axes is null ? rank : (int)axes.Length;
        if (count != 2 * axisCount)
            throw Error($"pads has {count} values, expected {2 * axisCount} (begin and end for {(axes is null ? $"each of the {rank} axes" : $"the {axisCount} axes given")})");
        ulong seen = 0;
        for (int i = 0; i < axisCount; i++)
        {
            long axis = axes switch { null => i, NdArray<long> l => l.Data[i], _ => ((NdArray<int>)axes).Data[i] };
            int a = NormalizeAxis(axis, rank, "axes value");
            if ((seen & (1UL << a)) != 0) throw Error($"axes names axis {a} twice");
            seen |= 1UL << a;
            long b = padsAttribute?[i] ?? ((NdArray<long>)pads!).Data[i];
            long e = padsAttribute?[i + axisCount] ?? ((NdArray<long>)pads!).Data[i + axisCount];
            if (b is < int.MinValue or > int.MaxValue || e is < int.MinValue or > int.MaxValue) throw Error($"pad {b}, {e} of axis {a} is out of range");
            begin[a] = (int)b; end[a] = (int)e;
        }
    }

    /// <summary>
    /// The input index that output index <paramref name="o"/> of an axis reads, or −1 for the constant.
    /// Negative pads crop first and the positive ones then pad what is left (as ONNX Runtime does), so
    /// reflect and edge mirror the cropped axis.
    /// </summary>
    private int Source(int o, int size, int begin, int end)
    {
        int low = Math.Max(0, -begin), kept = size - low - Math.Max(0, -end);
        long i = (long)o - Math.Max(0, begin);
        switch (mode)
        {
            case Mode.Constant: return i >= 0 && i < kept ? low + (int)i : -1;
            case Mode.Edge: return low + (int)Math.Clamp(i, 0, kept - 1);
            case Mode.Wrap: return low + (int)(((i % kept) + kept) % kept);
            default:
                if (kept == 1) return low;
                long period = 2L * (kept - 1);
                i = ((i % period) + period) % period;
                return low + (int)(i < kept ? i : period - i);
        }
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink) =>
        Walk(inputs, outputs[0].Shape, ref sink, gaps: false);

    /// <summary>
    /// Walks the output row by row (rows along the last axis) and reports either the copy runs (input 0 to
    /// output 0) or, when <paramref name="gaps"/>, the runs of constant elements (source arguments unused).
    /// </summary>
    private void Walk<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<int> outShape, ref TSink sink, bool gaps)
        where TSink : struct, ICopySink, allows ref struct
    {
        var x = inputs[0]!;
        int rank = x.Rank;
        if (ShapeUtil.Product(outShape) == 0) return;
        if (rank == 0) { if (!gaps) sink.Run(0, 0, 1, 0, 0, 1); return; }
        Span<int> begin = stackalloc int[rank], end = stackalloc int[rank], strides = stackalloc int[rank], index = stackalloc int[rank];
        ReadPads(rank, inputs.Length > 1 ? inputs[1] : null, inputs.Length > 3 ? inputs[3] : null, begin, end);
        Strides(x.Shape, strides);
        index.Clear();
        int width = outShape[rank - 1], size = x.Shape[rank - 1], first = begin[rank - 1], last = end[rank - 1];
        for (int row = 0; ; row++)
        {
            int source = 0;
            for (int d = 0; d < rank - 1 && source >= 0; d++)
            {
                int s = Source(index[d], x.Shape[d], begin[d], end[d]);
                source = s < 0 ? -1 : source + s * strides[d];
            }
            int destination = row * width;
            if (source < 0) { if (gaps) sink.Run(-1, 0, 0, 0, destination, width); }
            else
            {
                for (int o = 0; o < width;)
                {
                    int start = o, s0 = Source(o, size, first, last);
                    if (s0 < 0)
                    {
                        while (o < width && Source(o, size, first, last) < 0) o++;
                        if (gaps) sink.Run(-1, 0, 0, 0, destination + start, o - start);
                        continue;
                    }
                    // A run: consecutive outputs whose sources step by a constant stride (1, 0 for edge, −1 for reflect).
                    int stride = 1;
                    o++;
                    if (o < width && Source(o, size, first, last) is var s1 and >= 0)
                    {
                        stride = s1 - s0;
                        while (o < width && Source(o, size, first, last) == s0 + (o - start) * stride) o++;
                    }
                    if (!gaps) sink.Run(0, source + s0, stride, 0, destination + start, o - start);
                }
            }
            int k = rank - 2;
            for (; k >= 0 && ++index[k] == outShape[k]; k--) index[k] = 0;
            if (k < 0) return;
        }
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        base.Forward(context, inputs, outputs);
        if (mode != Mode.Constant) return;
        var value = inputs.Length > 2 ? inputs[2] : null;
        switch (outputs[0])
        {
            case NdArray<float> y:
                float v = value is null ? valueAttribute : ((NdArray<float>)value).Data[0];
                if (v != 0) Fill(inputs, y, v);
                break;
            case NdArray<long> y when value is NdArray<long> { Data: [var l] } && l != 0: Fill(inputs, y, l); break;
            case NdArray<int> y when value is NdArray<int> { Data: [var i] } && i != 0: Fill(inputs, y, i); break;
            case NdArray<bool> y when value is NdArray<bool> { Data: [true] }: Fill(inputs, y, true); break;
            case NdArray<sbyte> y when value is NdArray<sbyte> { Data: [var s] } && s != 0: Fill(inputs, y, s); break;
            case NdArray<byte> y when value is NdArray<byte> { Data: [var u] } && u != 0: Fill(inputs, y, u); break;
            case NdArray<short> y when value is NdArray<short> { Data: [var u] } && u != 0: Fill(inputs, y, u); break;
            case NdArray<ushort> y when value is NdArray<ushort> { Data: [var u] } && u != 0: Fill(inputs, y, u); break;
            case NdArray<uint> y when value is NdArray<uint> { Data: [var u] } && u != 0: Fill(inputs, y, u); break;
            case NdArray<ulong> y when value is NdArray<ulong> { Data: [var u] } && u != 0: Fill(inputs, y, u); break;
        }
    }

    private void Fill<T>(ReadOnlySpan<NdArray?> inputs, NdArray<T> output, T value) where T : unmanaged
    {
        var sink = new FillSink<T> { Output = output.Data, Value = value };
        Walk(inputs, output.Shape, ref sink, gaps: true);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        base.Vjp(context, inputs, outputs, outputGrads, inputGrads);
        if (inputGrads.Length > 2 && inputGrads[2] is { } gv && outputGrads[0] is { } gy)
        {
            var sink = new SumSink { Values = gy.Data };
            Walk(inputs, outputs[0].Shape, ref sink, gaps: true);
            gv.Data[0] += (float)sink.Sum;
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        base.Jvp(context, inputs, outputs, inputTangents, outputTangents);
        if (inputTangents.Length > 2 && inputTangents[2] is { Data: [var tv] } && tv != 0 && outputTangents[0] is { } ty)
            Fill(inputs, ty, tv);
    }

    /// <summary>Writes <see cref="Value"/> into the runs it is given.</summary>
    private ref struct FillSink<T> : ICopySink where T : unmanaged
    {
        public T[] Output;
        public T Value;

        public readonly void Run(int input, int source, int sourceStride, int output, int destination, int length) =>
            Output.AsSpan(destination, length).Fill(Value);
    }

    /// <summary>Sums what the runs it is given hold (the cotangent over the constant elements).</summary>
    private ref struct SumSink : ICopySink
    {
        public float[] Values;
        public double Sum;

        public void Run(int input, int source, int sourceStride, int output, int destination, int length) =>
            Sum += System.Numerics.Tensors.TensorPrimitives.Sum(Values.AsSpan(destination, length));
    }
}

/// <summary>Tile: repeats the input <c>repeats[d]</c> times along each axis d (repeats known when the plan is built).</summary>
internal sealed class Tile : MovementOperator
{
    public Tile(OperatorNode node) : base(node) => RequireInputs(2, 2);

    public override bool NeedsValue(int input) => input == 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        var repeats = ConstantInts(Required(inputs, 1, "repeats"), "repeats");
        if (repeats.Length != x.Shape.Length) throw Error($"repeats has {repeats.Length} values, the input has rank {x.Shape.Length}");
        var shape = new int[repeats.Length];
        for (int d = 0; d < shape.Length; d++)
        {
            if (repeats[d] < 0) throw Error($"repeats[{d}] = {repeats[d]} is negative");
            shape[d] = checked((int)(x.Shape[d] * repeats[d]));
        }
        return [new TensorInfo(x.Type, shape)];
    }

    protected override void Runs<TSink>(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, ref TSink sink)
    {
        // Output axis d of size r·n is the pair (repeat, element) of sizes (r, n): the repeat reads with stride 0.
        var x = inputs[0]!;
        var y = outputs[0];
        int rank = x.Rank, pairs = 0;
        Span<int> inStrides = stackalloc int[rank], outStrides = stackalloc int[rank];
        Span<int> shape = stackalloc int[2 * rank], src = stackalloc int[2 * rank], dst = stackalloc int[2 * rank];
        Strides(x.Shape, inStrides);
        Strides(y.Shape, outStrides);
        for (int d = 0; d < rank; d++)
        {
            int n = x.Shape[d], r = n == 0 ? 0 : y.Shape[d] / n;
            if (r != 1) { shape[pairs] = r; src[pairs] = 0; dst[pairs] = n * outStrides[d]; pairs++; }
            shape[pairs] = n; src[pairs] = inStrides[d]; dst[pairs] = outStrides[d]; pairs++;
        }
        StridedRuns(ref sink, 0, 0, shape[..pairs], src[..pairs], 0, dst[..pairs], 0);
    }
}

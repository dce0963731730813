namespace FisherKernels.Onnx.Operators;

/// <summary>
/// RotaryEmbedding: rotates pairs of each head's first R channels by the angle whose cosine and sine sit in
/// <c>cos_cache</c>/<c>sin_cache</c> at the token's position. Pairs are (i, i + R/2) by default, (2i, 2i + 1) when
/// <c>interleaved</c>; channels from R on pass through. Derivatives with respect to the input and both caches.
/// <list type="bullet">
/// <item>com.microsoft (ONNX Runtime's contrib schema and CPU kernel): inputs (input, position_ids, cos_cache,
///   sin_cache); input [batch, seq, hidden] or [batch, heads, seq, head]; caches [max_positions, R/2];
///   position_ids [batch, seq] or one start offset (shape [1]) that token s adds s to; R is
///   <c>rotary_embedding_dim</c> (which needs <c>num_heads</c>) or the head size, 2·cache width.</item>
/// <item>ONNX opset 23: inputs (X, cos_cache, sin_cache, position_ids?); X [batch, heads, seq, head] or
///   [batch, seq, hidden] with <c>num_heads</c>; caches [max_positions, ≥ R/2] indexed by position_ids
///   [batch, seq], or without position_ids [batch, seq, ≥ R/2] per token; R is <c>rotary_embedding_dim</c> or the
///   head size; the caches' first R/2 columns are used.</item>
/// </list>
/// </summary>
internal sealed class RotaryEmbedding : Operator
{
    private readonly bool interleaved, standard;
    private readonly int numHeads, rotaryDim;
    private readonly int positionsInput, cosInput, sinInput;

    public RotaryEmbedding(OperatorNode node) : base(node)
    {
        standard = OperatorRegistry.IsOnnxDomain(node.Domain);
        (positionsInput, cosInput, sinInput) = standard ? (3, 1, 2) : (1, 2, 3);
        if (standard) RequireInputs(3, 4); else RequireInputs(4, 4);
        interleaved = node.Attributes.GetInt("interleaved", 0) != 0;
        numHeads = checked((int)node.Attributes.GetInt("num_heads", 0));
        rotaryDim = checked((int)node.Attributes.GetInt("rotary_embedding_dim", 0));
        if (node.Attributes.GetInt("is_packed_batching", 0) != 0) throw FisherKernelsException.Unsupported("is_packed_batching = 1 (ragged batches) is not supported");
        if (numHeads < 0 || rotaryDim < 0) throw FisherKernelsException.Format("num_heads and rotary_embedding_dim must not be negative");
        if (!standard && rotaryDim > 0 && numHeads == 0) throw FisherKernelsException.Format("num_heads must be given with rotary_embedding_dim");
        // 'scale' (contrib) only matters when a kernel regenerates the caches for sequences longer than them, which is refused here.
    }

    public override bool IsDifferentiable(int input) => input != positionsInput;

    private enum Positions { PerToken, Offset, None }

    /// <summary>Where the heads are: <see cref="Blocks"/> = batch·seq·heads rows of <see cref="HeadSize"/> channels;
    /// cache rows are <see cref="CacheWidth"/> apart.</summary>
    private readonly record struct Geometry(int Batch, int Sequence, int Heads, int HeadSize, int Rotary, bool Transposed,
                                            int MaxPositions, int CacheWidth, Positions Mode)
    {
        public int Blocks => Batch * Sequence * Heads;
        public int Half => Rotary / 2;
    }

    private Geometry Describe(ReadOnlySpan<int> input, ReadOnlySpan<int> positions, bool hasPositions, ReadOnlySpan<int> cos, ReadOnlySpan<int> sin)
    {
        if (input.Length is not (3 or 4)) throw Error($"input must be [batch, seq, hidden] or [batch, heads, seq, head_size], got [{ShapeUtil.Format(input)}]");
        int cacheRank = standard && !hasPositions ? 3 : 2;
        if (cos.Length != cacheRank || !cos.SequenceEqual(sin))
            throw Error($"cos_cache [{ShapeUtil.Format(cos)}] and sin_cache [{ShapeUtil.Format(sin)}] must be the same {cacheRank}-D shape");
        bool transposed = input.Length == 4;
        int batch = input[0], sequence = transposed ? input[2] : input[1];
        int hidden = transposed ? input[1] * input[3] : input[2], width = cos[^1];
        int headSize;
        if (transposed && (standard || rotaryDim > 0 || numHeads > 0)) headSize = input[3];
        else if (numHeads > 0 && (standard || rotaryDim > 0)) headSize = hidden % numHeads == 0 ? hidden / numHeads : throw Error($"hidden size {hidden} is not a multiple of num_heads {numHeads}");
        else if (standard) throw Error("a 3-D input needs the num_heads attribute");
        else headSize = 2 * width;
        if (headSize == 0 || hidden % headSize != 0 || (transposed && headSize != input[3]))
            throw Error($"head size {headSize} does not divide the input [{ShapeUtil.Format(input)}]");
        int heads = hidden / headSize;
        if (numHeads > 0 && heads != numHeads) throw Error($"num_heads {numHeads} × head size {headSize} is not the hidden size {hidden}");
        int rotary = rotaryDim > 0 ? rotaryDim : headSize;
        if (rotary > headSize || rotary % 2 != 0) throw Error($"rotary_embedding_dim {rotary} must be even and at most the head size {headSize}");
        if (standard ? width < rotary / 2 : width != rotary / 2) throw Error($"the caches are {width} wide, rotary dimension {rotary} needs {rotary / 2}");
        var mode = !hasPositions ? Positions.None : !standard && ShapeUtil.Product(positions) == 1 && positions.Length <= 1 ? Positions.Offset : Positions.PerToken;
        if (mode == Positions.PerToken && !(positions.Length == 2 && positions[0] == batch && positions[1] == sequence))
            throw Error($"position_ids must be {(standard ? "" : "[1] or ")}[batch, seq] = [{batch}, {sequence}], got [{ShapeUtil.Format(positions)}]");
        if (mode == Positions.None && !(cos[0] == batch && cos[1] == sequence))
            throw Error($"without position_ids the caches must be [batch, seq, {rotary / 2}] = [{batch}, {sequence}, ...], got [{ShapeUtil.Format(cos)}]");
        return new Geometry(batch, sequence, heads, headSize, rotary, transposed, cos[0], width, mode);
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "input");
        var positions = inputs.Length > positionsInput ? inputs[positionsInput] : null;
        if (!standard) Required(inputs, positionsInput, "position_ids");
        if (positions is not null && positions.Type != ElementType.Int64) throw Error($"position_ids must be int64, got {positions.Type}");
        var g = Describe(x.Shape, positions?.Shape ?? [], positions is not null, RequiredFloat(inputs, cosInput, "cos_cache").Shape, RequiredFloat(inputs, sinInput, "sin_cache").Shape);
        if (positions?.Value is NdArray<long> known) for (int i = 0; i < g.Batch * g.Sequence; i++) Locate(g, known.Data, i * g.Heads);
        return [new TensorInfo(ElementType.Float32, x.Shape)];
    }

    private long[]? PositionIds(ReadOnlySpan<NdArray?> inputs) => inputs.Length > positionsInput ? (inputs[positionsInput] as NdArray<long>)?.Data : null;

    private Geometry Describe(ReadOnlySpan<NdArray?> inputs)
    {
        var positions = inputs.Length > positionsInput ? inputs[positionsInput] : null;
        return Describe(inputs[0]!.Shape, positions is null ? [] : positions.Shape, positions is not null, inputs[cosInput]!.Shape, inputs[sinInput]!.Shape);
    }

    /// <summary>Offsets of block <paramref name="block"/> (ordered batch, seq, head) in the input and in the caches.</summary>
    private (int Row, int Cache) Locate(in Geometry g, long[]? positions, int block)
    {
        int n = block % g.Heads, s = block / g.Heads % g.Sequence, b = block / g.Heads / g.Sequence;
        int row = g.Transposed ? ((b * g.Heads + n) * g.Sequence + s) * g.HeadSize : ((b * g.Sequence + s) * g.Heads + n) * g.HeadSize;
        if (g.Mode == Positions.None) return (row, (b * g.Sequence + s) * g.CacheWidth);
        long position = g.Mode == Positions.Offset ? positions![0] + s : positions![b * g.Sequence + s];
        if (position < 0 || position >= g.MaxPositions)
            throw FisherKernelsException.Argument($"{Node}: position {position} is outside the caches' {g.MaxPositions} positions");
        return (row, (int)position * g.CacheWidth);
    }

    /// <summary>The channels of rotation pair <paramref name="k"/>.</summary>
    private (int First, int Second) Pair(in Geometry g, int k) => interleaved ? (2 * k, 2 * k + 1) : (k, k + g.Half);

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var g = Describe(inputs);
        float[] x = ((NdArray<float>)inputs[0]!).Data, cos = ((NdArray<float>)inputs[cosInput]!).Data, sin = ((NdArray<float>)inputs[sinInput]!).Data;
        long[]? positions = PositionIds(inputs);
        float[] y = ((NdArray<float>)outputs[0]).Data;
        for (int block = 0; block < g.Blocks; block++)
        {
            var (row, cache) = Locate(g, positions, block);
            for (int k = 0; k < g.Half; k++)
            {
                var (i, j) = Pair(g, k);
                float c = cos[cache + k], s = sin[cache + k], x1 = x[row + i], x2 = x[row + j];
                y[row + i] = x1 * c - x2 * s;
                y[row + j] = x2 * c + x1 * s;
            }
            x.AsSpan(row + g.Rotary, g.HeadSize - g.Rotary).CopyTo(y.AsSpan(row + g.Rotary));
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gyArray) return;
        var g = Describe(inputs);
        float[] x = ((NdArray<float>)inputs[0]!).Data, cos = ((NdArray<float>)inputs[cosInput]!).Data, sin = ((NdArray<float>)inputs[sinInput]!).Data, gy = gyArray.Data;
        long[]? positions = PositionIds(inputs);
        float[]? gx = inputGrads[0]?.Data, gCos = inputGrads[cosInput]?.Data, gSin = inputGrads[sinInput]?.Data;
        for (int block = 0; block < g.Blocks; block++)
        {
            var (row, cache) = Locate(g, positions, block);
            for (int k = 0; k < g.Half; k++)
            {
                var (i, j) = Pair(g, k);
                float c = cos[cache + k], s = sin[cache + k], g1 = gy[row + i], g2 = gy[row + j];
                if (gx is not null) { gx[row + i] += g1 * c + g2 * s; gx[row + j] += g2 * c - g1 * s; }
                if (gCos is not null) gCos[cache + k] += g1 * x[row + i] + g2 * x[row + j];
                if (gSin is not null) gSin[cache + k] += g2 * x[row + i] - g1 * x[row + j];
            }
            if (gx is not null)
                for (int e = g.Rotary; e < g.HeadSize; e++) gx[row + e] += gy[row + e];
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } tyArray) return;
        var g = Describe(inputs);
        float[] x = ((NdArray<float>)inputs[0]!).Data, cos = ((NdArray<float>)inputs[cosInput]!).Data, sin = ((NdArray<float>)inputs[sinInput]!).Data, ty = tyArray.Data;
        long[]? positions = PositionIds(inputs);
        float[]? tx = inputTangents[0]?.Data, tCos = inputTangents[cosInput]?.Data, tSin = inputTangents[sinInput]?.Data;
        for (int block = 0; block < g.Blocks; block++)
        {
            var (row, cache) = Locate(g, positions, block);
            for (int k = 0; k < g.Half; k++)
            {
                var (i, j) = Pair(g, k);
                float c = cos[cache + k], s = sin[cache + k], x1 = x[row + i], x2 = x[row + j];
                float t1 = tx?[row + i] ?? 0, t2 = tx?[row + j] ?? 0, tc = tCos?[cache + k] ?? 0, ts = tSin?[cache + k] ?? 0;
                ty[row + i] = t1 * c - t2 * s + x1 * tc - x2 * ts;
                ty[row + j] = t2 * c + t1 * s + x2 * tc + x1 * ts;
            }
            var tail = ty.AsSpan(row + g.Rotary, g.HeadSize - g.Rotary);
            if (tx is null) tail.Clear(); else tx.AsSpan(row + g.Rotary, tail.Length).CopyTo(tail);
        }
    }
}

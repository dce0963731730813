using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// com.microsoft EmbedLayerNormalization (ONNX Runtime's BERT embedding fusion). Inputs: input_ids [B, S],
/// segment_ids? [B, S], word_embedding [V, H], position_embedding [P, H], segment_embedding? [G, H], gamma [H],
/// beta [H], mask? [B, S], position_ids? ([B, S] or [1, S]; without it token s takes position s); ids and mask int32.
/// Per token s = word[id] + position[pos] (+ segment[seg]), layer-normalized over H with ε = epsilon (default 1e-12).
/// Outputs: output [B, S, H], mask_index? [B] (int32: how many mask entries are 1, zeros without a mask) and
/// embedding_sum? [B, S, H] (s before normalization). Derivatives flow to the three tables, gamma and beta.
/// </summary>
internal sealed class EmbedLayerNormalization : Operator
{
    private const int InputIds = 0, SegmentIds = 1, Words = 2, Positions = 3, Segments = 4, Gamma = 5, Beta = 6, Mask = 7, PositionIds = 8;
    private readonly float epsilon;

    public EmbedLayerNormalization(OperatorNode node) : base(node)
    {
        RequireInputs(7, 9);
        if (node.OutputCount is < 1 or > 3) throw Error($"expects 1 to 3 outputs, got {node.OutputCount}");
        epsilon = node.Attributes.GetFloat("epsilon", 1e-12f);
        if (epsilon < 0) throw Error($"epsilon must not be negative, got {epsilon}");
    }

    public override bool IsDifferentiable(int input) => input is Words or Positions or Segments or Gamma or Beta;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var ids = Ids(inputs, InputIds, "input_ids");
        if (ids.Shape.Length != 2) throw Error($"input_ids must be 2-D [batch, sequence], got [{ShapeUtil.Format(ids.Shape)}]");
        int batch = ids.Shape[0], sequence = ids.Shape[1];
        var words = Table(inputs, Words, "word_embedding");
        int hidden = words.Shape[1];
        Table(inputs, Positions, "position_embedding", hidden);
        bool hasSegmentIds = At(inputs, SegmentIds) is not null, hasSegments = At(inputs, Segments) is not null;
        if (hasSegmentIds != hasSegments) throw Error("segment_ids and segment_embedding must be given together");
        if (hasSegments) Table(inputs, Segments, "segment_embedding", hidden);
        foreach (var (index, name) in new[] { (Gamma, "gamma"), (Beta, "beta") })
        {
            var p = RequiredFloat(inputs, index, name);
            if (p.Shape.Length != 1 || p.Shape[0] != hidden) throw Error($"{name} must be [{hidden}] (the embeddings' width), got [{ShapeUtil.Format(p.Shape)}]");
        }
        foreach (var (index, name) in new[] { (SegmentIds, "segment_ids"), (Mask, "mask") })
            if (At(inputs, index) is not null && !Ids(inputs, index, name).Shape.SequenceEqual(ids.Shape))
                throw Error($"{name} [{ShapeUtil.Format(inputs[index]!.Shape)}] must have the shape of input_ids [{ShapeUtil.Format(ids.Shape)}]");
        if (At(inputs, PositionIds) is not null)
        {
            var p = Ids(inputs, PositionIds, "position_ids");
            if (p.Shape.Length != 2 || p.Shape[1] != sequence || (p.Shape[0] != batch && p.Shape[0] != 1))
                throw Error($"position_ids must be [{batch}, {sequence}] or [1, {sequence}], got [{ShapeUtil.Format(p.Shape)}]");
        }
        var outputs = new TensorInfo[Node.OutputCount];
        outputs[0] = new TensorInfo(ElementType.Float32, [batch, sequence, hidden]);
        if (outputs.Length > 1) outputs[1] = new TensorInfo(ElementType.Int32, [batch]);
        if (outputs.Length > 2) outputs[2] = new TensorInfo(ElementType.Float32, [batch, sequence, hidden]);
        return outputs;
    }

    private static T? At<T>(ReadOnlySpan<T?> items, int i) where T : class => i < items.Length ? items[i] : null;

    private TensorInfo Ids(ReadOnlySpan<TensorInfo?> inputs, int index, string name)
    {
        var info = Required(inputs, index, name);
        if (info.Type != ElementType.Int32) throw Error($"{name} must be int32, got {info.Type}");
        return info;
    }

    private TensorInfo Table(ReadOnlySpan<TensorInfo?> inputs, int index, string name, int hidden = -1)
    {
        var t = RequiredFloat(inputs, index, name);
        if (t.Shape.Length != 2 || (hidden >= 0 && t.Shape[1] != hidden))
            throw Error($"{name} must be 2-D [rows, {(hidden >= 0 ? hidden : "hidden")}], got [{ShapeUtil.Format(t.Shape)}]");
        return t;
    }

    /// <summary>The table rows token <paramref name="token"/> (= b·S + s) reads: word, position and segment (−1 without segments).</summary>
    private (int Word, int Position, int Segment) Rows(ReadOnlySpan<NdArray?> inputs, int token)
    {
        var ids = (NdArray<int>)inputs[InputIds]!;
        int sequence = ids.Shape[1];
        int word = Checked(ids.Data[token], inputs[Words]!, "input_ids", "word_embedding", token, sequence);
        int position = token % sequence;
        if (At(inputs, PositionIds) is NdArray<int> positionIds)
        {
            int at = positionIds.Shape[0] == 1 ? position : token;
            position = Checked(positionIds.Data[at], inputs[Positions]!, "position_ids", "position_embedding", at, sequence);
        }
        else position = Checked(position, inputs[Positions]!, "position", "position_embedding", token, sequence);
        int segment = At(inputs, SegmentIds) is NdArray<int> segmentIds
            ? Checked(segmentIds.Data[token], inputs[Segments]!, "segment_ids", "segment_embedding", token, sequence) : -1;
        return (word, position, segment);
    }

    private int Checked(int id, NdArray table, string what, string tableName, int at, int sequence) =>
        id >= 0 && id < table.Shape[0] ? id
            : throw FisherKernelsException.Argument($"{Node}: {what} {id} at [{at / sequence}, {at % sequence}] is outside {tableName} (rows 0 to {table.Shape[0] - 1})");

    /// <summary>s = word[id] + position[pos] (+ segment[seg]) of one token into <paramref name="sum"/>.</summary>
    private static void Sum(ReadOnlySpan<NdArray?> inputs, (int Word, int Position, int Segment) rows, Span<float> sum)
    {
        int h = sum.Length;
        TensorPrimitives.Add(((NdArray<float>)inputs[Words]!).Data.AsSpan(rows.Word * h, h),
                             ((NdArray<float>)inputs[Positions]!).Data.AsSpan(rows.Position * h, h), sum);
        if (rows.Segment >= 0) TensorPrimitives.Add(sum, ((NdArray<float>)inputs[Segments]!).Data.AsSpan(rows.Segment * h, h), sum);
    }

    private static float[] FloatData(ReadOnlySpan<NdArray?> inputs, int i) => ((NdArray<float>)inputs[i]!).Data;

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var y = (NdArray<float>)outputs[0];
        int h = y.Shape[2], tokens = y.Shape[0] * y.Shape[1];
        var sums = outputs.Length > 2 ? ((NdArray<float>)outputs[2]).Data : null;
        float[] gamma = FloatData(inputs, Gamma), beta = FloatData(inputs, Beta);
        var buffer = context.Scratch(h);
        for (int t = 0; t < tokens; t++)
        {
            var s = sums is null ? buffer : sums.AsSpan(t * h, h);
            Sum(inputs, Rows(inputs, t), s);
            var yt = y.Data.AsSpan(t * h, h);
            NormalizedRow.Normalize(s, yt, centered: true, epsilon);
            TensorPrimitives.Multiply(yt, gamma, yt);
            TensorPrimitives.Add(yt, beta, yt);
        }
        if (outputs.Length < 2) return;
        var maskIndex = ((NdArray<int>)outputs[1]).Data;
        maskIndex.AsSpan().Clear();
        if (At(inputs, Mask) is not NdArray<int> mask) return;
        int sequence = mask.Shape[1];
        for (int b = 0; b < maskIndex.Length; b++)
            maskIndex[b] = mask.Data.AsSpan(b * sequence, sequence).Count(1);
    }

    // The sum's gradient gs (through the normalization, plus embedding_sum's own cotangent) scatters into the
    // three table rows the token read; the tangent of the sum gathers the same rows of the table tangents.
    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        var gy = outputGrads[0]?.Data;
        var gSum = At(outputGrads, 2)?.Data;
        if (gy is null && gSum is null) return;
        int h = outputs[0].Shape[2], tokens = outputs[0].Shape[0] * outputs[0].Shape[1];
        var gamma = FloatData(inputs, Gamma);
        var scratch = context.Scratch(3L * h);
        Span<float> s = scratch[..h], xhat = scratch.Slice(h, h), g = scratch.Slice(2 * h, h);
        for (int t = 0; t < tokens; t++)
        {
            var rows = Rows(inputs, t);
            g.Clear();
            if (gy is not null)
            {
                Sum(inputs, rows, s);
                var (_, invStd) = NormalizedRow.Normalize(s, xhat, centered: true, epsilon);
                NormalizedRow.Backward(gy.AsSpan(t * h, h), xhat, invStd, gamma, centered: true, g,
                                       At(inputGrads, Gamma)?.Data, At(inputGrads, Beta)?.Data);
            }
            if (gSum is not null) TensorPrimitives.Add(g, gSum.AsSpan(t * h, h), g);
            AddRow(At(inputGrads, Words), rows.Word, g);
            AddRow(At(inputGrads, Positions), rows.Position, g);
            if (rows.Segment >= 0) AddRow(At(inputGrads, Segments), rows.Segment, g);
        }
    }

    private static void AddRow(NdArray<float>? grad, int row, ReadOnlySpan<float> g)
    {
        if (grad is null) return;
        var target = grad.Data.AsSpan(row * g.Length, g.Length);
        TensorPrimitives.Add(target, g, target);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        var ty = outputTangents[0]?.Data;
        var tSum = At(outputTangents, 2)?.Data;
        if (ty is null && tSum is null) return;
        int h = outputs[0].Shape[2], tokens = outputs[0].Shape[0] * outputs[0].Shape[1];
        var gamma = FloatData(inputs, Gamma);
        var tGamma = At(inputTangents, Gamma)?.Data;
        var tBeta = At(inputTangents, Beta)?.Data;
        var scratch = context.Scratch(3L * h);
        Span<float> s = scratch[..h], xhat = scratch.Slice(h, h), ts = scratch.Slice(2 * h, h);
        for (int t = 0; t < tokens; t++)
        {
            var rows = Rows(inputs, t);
            ts.Clear();
            AddTableRow(At(inputTangents, Words), rows.Word, ts);
            AddTableRow(At(inputTangents, Positions), rows.Position, ts);
            if (rows.Segment >= 0) AddTableRow(At(inputTangents, Segments), rows.Segment, ts);
            if (tSum is not null) ts.CopyTo(tSum.AsSpan(t * h, h));
            if (ty is null) continue;
            Sum(inputs, rows, s);
            var (_, invStd) = NormalizedRow.Normalize(s, xhat, centered: true, epsilon);
            float meanT = TensorPrimitives.Sum(ts) / h, meanTx = TensorPrimitives.Dot(ts, xhat) / h;
            NormalizedRow.Tangent(ts, xhat, invStd, gamma, meanT, meanTx, ty.AsSpan(t * h, h), tGamma, tBeta);
        }
    }

    private static void AddTableRow(NdArray<float>? tangent, int row, Span<float> ts)
    {
        if (tangent is not null) TensorPrimitives.Add(ts, tangent.Data.AsSpan(row * ts.Length, ts.Length), ts);
    }
}

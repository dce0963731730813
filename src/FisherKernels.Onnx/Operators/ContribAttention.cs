using System.Numerics.Tensors;
using FisherKernels.Backends;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Scaled dot-product attention of the com.microsoft fused operators (as ONNX Runtime's contrib schemas and CPU
/// kernels define it): per batch b and head n, softmax(scale·Q Kᵀ + mask)·V, with scale = <c>scale</c> or 1/√head_size.
/// The mask adds <c>mask_filter_value</c> (default −10000) where the mask input is 0; <c>unidirectional</c> (with a
/// query longer than one token) excludes the keys after the query outright, as ONNX Runtime's CPU kernel does, so a
/// query whose visible keys are all padding still attends to them. Mask forms: [batch] valid lengths
/// (right padding), [2·batch] end then start positions (Attention only), raw 0/1 [batch, total_seq] or
/// [batch, seq, total_seq], int32 or int64. The subclasses say how Q, K, V come from their inputs; the
/// forward, VJP and JVP of the attention itself are here. Q, K, V live head-major ([batch, heads, seq, head])
/// in the context's scratch; nothing is kept between calls.
/// </summary>
internal abstract class ContribAttention : Operator
{
    protected readonly int Heads;
    private readonly float scaleAttribute, maskFilter;
    private readonly bool unidirectional;

    protected ContribAttention(OperatorNode node, bool requireHeads = true) : base(node)
    {
        Heads = checked((int)node.Attributes.GetInt("num_heads", 0));
        if (requireHeads && Heads <= 0) throw FisherKernelsException.Format("attribute 'num_heads' (a positive int) is required");
        scaleAttribute = node.Attributes.GetFloat("scale", 0f);
        maskFilter = node.Attributes.GetFloat("mask_filter_value", -10000f);
        unidirectional = node.Attributes.GetInt("unidirectional", 0) != 0;
        if (node.OutputCount > 1) throw FisherKernelsException.Unsupported("the present/qk outputs (key-value cache) are not supported, only output 0");
    }

    /// <summary>Batch, query length S, key length L, heads N, query/key head size H, value head size Hv.</summary>
    protected readonly record struct Dims(int Batch, int Query, int Keys, int Heads, int Head, int ValueHead)
    {
        public int Q => Batch * Heads * Query * Head;
        public int K => Batch * Heads * Keys * Head;
        public int V => Batch * Heads * Keys * ValueHead;
        public int Scores => Batch * Heads * Query * Keys;
        public int Out => Batch * Heads * Query * ValueHead;
    }

    /// <summary>Index of the mask input (int32/int64, not differentiable).</summary>
    protected abstract int MaskInput { get; }

    /// <summary>Whether the 1-D [2·batch] (end and start positions) mask form is accepted.</summary>
    protected virtual bool AcceptsStartPositions => false;

    /// <summary>Validates the inputs (types, shapes, refused optional inputs) when the plan is built.</summary>
    protected abstract void Validate(ReadOnlySpan<TensorInfo?> inputs);

    /// <summary>The dimensions from the shapes of inputs 0, 1 and 2 (validated before).</summary>
    protected abstract Dims Measure(int[] first, int[] second, int[] third);

    /// <summary>Floats of scratch the projection needs besides Q, K, V.</summary>
    protected virtual int ProjectionWork(in Dims d) => 0;

    /// <summary>Writes Q, K, V (head-major) computed from the inputs.</summary>
    protected abstract void Project(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, Span<float> work, Span<float> q, Span<float> k, Span<float> v);

    /// <summary>Writes the tangents of Q, K, V (head-major) given the inputs' tangents (null = zero).</summary>
    protected abstract void ProjectTangent(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> tangents,
                                           Span<float> work, Span<float> tq, Span<float> tk, Span<float> tv);

    /// <summary>Adds the inputs' gradients given those of Q, K, V (head-major, scratch the override may only read).</summary>
    protected abstract void ProjectVjp(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> inputGrads,
                                       Span<float> work, Span<float> gq, Span<float> gk, Span<float> gv);

    /// <summary>True when the output is head-major [batch, heads, S, Hv] (4-D), false for [batch, S, heads·Hv].</summary>
    protected virtual bool HeadMajorOutput(ReadOnlySpan<int> queryShape) => false;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        Validate(inputs);
        var d = Measure(inputs[0]!.Shape, inputs[1]!.Shape, inputs.Length > 2 ? inputs[2]?.Shape ?? [] : []);
        if (inputs.Length > MaskInput && inputs[MaskInput] is { } mask) CheckMask(mask, d);
        int[] shape = HeadMajorOutput(inputs[0]!.Shape) ? [d.Batch, d.Heads, d.Query, d.ValueHead] : [d.Batch, d.Query, d.Heads * d.ValueHead];
        return [new TensorInfo(ElementType.Float32, shape)];
    }

    private Dims Describe(ReadOnlySpan<NdArray?> inputs) => Measure(inputs[0]!.Shape, inputs[1]!.Shape, inputs.Length > 2 ? inputs[2]?.Shape ?? [] : []);

    /// <summary>Validates the mask input (default: the contrib forms).</summary>
    protected virtual void CheckMask(TensorInfo mask, in Dims d)
    {
        var (type, shape) = (mask.Type, mask.Shape);
        if (type is not (ElementType.Int32 or ElementType.Int64)) throw Error($"the mask must be int32 or int64, got {type}");
        bool ok = shape switch
        {
            [var n] => n == d.Batch || (AcceptsStartPositions && n == 2 * d.Batch),
            [var b, var t] => b == d.Batch && t == d.Keys,
            [var b, var s, var t] => b == d.Batch && s == d.Query && t == d.Keys,
            _ => false,
        };
        if (!ok)
            throw UnsupportedError($"mask of shape [{ShapeUtil.Format(shape)}] is not supported: expected [{d.Batch}]{(AcceptsStartPositions ? $", [{2 * d.Batch}]" : "")}, [{d.Batch}, {d.Keys}] or [{d.Batch}, {d.Query}, {d.Keys}]");
    }

    private float Scale(in Dims d) => scaleAttribute != 0 ? scaleAttribute : 1f / MathF.Sqrt(d.Head);

    private static long MaskValue(NdArray mask, int index) => mask is NdArray<int> i ? i.Data[index] : ((NdArray<long>)mask).Data[index];

    /// <summary>Adds the mask to one row of scores (batch b, head n, query position i) in place (default: the contrib forms).</summary>
    protected virtual void AddMask(ReadOnlySpan<NdArray?> inputs, in Dims d, int b, int n, int i, Span<float> row)
    {
        var mask = inputs.Length > MaskInput ? inputs[MaskInput] : null;
        if (mask is not null)
        {
            if (mask.Rank == 1)
            {
                long end = MaskValue(mask, b), start = mask.Length == 2L * d.Batch ? Math.Min(MaskValue(mask, d.Batch + b), d.Keys) : 0;
                for (int j = 0; j < row.Length; j++) if (j >= end || j < start) row[j] += maskFilter;
            }
            else
            {
                int offset = mask.Rank == 2 ? b * d.Keys : (b * d.Query + i) * d.Keys;
                for (int j = 0; j < row.Length; j++) if (MaskValue(mask, offset + j) == 0) row[j] += maskFilter;
            }
        }
        if (unidirectional && d.Query > 1) row[Math.Min(i + 1, row.Length)..].Fill(float.NegativeInfinity);
    }

    /// <summary>Adds the tangent of an additive (float) mask to one row of score tangents; none by default.</summary>
    protected virtual void AddMaskTangent(ReadOnlySpan<NdArray<float>?> tangents, in Dims d, int b, int n, int i, Span<float> row) { }

    /// <summary>Adds one row of score gradients into the gradient of an additive (float) mask; none by default.</summary>
    protected virtual void AddMaskGradient(ReadOnlySpan<NdArray<float>?> grads, in Dims d, int b, int n, int i, ReadOnlySpan<float> row) { }

    /// <summary>Q, K, V and the attention probabilities P [batch, heads, S, L] into the scratch; returns the rest of it.</summary>
    private Span<float> Probabilities(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, int extra,
                                      out Span<float> q, out Span<float> k, out Span<float> v, out Span<float> p, out Span<float> work)
    {
        int projection = ProjectionWork(d);
        var scratch = context.Scratch((long)d.Q + d.K + d.V + d.Scores + projection + extra);
        q = scratch[..d.Q]; scratch = scratch[d.Q..];
        k = scratch[..d.K]; scratch = scratch[d.K..];
        v = scratch[..d.V]; scratch = scratch[d.V..];
        p = scratch[..d.Scores]; scratch = scratch[d.Scores..];
        work = scratch[..projection];
        Project(context, d, inputs, work, q, k, v);
        int blocks = d.Batch * d.Heads;
        context.Backend.Gemm(new GemmShape(d.Query, d.Keys, d.Head, TransB: true, Alpha: Scale(d), BatchCount: blocks,
                                           StrideA: (long)d.Query * d.Head, StrideB: (long)d.Keys * d.Head, StrideC: (long)d.Query * d.Keys), q, k, p);
        for (int bn = 0; bn < blocks; bn++)
            for (int i = 0; i < d.Query; i++)
            {
                var row = p.Slice((bn * d.Query + i) * d.Keys, d.Keys);
                AddMask(inputs, d, bn / d.Heads, bn % d.Heads, i, row);
                float max = TensorPrimitives.Max(row);
                TensorPrimitives.Subtract(row, max, row);
                TensorPrimitives.Exp(row, row);
                TensorPrimitives.Divide(row, TensorPrimitives.Sum(row), row);
            }
        return scratch[projection..];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var d = Describe(inputs);
        var rest = Probabilities(context, d, inputs, d.Out, out _, out _, out var v, out var p, out _);
        var o = rest[..d.Out];
        Gemm(context, d, p, v, o, d.Query, d.ValueHead, d.Keys, false, false, 1, 0);
        WriteOutput(inputs, d, o, ((NdArray<float>)outputs[0]).Data);
    }

    private void WriteOutput(ReadOnlySpan<NdArray?> inputs, in Dims d, ReadOnlySpan<float> heads, Span<float> output)
    {
        if (HeadMajorOutput(inputs[0]!.Shape)) heads.CopyTo(output);
        else FromHeads(heads, output, d.Batch, d.Query, d.Heads, d.ValueHead, d.Heads * d.ValueHead, 0, accumulate: false);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var d = Describe(inputs);
        var rest = Probabilities(context, d, inputs, d.Out + d.Scores + d.Q + d.K + d.V, out var q, out var k, out var v, out var p, out var work);
        var go = rest[..d.Out]; rest = rest[d.Out..];
        var gp = rest[..d.Scores]; rest = rest[d.Scores..];
        var gq = rest[..d.Q]; rest = rest[d.Q..];
        var gk = rest[..d.K]; rest = rest[d.K..];
        var gv = rest[..d.V];
        if (HeadMajorOutput(inputs[0]!.Shape)) gy.Data.AsSpan().CopyTo(go);
        else ToHeads(gy.Data, d.Heads * d.ValueHead, 0, default, go, d.Batch, d.Query, d.Heads, d.ValueHead);
        Gemm(context, d, p, go, gv, d.Keys, d.ValueHead, d.Query, true, false, 1, 0);      // gV = Pᵀ·gO
        Gemm(context, d, go, v, gp, d.Query, d.Keys, d.ValueHead, false, true, 1, 0);      // gP = gO·Vᵀ
        for (int r = 0; r < d.Batch * d.Heads * d.Query; r++)
        {
            // Softmax: gS = P ⊙ (gP − ⟨gP, P⟩)
            var pr = p.Slice(r * d.Keys, d.Keys);
            var gr = gp.Slice(r * d.Keys, d.Keys);
            TensorPrimitives.Subtract(gr, TensorPrimitives.Dot(gr, pr), gr);
            TensorPrimitives.Multiply(gr, pr, gr);
            int bn = r / d.Query;
            AddMaskGradient(inputGrads, d, bn / d.Heads, bn % d.Heads, r % d.Query, gr);
        }
        float scale = Scale(d);
        Gemm(context, d, gp, k, gq, d.Query, d.Head, d.Keys, false, false, scale, 0);      // gQ = s·gS·K
        Gemm(context, d, gp, q, gk, d.Keys, d.Head, d.Query, true, false, scale, 0);       // gK = s·gSᵀ·Q
        ProjectVjp(context, d, inputs, inputGrads, work, gq, gk, gv);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var d = Describe(inputs);
        var rest = Probabilities(context, d, inputs, d.Q + d.K + d.V + d.Scores + d.Out, out var q, out var k, out var v, out var p, out var work);
        var tq = rest[..d.Q]; rest = rest[d.Q..];
        var tk = rest[..d.K]; rest = rest[d.K..];
        var tv = rest[..d.V]; rest = rest[d.V..];
        var ts = rest[..d.Scores]; rest = rest[d.Scores..];
        var to = rest[..d.Out];
        ProjectTangent(context, d, inputs, inputTangents, work, tq, tk, tv);
        float scale = Scale(d);
        Gemm(context, d, tq, k, ts, d.Query, d.Keys, d.Head, false, true, scale, 0);       // tS = s·(tQ·Kᵀ + Q·tKᵀ)
        Gemm(context, d, q, tk, ts, d.Query, d.Keys, d.Head, false, true, scale, 1);
        for (int r = 0; r < d.Batch * d.Heads * d.Query; r++)
        {
            // Softmax: tP = P ⊙ (tS − ⟨P, tS⟩)
            var pr = p.Slice(r * d.Keys, d.Keys);
            var tr = ts.Slice(r * d.Keys, d.Keys);
            int bn = r / d.Query;
            AddMaskTangent(inputTangents, d, bn / d.Heads, bn % d.Heads, r % d.Query, tr);
            TensorPrimitives.Subtract(tr, TensorPrimitives.Dot(tr, pr), tr);
            TensorPrimitives.Multiply(tr, pr, tr);
        }
        Gemm(context, d, ts, v, to, d.Query, d.ValueHead, d.Keys, false, false, 1, 0);     // tO = tP·V + P·tV
        Gemm(context, d, p, tv, to, d.Query, d.ValueHead, d.Keys, false, false, 1, 1);
        WriteOutput(inputs, d, to, ty.Data);
    }

    /// <summary>One GEMM per (batch, head): C [m×n] = α·op(A)·op(B) + β·C, operands stored as op requires.</summary>
    private static void Gemm(OpContext context, in Dims d, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c,
                             int m, int n, int k, bool transA, bool transB, float alpha, float beta) =>
        context.Backend.Gemm(new GemmShape(m, n, k, transA, transB, alpha, beta, d.Batch * d.Heads, (long)m * k, (long)k * n, (long)m * n), a, b, c);

    /// <summary>
    /// Head-major copy [batch, heads, seq, head] of columns [column, column + heads·head) of rows of
    /// <paramref name="rowLength"/> floats ([batch·seq] rows), plus <paramref name="bias"/> (one value per column)
    /// when given. An empty source means zeros.
    /// </summary>
    protected static void ToHeads(ReadOnlySpan<float> source, int rowLength, int column, ReadOnlySpan<float> bias,
                                  Span<float> heads, int batch, int sequence, int headCount, int head)
    {
        for (int b = 0; b < batch; b++)
            for (int n = 0; n < headCount; n++)
                for (int s = 0; s < sequence; s++)
                {
                    var to = heads.Slice(((b * headCount + n) * sequence + s) * head, head);
                    if (source.IsEmpty) to.Clear();
                    else source.Slice((b * sequence + s) * rowLength + column + n * head, head).CopyTo(to);
                    if (!bias.IsEmpty) TensorPrimitives.Add(to, bias.Slice(n * head, head), to);
                }
    }

    /// <summary>The inverse of <see cref="ToHeads"/> (without bias): writes, or adds into, the row-major columns.</summary>
    protected static void FromHeads(ReadOnlySpan<float> heads, Span<float> destination, int batch, int sequence, int headCount, int head,
                                    int rowLength, int column, bool accumulate)
    {
        for (int b = 0; b < batch; b++)
            for (int n = 0; n < headCount; n++)
                for (int s = 0; s < sequence; s++)
                {
                    var from = heads.Slice(((b * headCount + n) * sequence + s) * head, head);
                    var to = destination.Slice((b * sequence + s) * rowLength + column + n * head, head);
                    if (accumulate) TensorPrimitives.Add(to, from, to); else from.CopyTo(to);
                }
    }

    /// <summary>Adds the per-column sums over batch and sequence of head-major values (a bias gradient).</summary>
    protected static void AddColumnSums(ReadOnlySpan<float> heads, Span<float> bias, int batch, int sequence, int headCount, int head)
    {
        for (int b = 0; b < batch; b++)
            for (int n = 0; n < headCount; n++)
                for (int s = 0; s < sequence; s++)
                {
                    var to = bias.Slice(n * head, head);
                    TensorPrimitives.Add(to, heads.Slice(((b * headCount + n) * sequence + s) * head, head), to);
                }
    }

    /// <summary>Head size of a hidden width, which must split evenly over the heads.</summary>
    protected int HeadSize(int hidden, string what) =>
        hidden % Heads == 0 ? hidden / Heads : throw Error($"{what} {hidden} is not a multiple of num_heads {Heads}");
}

/// <summary>
/// com.microsoft Attention: self-attention with the Q, K, V projections packed in one weight
/// [input_hidden, D + D + Dv] (split by <c>qkv_hidden_sizes</c>, else three equal parts) and an optional bias
/// [D + D + Dv]; output [batch, seq, Dv]. Past state, attention bias, past_sequence_length, rotary
/// (<c>do_rotary</c>) and the present output are refused.
/// </summary>
internal sealed class Attention : ContribAttention
{
    private readonly long[]? hiddenSizes;

    public Attention(OperatorNode node) : base(node)
    {
        RequireInputs(2, 7);
        hiddenSizes = node.Attributes.GetInts("qkv_hidden_sizes");
        if (hiddenSizes is not null && (hiddenSizes.Length != 3 || hiddenSizes[0] != hiddenSizes[1] || hiddenSizes.Any(h => h <= 0)))
            throw FisherKernelsException.Format($"qkv_hidden_sizes must be three positive sizes with Q and K equal, got [{string.Join(", ", hiddenSizes)}]");
        if (node.Attributes.GetInt("do_rotary", 0) != 0) throw FisherKernelsException.Unsupported("do_rotary = 1 is not supported");
        if (node.Attributes.GetInt("past_present_share_buffer", 0) != 0) throw FisherKernelsException.Unsupported("past_present_share_buffer = 1 is not supported");
    }

    protected override int MaskInput => 3;

    protected override bool AcceptsStartPositions => true;

    public override bool IsDifferentiable(int input) => input <= 2;

    protected override void Validate(ReadOnlySpan<TensorInfo?> inputs)
    {
        for (int i = 4; i < inputs.Length; i++)
            if (inputs[i] is not null)
                throw UnsupportedError($"optional input {i} ({(i == 4 ? "past" : i == 5 ? "attention_bias" : "past_sequence_length")}) is not supported");
        var x = RequiredFloat(inputs, 0, "input");
        var w = RequiredFloat(inputs, 1, "weights");
        if (x.Shape.Length != 3) throw Error($"input must be [batch, seq, hidden], got [{ShapeUtil.Format(x.Shape)}]");
        if (w.Shape.Length != 2 || w.Shape[0] != x.Shape[2]) throw Error($"weights [{ShapeUtil.Format(w.Shape)}] do not take input [{ShapeUtil.Format(x.Shape)}]");
        if (inputs.Length > 2 && inputs[2] is { } bias && (bias.Type != ElementType.Float32 || !Tensors.SameShape(bias.Shape, [w.Shape[1]])))
            throw Error($"bias must be float [{w.Shape[1]}], got {bias}");
    }

    protected override Dims Measure(int[] input, int[] weights, int[] bias)
    {
        var (qk, value) = Split(weights[1]);
        return new Dims(input[0], input[1], input[1], Heads, HeadSize(qk, "hidden size"), HeadSize(value, "value hidden size"));
    }

    /// <summary>Q/K and V widths of the packed projection.</summary>
    private (int QK, int Value) Split(int total)
    {
        if (hiddenSizes is null)
            return total % 3 == 0 ? (total / 3, total / 3) : throw Error($"packed weight width {total} is not three equal parts (and no qkv_hidden_sizes)");
        if (hiddenSizes.Sum() != total) throw Error($"qkv_hidden_sizes [{string.Join(", ", hiddenSizes)}] do not add up to the weight width {total}");
        return ((int)hiddenSizes[0], (int)hiddenSizes[2]);
    }

    private static int Width(in Dims d) => 2 * d.Heads * d.Head + d.Heads * d.ValueHead;

    protected override int ProjectionWork(in Dims d) => d.Batch * d.Query * Width(d);

    /// <summary>Splits the packed [batch·seq, D + D + Dv] rows (and packed bias) into head-major Q, K, V.</summary>
    private static void Unpack(in Dims d, ReadOnlySpan<float> packed, ReadOnlySpan<float> bias, Span<float> q, Span<float> k, Span<float> v)
    {
        int width = Width(d), hidden = d.Heads * d.Head;
        ToHeads(packed, width, 0, bias.IsEmpty ? default : bias[..hidden], q, d.Batch, d.Query, d.Heads, d.Head);
        ToHeads(packed, width, hidden, bias.IsEmpty ? default : bias.Slice(hidden, hidden), k, d.Batch, d.Keys, d.Heads, d.Head);
        ToHeads(packed, width, 2 * hidden, bias.IsEmpty ? default : bias[(2 * hidden)..], v, d.Batch, d.Keys, d.Heads, d.ValueHead);
    }

    protected override void Project(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, Span<float> work, Span<float> q, Span<float> k, Span<float> v)
    {
        var x = (NdArray<float>)inputs[0]!;
        var w = (NdArray<float>)inputs[1]!;
        context.Backend.Gemm(new GemmShape(d.Batch * d.Query, Width(d), x.Shape[2]), x.Data, w.Data, work);
        Unpack(d, work, inputs.Length > 2 && inputs[2] is NdArray<float> b ? b.Data : default, q, k, v);
    }

    protected override void ProjectTangent(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> tangents,
                                           Span<float> work, Span<float> tq, Span<float> tk, Span<float> tv)
    {
        var x = (NdArray<float>)inputs[0]!;
        var w = (NdArray<float>)inputs[1]!;
        var shape = new GemmShape(d.Batch * d.Query, Width(d), x.Shape[2]);
        work.Clear();
        if (tangents[0] is { } tx) context.Backend.Gemm(shape with { Beta = 1 }, tx.Data, w.Data, work);
        if (tangents[1] is { } tw) context.Backend.Gemm(shape with { Beta = 1 }, x.Data, tw.Data, work);
        Unpack(d, work, tangents.Length > 2 && tangents[2] is { } tb ? tb.Data : default, tq, tk, tv);
    }

    protected override void ProjectVjp(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> inputGrads,
                                       Span<float> work, Span<float> gq, Span<float> gk, Span<float> gv)
    {
        var x = (NdArray<float>)inputs[0]!;
        var w = (NdArray<float>)inputs[1]!;
        int width = Width(d), hidden = d.Heads * d.Head, rows = d.Batch * d.Query, inputHidden = x.Shape[2];
        FromHeads(gq, work, d.Batch, d.Query, d.Heads, d.Head, width, 0, accumulate: false);
        FromHeads(gk, work, d.Batch, d.Keys, d.Heads, d.Head, width, hidden, accumulate: false);
        FromHeads(gv, work, d.Batch, d.Keys, d.Heads, d.ValueHead, width, 2 * hidden, accumulate: false);
        if (inputGrads[0] is { } gx) context.Backend.Gemm(new GemmShape(rows, inputHidden, width, TransB: true, Beta: 1), work, w.Data, gx.Data);
        if (inputGrads[1] is { } gw) context.Backend.Gemm(new GemmShape(inputHidden, width, rows, TransA: true, Beta: 1), x.Data, work, gw.Data);
        if (inputGrads.Length > 2 && inputGrads[2] is { } gb)
            for (int r = 0; r < rows; r++) TensorPrimitives.Add(gb.Data, work.Slice(r * width, width), gb.Data);
    }
}

/// <summary>
/// com.microsoft MultiHeadAttention with separate query [batch, S, D], key [batch, L, D] and value
/// [batch, L, Dv] (self or cross attention) and an optional input-projection bias [D + D + Dv]; output
/// [batch, S, Dv]. Packed QKV/KV, keys given per head (past-key form), attention bias, past state and
/// cache indirection are refused.
/// </summary>
internal sealed class MultiHeadAttention : ContribAttention
{
    private static readonly string[] InputNames =
        ["query", "key", "value", "bias", "key_padding_mask", "attention_bias", "past_key", "past_value", "past_sequence_length", "cache_indirection"];

    public MultiHeadAttention(OperatorNode node) : base(node) => RequireInputs(1, 10);

    protected override int MaskInput => 4;

    public override bool IsDifferentiable(int input) => input <= 3;

    protected override void Validate(ReadOnlySpan<TensorInfo?> inputs)
    {
        for (int i = 5; i < inputs.Length; i++)
            if (inputs[i] is not null) throw UnsupportedError($"optional input {i} ({InputNames[i]}) is not supported");
        var q = RequiredFloat(inputs, 0, "query");
        if (q.Shape.Length != 3) throw UnsupportedError($"query must be [batch, seq, hidden] (packed QKV is not supported), got [{ShapeUtil.Format(q.Shape)}]");
        if (inputs.Length < 3 || inputs[1] is null || inputs[2] is null) throw UnsupportedError("key and value are required (packed QKV is not supported)");
        var k = RequiredFloat(inputs, 1, "key");
        var v = RequiredFloat(inputs, 2, "value");
        if (k.Shape.Length != 3 || v.Shape.Length != 3)
            throw UnsupportedError($"key and value must be [batch, kv_seq, hidden] (packed KV and per-head past keys are not supported), got [{ShapeUtil.Format(k.Shape)}] and [{ShapeUtil.Format(v.Shape)}]");
        if (k.Shape[0] != q.Shape[0] || v.Shape[0] != q.Shape[0] || k.Shape[1] != v.Shape[1] || k.Shape[2] != q.Shape[2])
            throw Error($"query [{ShapeUtil.Format(q.Shape)}], key [{ShapeUtil.Format(k.Shape)}] and value [{ShapeUtil.Format(v.Shape)}] do not fit together");
        int total = 2 * q.Shape[2] + v.Shape[2];
        if (inputs.Length > 3 && inputs[3] is { } bias && (bias.Type != ElementType.Float32 || !Tensors.SameShape(bias.Shape, [total])))
            throw Error($"bias must be float [{total}], got {bias}");
    }

    protected override Dims Measure(int[] query, int[] key, int[] value) =>
        new(query[0], query[1], key[1], Heads, HeadSize(query[2], "hidden size"), HeadSize(value[2], "value hidden size"));

    /// <summary>The slices of the packed bias (or of its tangent) for Q, K and V; empty when absent.</summary>
    private static (ReadOnlyMemory<float> Q, ReadOnlyMemory<float> K, ReadOnlyMemory<float> V) BiasParts(in Dims d, float[]? bias)
    {
        if (bias is null) return default;
        int hidden = d.Heads * d.Head;
        return (bias.AsMemory(0, hidden), bias.AsMemory(hidden, hidden), bias.AsMemory(2 * hidden));
    }

    private static void AllToHeads(in Dims d, float[]? q, float[]? k, float[]? v, float[]? bias, Span<float> hq, Span<float> hk, Span<float> hv)
    {
        var (bq, bk, bv) = BiasParts(d, bias);
        ToHeads(q, d.Heads * d.Head, 0, bq.Span, hq, d.Batch, d.Query, d.Heads, d.Head);
        ToHeads(k, d.Heads * d.Head, 0, bk.Span, hk, d.Batch, d.Keys, d.Heads, d.Head);
        ToHeads(v, d.Heads * d.ValueHead, 0, bv.Span, hv, d.Batch, d.Keys, d.Heads, d.ValueHead);
    }

    private static float[]? Data(ReadOnlySpan<NdArray?> inputs, int i) => inputs.Length > i ? (inputs[i] as NdArray<float>)?.Data : null;

    private static float[]? Data(ReadOnlySpan<NdArray<float>?> values, int i) => values.Length > i ? values[i]?.Data : null;

    protected override void Project(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, Span<float> work, Span<float> q, Span<float> k, Span<float> v) =>
        AllToHeads(d, Data(inputs, 0), Data(inputs, 1), Data(inputs, 2), Data(inputs, 3), q, k, v);

    protected override void ProjectTangent(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> tangents,
                                           Span<float> work, Span<float> tq, Span<float> tk, Span<float> tv) =>
        AllToHeads(d, Data(tangents, 0), Data(tangents, 1), Data(tangents, 2), Data(tangents, 3), tq, tk, tv);

    protected override void ProjectVjp(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> inputGrads,
                                       Span<float> work, Span<float> gq, Span<float> gk, Span<float> gv)
    {
        int hidden = d.Heads * d.Head, valueHidden = d.Heads * d.ValueHead;
        if (Data(inputGrads, 0) is { } gQuery) FromHeads(gq, gQuery, d.Batch, d.Query, d.Heads, d.Head, hidden, 0, accumulate: true);
        if (Data(inputGrads, 1) is { } gKey) FromHeads(gk, gKey, d.Batch, d.Keys, d.Heads, d.Head, hidden, 0, accumulate: true);
        if (Data(inputGrads, 2) is { } gValue) FromHeads(gv, gValue, d.Batch, d.Keys, d.Heads, d.ValueHead, valueHidden, 0, accumulate: true);
        if (Data(inputGrads, 3) is { } gBias)
        {
            AddColumnSums(gq, gBias.AsSpan(0, hidden), d.Batch, d.Query, d.Heads, d.Head);
            AddColumnSums(gk, gBias.AsSpan(hidden, hidden), d.Batch, d.Keys, d.Heads, d.Head);
            AddColumnSums(gv, gBias.AsSpan(2 * hidden), d.Batch, d.Keys, d.Heads, d.ValueHead);
        }
    }
}

/// <summary>
/// ONNX Attention (opset 23+): Q, K, V as [batch, heads, seq, head] or [batch, seq, heads·head] (with
/// <c>q_num_heads</c>/<c>kv_num_heads</c>); grouped-query attention when the query heads are a multiple of the
/// key/value heads (each key/value head serves consecutive query heads); <c>attn_mask</c> bool (true = attend) or
/// float (added), broadcast to [batch, q_heads, S, L] and padded with −inf when shorter than L; <c>is_causal</c>
/// excludes the keys after the query (no past: top-left aligned). A float mask is differentiable. Past key/value,
/// nonpad_kv_seqlen, softcap and the present/qk outputs are refused; softmax_precision is moot (float32 throughout).
/// </summary>
internal sealed class StandardAttention : ContribAttention
{
    private readonly int queryHeads, kvHeads;
    private readonly bool causal;

    public StandardAttention(OperatorNode node) : base(node, requireHeads: false)
    {
        RequireInputs(3, 7);
        queryHeads = checked((int)node.Attributes.GetInt("q_num_heads", 0));
        kvHeads = checked((int)node.Attributes.GetInt("kv_num_heads", 0));
        causal = node.Attributes.GetInt("is_causal", 0) != 0;
        if (node.Attributes.GetFloat("softcap", 0f) != 0f) throw FisherKernelsException.Unsupported("softcap is not supported");
    }

    protected override int MaskInput => 3;

    public override bool IsDifferentiable(int input) => input <= 3;

    protected override bool HeadMajorOutput(ReadOnlySpan<int> queryShape) => queryShape.Length == 4;

    private static readonly string[] OptionalNames = ["past_key", "past_value", "nonpad_kv_seqlen"];

    protected override void Validate(ReadOnlySpan<TensorInfo?> inputs)
    {
        for (int i = 4; i < inputs.Length; i++)
            if (inputs[i] is not null) throw UnsupportedError($"optional input {i} ({OptionalNames[i - 4]}) is not supported");
        var q = RequiredFloat(inputs, 0, "Q");
        var k = RequiredFloat(inputs, 1, "K");
        var v = RequiredFloat(inputs, 2, "V");
        int rank = q.Shape.Length;
        if (rank is not (3 or 4) || k.Shape.Length != rank || v.Shape.Length != rank)
            throw Error($"Q [{ShapeUtil.Format(q.Shape)}], K [{ShapeUtil.Format(k.Shape)}] and V [{ShapeUtil.Format(v.Shape)}] must all be 3-D or all 4-D");
        if (rank == 3 && (queryHeads <= 0 || kvHeads <= 0)) throw Error("3-D Q, K, V need the q_num_heads and kv_num_heads attributes");
        int nq = rank == 4 ? q.Shape[1] : queryHeads, nkv = rank == 4 ? k.Shape[1] : kvHeads;
        bool fits = k.Shape[0] == q.Shape[0] && v.Shape[0] == q.Shape[0] && (rank == 4
            ? v.Shape[1] == nkv && k.Shape[2] == v.Shape[2] && k.Shape[3] == q.Shape[3]
            : k.Shape[1] == v.Shape[1] && q.Shape[2] % nq == 0 && k.Shape[2] % nkv == 0 && v.Shape[2] % nkv == 0 && k.Shape[2] / nkv == q.Shape[2] / nq);
        if (!fits || nkv == 0 || nq % nkv != 0)
            throw Error($"Q [{ShapeUtil.Format(q.Shape)}], K [{ShapeUtil.Format(k.Shape)}] and V [{ShapeUtil.Format(v.Shape)}] do not fit together with {nq} query and {nkv} key/value heads");
    }

    protected override Dims Measure(int[] query, int[] key, int[] value) => query.Length == 4
        ? new(query[0], query[2], key[2], query[1], query[3], value[3])
        : new(query[0], query[1], key[1], queryHeads, query[2] / queryHeads, value[2] / kvHeads);

    private int KvHeads(int[] keyShape) => keyShape.Length == 4 ? keyShape[1] : kvHeads;

    protected override void CheckMask(TensorInfo mask, in Dims d)
    {
        if (mask.Type is not (ElementType.Bool or ElementType.Float32)) throw Error($"attn_mask must be bool or float, got {mask.Type}");
        int[] shape = mask.Shape, full = [d.Batch, d.Heads, d.Query, d.Keys];
        bool ok = shape.Length is >= 1 and <= 4 && shape[^1] <= d.Keys;
        for (int a = 1; ok && a < shape.Length; a++) ok = shape[^(a + 1)] == 1 || shape[^(a + 1)] == full[^(a + 1)];
        if (!ok) throw Error($"attn_mask [{ShapeUtil.Format(shape)}] does not broadcast to [{ShapeUtil.Format(full)}] (the last axis may be shorter)");
    }

    /// <summary>Offset of the mask row for (b, n, i) in the mask's elements (broadcast axes step 0).</summary>
    private static int MaskRow(NdArray mask, in Dims d, int b, int n, int i)
    {
        ReadOnlySpan<int> index = [b, n, i];
        int offset = 0, stride = mask.Shape[^1];
        for (int a = 2; a >= 0; a--)
        {
            int axis = mask.Rank - 4 + a;
            if (axis < 0) break;
            if (mask.Shape[axis] != 1) offset += index[a] * stride;
            stride *= mask.Shape[axis];
        }
        return offset;
    }

    protected override void AddMask(ReadOnlySpan<NdArray?> inputs, in Dims d, int b, int n, int i, Span<float> row)
    {
        if (inputs.Length > 3 && inputs[3] is { } mask)
        {
            int offset = MaskRow(mask, d, b, n, i), width = mask.Shape[^1];
            if (mask is NdArray<bool> m) { for (int j = 0; j < width; j++) if (!m.Data[offset + j]) row[j] = float.NegativeInfinity; }
            else TensorPrimitives.Add(row[..width], ((NdArray<float>)mask).Data.AsSpan(offset, width), row[..width]);
            row[width..].Fill(float.NegativeInfinity);
        }
        if (causal) row[Math.Min(i + 1, row.Length)..].Fill(float.NegativeInfinity);
    }

    protected override void AddMaskTangent(ReadOnlySpan<NdArray<float>?> tangents, in Dims d, int b, int n, int i, Span<float> row)
    {
        if (tangents.Length > 3 && tangents[3] is { } t)
        {
            int width = t.Shape[^1];
            TensorPrimitives.Add(row[..width], t.Data.AsSpan(MaskRow(t, d, b, n, i), width), row[..width]);
        }
    }

    protected override void AddMaskGradient(ReadOnlySpan<NdArray<float>?> grads, in Dims d, int b, int n, int i, ReadOnlySpan<float> row)
    {
        if (grads.Length > 3 && grads[3] is { } g)
        {
            var to = g.Data.AsSpan(MaskRow(g, d, b, n, i), g.Shape[^1]);
            TensorPrimitives.Add(to, row[..to.Length], to);
        }
    }

    /// <summary>
    /// Copies between an input laid out [batch, kv heads, seq, head] (4-D) or [batch, seq, kv heads·head] (3-D) and
    /// head-major values with <see cref="Dims.Heads"/> heads, query head n reading kv head n / group: to the heads
    /// (an empty source gives zeros), or back, adding (the groups' gradients sum).
    /// </summary>
    private static void MapHeads(Span<float> source, bool fourD, int kv, in Dims d, int sequence, int head, Span<float> heads, bool back)
    {
        int group = d.Heads / kv;
        for (int b = 0; b < d.Batch; b++)
            for (int n = 0; n < d.Heads; n++)
                for (int s = 0; s < sequence; s++)
                {
                    var h = heads.Slice(((b * d.Heads + n) * sequence + s) * head, head);
                    int offset = fourD ? ((b * kv + n / group) * sequence + s) * head : (b * sequence + s) * kv * head + n / group * head;
                    if (back) { var to = source.Slice(offset, head); TensorPrimitives.Add(to, h, to); }
                    else if (source.IsEmpty) h.Clear();
                    else source.Slice(offset, head).CopyTo(h);
                }
    }

    private void Map(in Dims d, int[] keyShape, bool fourD, float[]? q, float[]? k, float[]? v, Span<float> hq, Span<float> hk, Span<float> hv, bool back)
    {
        int kv = KvHeads(keyShape);
        if (!back || q is not null) MapHeads(q, fourD, d.Heads, d, d.Query, d.Head, hq, back);
        if (!back || k is not null) MapHeads(k, fourD, kv, d, d.Keys, d.Head, hk, back);
        if (!back || v is not null) MapHeads(v, fourD, kv, d, d.Keys, d.ValueHead, hv, back);
    }

    protected override void Project(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, Span<float> work, Span<float> q, Span<float> k, Span<float> v) =>
        Map(d, inputs[1]!.Shape, inputs[0]!.Rank == 4, ((NdArray<float>)inputs[0]!).Data, ((NdArray<float>)inputs[1]!).Data, ((NdArray<float>)inputs[2]!).Data, q, k, v, back: false);

    protected override void ProjectTangent(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> tangents,
                                           Span<float> work, Span<float> tq, Span<float> tk, Span<float> tv) =>
        Map(d, inputs[1]!.Shape, inputs[0]!.Rank == 4, tangents[0]?.Data, tangents[1]?.Data, tangents[2]?.Data, tq, tk, tv, back: false);

    protected override void ProjectVjp(OpContext context, in Dims d, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray<float>?> inputGrads,
                                       Span<float> work, Span<float> gq, Span<float> gk, Span<float> gv)
    {
        Map(d, inputs[1]!.Shape, inputs[0]!.Rank == 4, inputGrads[0]?.Data, inputGrads[1]?.Data, inputGrads[2]?.Data, gq, gk, gv, back: true);
    }
}

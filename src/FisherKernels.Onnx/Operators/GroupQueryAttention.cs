using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// com.microsoft GroupQueryAttention for a prompt without a key/value cache: query [batch, S, num_heads·H], key and
/// value [batch, S, kv_num_heads·H], always causal, scale = <c>scale</c> or 1/√H; query head n reads key/value head
/// n / (num_heads / kv_num_heads). This is ONNX Attention with 3-D inputs and is_causal (<see cref="StandardAttention"/>
/// does the work). seqlens_k [batch] (int32, valid length − 1) cannot change a row inside the valid length under the
/// causal mask, so it is only checked (each value below S); total_sequence_length (int32 scalar) must be S. The
/// optional present_key/present_value outputs are key and value as [batch, kv_num_heads, S, H] (what ONNX Runtime
/// writes without a past). Refused, by name: past_key/past_value, packed QKV, rotary (do_rotary, cos/sin caches),
/// position_ids, attention_bias, head_sink, softcap, local_window_size, smooth_softmax and the output_qk output.
/// </summary>
internal sealed class GroupQueryAttention : Operator
{
    private const int Query = 0, Key = 1, Value = 2, PastKey = 3, PastValue = 4, SeqLensK = 5, TotalLength = 6;
    private static readonly string[] InputNames =
        ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache", "position_ids", "attention_bias", "head_sink"];

    private readonly StandardAttention attention;
    private readonly int kvHeads;

    public GroupQueryAttention(OperatorNode node) : base(node)
    {
        RequireInputs(7, InputNames.Length);
        if (node.OutputCount is < 1 or > 3)
            throw UnsupportedError(node.OutputCount > 3 ? "the output_qk output is not supported" : $"expects 1 to 3 outputs, got {node.OutputCount}");
        long heads = node.Attributes.GetInt("num_heads", 0);
        kvHeads = checked((int)node.Attributes.GetInt("kv_num_heads", 0));
        if (heads <= 0 || kvHeads <= 0) throw Error("the attributes 'num_heads' and 'kv_num_heads' (positive ints) are required");
        foreach (var (name, off) in new[] { ("do_rotary", 0L), ("smooth_softmax", 0L), ("qk_output", 0L), ("local_window_size", -1L) })
            if (node.Attributes.GetInt(name, off) != off) throw UnsupportedError($"attribute '{name}' = {node.Attributes.GetInt(name, off)} is not supported (only {off})");
        if (node.Attributes.GetFloat("softcap", 0f) != 0f) throw UnsupportedError("attribute 'softcap' is not supported (only 0)");
        var attributes = new OperatorAttributes().Set("q_num_heads", heads).Set("kv_num_heads", (long)kvHeads).Set("is_causal", 1L)
                                                 .Set("scale", node.Attributes.GetFloat("scale", 0f));
        attention = new StandardAttention(node with { Attributes = attributes, InputCount = 3, OutputCount = 1 });
    }

    public override bool IsDifferentiable(int input) => input is Query or Key or Value;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        for (int i = PastKey; i < inputs.Length; i++)
            if (i is not (SeqLensK or TotalLength) && inputs[i] is not null)
                throw UnsupportedError($"optional input {i} ({InputNames[i]}) is not supported{(i <= PastValue ? " (no key/value cache: prompts only)" : "")}");
        if (inputs.Length <= Value || inputs[Key] is null || inputs[Value] is null) throw UnsupportedError("key and value are required (packed QKV is not supported)");
        if (Required(inputs, Query, "query").Shape.Length != 3) throw UnsupportedError($"query must be [batch, seq, hidden] (packed QKV is not supported), got {inputs[Query]}");
        var output = attention.InferShapes(inputs[..3])[0];
        int batch = output.Shape[0], sequence = output.Shape[1];
        var seqLens = Required(inputs, SeqLensK, "seqlens_k");
        if (seqLens.Type != ElementType.Int32 || !Tensors.SameShape(seqLens.Shape, [batch]))
            throw Error($"seqlens_k must be int32 [{batch}], got {seqLens}");
        var total = Required(inputs, TotalLength, "total_sequence_length");
        if (total.Type != ElementType.Int32 || total.Length != 1) throw Error($"total_sequence_length must be one int32, got {total}");
        if (total.Value is NdArray<int> known) CheckTotal(known.Data[0], sequence);
        var key = inputs[Key]!;
        int[] present = [batch, kvHeads, sequence, key.Shape[2] / kvHeads];
        var outputs = new TensorInfo[Node.OutputCount];
        outputs[0] = output;
        for (int j = 1; j < outputs.Length; j++) outputs[j] = new TensorInfo(ElementType.Float32, present);
        return outputs;
    }

    private void CheckTotal(int total, int sequence)
    {
        if (total != sequence)
            throw UnsupportedError($"total_sequence_length {total} differs from the query length {sequence}: that needs a key/value cache, which is not supported");
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        int sequence = inputs[Query]!.Shape[1];
        CheckTotal(((NdArray<int>)inputs[TotalLength]!).Data[0], sequence);
        var seqLens = ((NdArray<int>)inputs[SeqLensK]!).Data;
        for (int b = 0; b < seqLens.Length; b++)
            if (seqLens[b] < 0 || seqLens[b] >= sequence)
                throw FisherKernelsException.Argument($"{Node}: seqlens_k[{b}] = {seqLens[b]} is outside [0, {sequence - 1}] (a prompt of {sequence} tokens without a cache)");
        attention.Forward(context, inputs[..3], outputs[..1]);
        for (int j = 1; j < outputs.Length; j++)
            Present(((NdArray<float>)inputs[j]!).Data, ((NdArray<float>)outputs[j]).Data, outputs[j].Shape, toHeads: true);
    }

    /// <summary>
    /// Between a key/value input [batch, S, kv·H] and its present form [batch, kv, S, H]: writes the present form
    /// (<paramref name="toHeads"/>), or adds it back into the input layout.
    /// </summary>
    private static void Present(Span<float> rows, Span<float> heads, int[] shape, bool toHeads)
    {
        int batch = shape[0], kv = shape[1], sequence = shape[2], head = shape[3];
        for (int b = 0; b < batch; b++)
            for (int n = 0; n < kv; n++)
                for (int s = 0; s < sequence; s++)
                {
                    var h = heads.Slice(((b * kv + n) * sequence + s) * head, head);
                    var r = rows.Slice(((b * sequence + s) * kv + n) * head, head);
                    if (toHeads) r.CopyTo(h); else TensorPrimitives.Add(r, h, r);
                }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        attention.Vjp(context, inputs[..3], outputs[..1], outputGrads[..1], inputGrads[..3]);
        for (int j = 1; j < outputs.Length; j++)
            if (outputGrads[j] is { } gPresent && inputGrads[j] is { } gInput) Present(gInput.Data, gPresent.Data, outputs[j].Shape, toHeads: false);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        attention.Jvp(context, inputs[..3], outputs[..1], inputTangents[..3], outputTangents[..1]);
        for (int j = 1; j < outputs.Length; j++)
        {
            if (outputTangents[j] is not { } tPresent) continue;
            if (inputTangents[j] is { } tInput) Present(tInput.Data, tPresent.Data, outputs[j].Shape, toHeads: true);
            else tPresent.Data.AsSpan().Clear();
        }
    }
}

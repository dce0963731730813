namespace FisherKernels.Onnx;

/// <summary>Next-token targets and their checks (SPEC §1): same shape as the tokens, -100 = no loss there.</summary>
public static class Targets
{
    public const long Ignore = -100;

    /// <summary><c>targets[:, t] = tokens[:, t+1]</c>, last position <see cref="Ignore"/>.</summary>
    public static NdArray<long> NextToken(NdArray tokens)
    {
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        var ids = ToLongs(tokens);
        var targets = new long[batch * seq];
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < seq; t++)
                targets[b * seq + t] = t + 1 < seq ? ids[b * seq + t + 1] : Ignore;
        return new NdArray<long>([batch, seq], targets);
    }

    /// <summary>
    /// The model's top-1 token at each position of <paramref name="logits"/> [batch, seq, vocab]; <see cref="Ignore"/> where
    /// <paramref name="targeted"/> (when given) is <see cref="Ignore"/>.
    /// </summary>
    public static NdArray<long> Predicted(NdArray<float> logits, NdArray<long>? targeted = null)
    {
        int rows = logits.Shape[0] * logits.Shape[1], vocab = logits.Shape[2];
        var predicted = new NdArray<long>(logits.Shape[0], logits.Shape[1]);
        for (int r = 0; r < rows; r++)
            predicted.Data[r] = targeted?.Data[r] == Ignore ? Ignore
                : System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.Data.AsSpan(r * vocab, vocab));
        return predicted;
    }

    /// <summary>The targets as int64, checked against the tokens' shape and the vocabulary; errors name <paramref name="what"/>.</summary>
    public static NdArray<long> Check(NdArray targets, int[] tokenShape, int vocabulary, string what)
    {
        if (targets.ElementType is not (ElementType.Int64 or ElementType.Int32))
            throw FisherKernelsException.Argument($"{what}: targets must be int32 or int64, got {targets.ElementType}");
        if (!targets.Shape.AsSpan().SequenceEqual(tokenShape))
            throw FisherKernelsException.Argument($"{what}: targets have shape [{ShapeUtil.Format(targets.Shape)}], the tokens [{ShapeUtil.Format(tokenShape)}]");
        var values = ToLongs(targets);
        for (int i = 0; i < values.Length; i++)
            if (values[i] != Ignore && (values[i] < 0 || values[i] >= vocabulary))
                throw FisherKernelsException.Argument($"{what}: target {values[i]} at [{i / tokenShape[1]}, {i % tokenShape[1]}] is outside the vocabulary 0..{vocabulary - 1} (use -100 for no loss)");
        return new NdArray<long>((int[])targets.Shape.Clone(), values);
    }

    private static long[] ToLongs(NdArray array) => array switch
    {
        NdArray<long> a => (long[])a.Data.Clone(),
        NdArray<int> a => Array.ConvertAll(a.Data, v => (long)v),
        _ => throw FisherKernelsException.Argument($"expected int32 or int64 ids, got {array.ElementType}"),
    };
}

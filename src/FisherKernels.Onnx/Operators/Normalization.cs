using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Normalization over the trailing axes [axis, rank): LayerNormalization (opset 17: X, Scale, B?; outputs Y,
/// Mean?, InvStdDev?), RMSNormalization (opset 23) and com.microsoft SimplifiedLayerNormalization (no mean),
/// and com.microsoft SkipLayerNormalization (input + skip + bias? normalized over the last axis; outputs
/// Y, mean?, inv_std_var?, input_skip_bias_sum?). Scale and bias cover the normalized block (broadcast
/// over leading rows); skip may be broadcast over leading dimensions.
/// Derivatives flow through every output (Y, the statistics and the skip sum).
/// </summary>
internal sealed class Normalization : Operator
{
    private readonly long axis;
    private readonly float epsilon;
    private readonly bool centered, skip;
    private readonly int scaleInput, biasInput, skipBiasInput; // -1 = the operator has no such input

    public Normalization(OperatorNode node) : base(node)
    {
        skip = node.OpType.StartsWith("Skip", StringComparison.Ordinal);
        centered = node.OpType is "LayerNormalization" or "SkipLayerNormalization";
        if (skip) RequireInputs(3, centered ? 5 : 4); else RequireInputs(2, centered ? 3 : 2);
        axis = skip ? -1 : node.Attributes.GetInt("axis", -1);
        epsilon = node.Attributes.GetFloat("epsilon", skip ? 1e-12f : 1e-5f);
        if (node.Attributes.GetInt("stash_type", 1) != 1) throw FisherKernelsException.Unsupported("stash_type other than 1 (float32) is not supported");
        scaleInput = skip ? 2 : 1;
        biasInput = !centered ? -1 : skip ? 3 : 2;
        skipBiasInput = !skip ? -1 : centered ? 4 : 3;
    }

    public override bool IsDifferentiable(int input) => true;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "X");
        int a = NormalizeAxis(axis, x.Shape.Length);
        int block = Tensors.Product(x.Shape, a, x.Shape.Length);
        for (int i = 1; i < inputs.Length; i++)
        {
            if (inputs[i] is not { } p) continue;
            if (p.Type != ElementType.Float32) throw UnsupportedError($"input {i} must be float, got {p.Type}");
            if (skip && i == 1 ? x.Length % Math.Max(1, p.Length) != 0 || p.Shape.Length == 0 || p.Shape[^1] != x.Shape[^1] : p.Length != block)
                throw Error($"input {i} [{ShapeUtil.Format(p.Shape)}] does not match X [{ShapeUtil.Format(x.Shape)}] normalized from axis {axis}");
        }
        Required(inputs, scaleInput, "scale");
        var outputs = new TensorInfo[Node.OutputCount];
        outputs[0] = new TensorInfo(ElementType.Float32, x.Shape);
        var statShape = x.Shape.Select((d, i) => i < a ? d : 1).ToArray();
        for (int j = 1; j < outputs.Length; j++)
            outputs[j] = skip && j == 3 ? new TensorInfo(ElementType.Float32, x.Shape) : new TensorInfo(ElementType.Float32, statShape);
        return outputs;
    }

    private int Block(NdArray x) => Tensors.Product(x.Shape, NormalizeAxis(axis, x.Rank), x.Rank);

    private static float[]? Data(ReadOnlySpan<NdArray?> inputs, int i) => i >= 0 && i < inputs.Length ? (inputs[i] as NdArray<float>)?.Data : null;

    private static NdArray<float>? At(ReadOnlySpan<NdArray<float>?> arrays, int i) => i >= 0 && i < arrays.Length ? arrays[i] : null;

    /// <summary>The normalized argument s of row r: X, or X + skip + bias (SkipLayerNormalization).</summary>
    private ReadOnlySpan<float> Argument(ReadOnlySpan<NdArray?> inputs, int row, int n, Span<float> buffer)
    {
        var x = ((NdArray<float>)inputs[0]!).Data.AsSpan(row * n, n);
        if (!skip) return x;
        var s = Data(inputs, 1)!;
        TensorPrimitives.Add(x, s.AsSpan(row * n % s.Length, n), buffer);
        if (Data(inputs, skipBiasInput) is { } bias) TensorPrimitives.Add(buffer, bias, buffer);
        return buffer;
    }

    private (float Mean, float InvStd) Normalize(ReadOnlySpan<float> s, Span<float> normalized) => NormalizedRow.Normalize(s, normalized, centered, epsilon);

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = (NdArray<float>)inputs[0]!;
        var y = ((NdArray<float>)outputs[0]).Data;
        int n = Block(x), rows = n == 0 ? 0 : (int)(x.Length / n);
        var gamma = Data(inputs, scaleInput)!;
        var beta = Data(inputs, biasInput);
        var buffer = context.Scratch(n);
        for (int r = 0; r < rows; r++)
        {
            var s = Argument(inputs, r, n, buffer);
            if (skip && outputs.Length > 3) s.CopyTo(((NdArray<float>)outputs[3]).Data.AsSpan(r * n, n));
            var yr = y.AsSpan(r * n, n);
            var (mean, invStd) = Normalize(s, yr);
            TensorPrimitives.Multiply(yr, gamma, yr);
            if (beta is not null) TensorPrimitives.Add(yr, beta, yr);
            if (outputs.Length > 1) ((NdArray<float>)outputs[1]).Data[r] = mean;
            if (outputs.Length > 2) ((NdArray<float>)outputs[2]).Data[r] = invStd;
        }
    }

    // With x̂ = (s − μ)·r and y = x̂·γ + β (μ = 0 without centering), per row of n:
    //   VJP: ĝ = gy·γ;  gs = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂));  gγ += gy·x̂;  gβ += gy
    //   JVP: ṫ = r·(ts − mean(ts) − x̂·mean(ts·x̂));  ty = ṫ·γ + x̂·tγ + tβ
    //   statistics: dμ = mean(ts), d r = −r²·mean(x̂·ts)
    // (the mean(·) terms marked "centered" vanish for RMS normalization).
    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        var gy = outputGrads[0]?.Data;
        var gMean = At(outputGrads, 1)?.Data;
        var gInvStd = At(outputGrads, 2)?.Data;
        var gSum = skip ? At(outputGrads, 3)?.Data : null;
        if (gy is null && gSum is null && gMean is null && gInvStd is null) return;
        var x = (NdArray<float>)inputs[0]!;
        int n = Block(x), rows = n == 0 ? 0 : (int)(x.Length / n);
        var gamma = Data(inputs, scaleInput)!;
        var scratch = context.Scratch(3L * n);
        Span<float> buffer = scratch[..n], xhat = scratch.Slice(n, n), g = scratch.Slice(2 * n, n);
        for (int r = 0; r < rows; r++)
        {
            var s = Argument(inputs, r, n, buffer);
            var (_, invStd) = Normalize(s, xhat);
            g.Clear();
            if (gy is not null)
                NormalizedRow.Backward(gy.AsSpan(r * n, n), xhat, invStd, gamma, centered, g, At(inputGrads, scaleInput)?.Data, At(inputGrads, biasInput)?.Data);
            // Statistics: dμ = mean(ds) (centered only), dr = −r²·mean(x̂·ds).
            if (gMean is not null && centered) TensorPrimitives.Add(g, gMean[r] / n, g);
            if (gInvStd is not null) TensorPrimitives.MultiplyAdd(xhat, -invStd * invStd * gInvStd[r] / n, g, g);
            if (gSum is not null) TensorPrimitives.Add(g, gSum.AsSpan(r * n, n), g);
            // ∂s/∂input = ∂s/∂skip = ∂s/∂bias = identity (skip and bias summed over broadcast rows)
            if (inputGrads[0] is { } gx) TensorPrimitives.Add(gx.Data.AsSpan(r * n, n), g, gx.Data.AsSpan(r * n, n));
            if (skip && At(inputGrads, 1) is { } gSkip)
            {
                var target = gSkip.Data.AsSpan(r * n % gSkip.Data.Length, n);
                TensorPrimitives.Add(target, g, target);
            }
            if (At(inputGrads, skipBiasInput) is { } gBias) TensorPrimitives.Add(gBias.Span, g, gBias.Span);
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        var x = (NdArray<float>)inputs[0]!;
        int n = Block(x), rows = n == 0 ? 0 : (int)(x.Length / n);
        var gamma = Data(inputs, scaleInput)!;
        var tx = inputTangents[0]?.Data;
        var tSkip = skip ? At(inputTangents, 1)?.Data : null;
        var tBias = At(inputTangents, skipBiasInput)?.Data;
        var tGamma = At(inputTangents, scaleInput)?.Data;
        var tBeta = At(inputTangents, biasInput)?.Data;
        var ty = outputTangents[0]?.Data;
        var tMean = At(outputTangents, 1)?.Data;
        var tInvStd = At(outputTangents, 2)?.Data;
        var tSum = skip ? At(outputTangents, 3)?.Data : null;
        var scratch = context.Scratch(3L * n);
        Span<float> buffer = scratch[..n], xhat = scratch.Slice(n, n), ts = scratch.Slice(2 * n, n);
        for (int r = 0; r < rows; r++)
        {
            // ts = tangent of s = tx + tskip + tbias
            ts.Clear();
            if (tx is not null) TensorPrimitives.Add(ts, tx.AsSpan(r * n, n), ts);
            if (tSkip is not null) TensorPrimitives.Add(ts, tSkip.AsSpan(r * n % tSkip.Length, n), ts);
            if (tBias is not null) TensorPrimitives.Add(ts, tBias, ts);
            if (tSum is not null) ts.CopyTo(tSum.AsSpan(r * n, n));
            if (ty is null && tMean is null && tInvStd is null) continue;
            var s = Argument(inputs, r, n, buffer);
            var (_, invStd) = Normalize(s, xhat);
            float meanT = centered ? TensorPrimitives.Sum(ts) / n : 0;
            float meanTx = TensorPrimitives.Dot(ts, xhat) / n;
            if (tMean is not null) tMean[r] = meanT;
            if (tInvStd is not null) tInvStd[r] = -invStd * invStd * meanTx;
            if (ty is null) continue;
            NormalizedRow.Tangent(ts, xhat, invStd, gamma, meanT, meanTx, ty.AsSpan(r * n, n), tGamma, tBeta);
        }
    }
}

/// <summary>
/// The per-row math of (RMS) layer normalization, shared by <see cref="Normalization"/> and
/// <see cref="EmbedLayerNormalization"/>: x̂ = (s − μ)·r, r = 1/√(var + ε), y = x̂·γ + β (μ = 0 when not centered).
/// Empty spans stand for absent optional parameters and gradients.
/// </summary>
internal static class NormalizedRow
{
    /// <summary>x̂ into <paramref name="normalized"/>; returns (μ, r).</summary>
    public static (float Mean, float InvStd) Normalize(ReadOnlySpan<float> s, Span<float> normalized, bool centered, float epsilon)
    {
        float mean = centered ? TensorPrimitives.Sum(s) / s.Length : 0;
        TensorPrimitives.Subtract(s, mean, normalized);
        float variance = TensorPrimitives.Dot(normalized, normalized) / s.Length;
        float invStd = 1 / MathF.Sqrt(variance + epsilon);
        TensorPrimitives.Multiply(normalized, invStd, normalized);
        return (mean, invStd);
    }

    /// <summary>
    /// VJP through y: WRITES gs = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = gy·γ (mean(ĝ) only when centered) into
    /// <paramref name="gs"/>, and ADDS gy·x̂ into <paramref name="gGamma"/> and gy into <paramref name="gBeta"/> when given.
    /// </summary>
    public static void Backward(ReadOnlySpan<float> gy, ReadOnlySpan<float> xhat, float invStd, ReadOnlySpan<float> gamma, bool centered,
                                Span<float> gs, Span<float> gGamma, Span<float> gBeta)
    {
        if (!gGamma.IsEmpty) TensorPrimitives.MultiplyAdd(gy, xhat, gGamma, gGamma);
        if (!gBeta.IsEmpty) TensorPrimitives.Add(gBeta, gy, gBeta);
        TensorPrimitives.Multiply(gy, gamma, gs);
        float meanG = centered ? TensorPrimitives.Sum(gs) / gs.Length : 0;
        float meanGx = TensorPrimitives.Dot(gs, xhat) / gs.Length;
        TensorPrimitives.Subtract(gs, meanG, gs);
        TensorPrimitives.MultiplyAdd(xhat, -meanGx, gs, gs);
        TensorPrimitives.Multiply(gs, invStd, gs);
    }

    /// <summary>
    /// JVP of y: WRITES ty = r·(ts − mean(ts) − x̂·mean(ts·x̂))·γ + x̂·tγ + tβ, given <paramref name="meanT"/> = mean(ts)
    /// (0 when not centered) and <paramref name="meanTx"/> = mean(ts·x̂).
    /// </summary>
    public static void Tangent(ReadOnlySpan<float> ts, ReadOnlySpan<float> xhat, float invStd, ReadOnlySpan<float> gamma, float meanT, float meanTx,
                               Span<float> ty, ReadOnlySpan<float> tGamma, ReadOnlySpan<float> tBeta)
    {
        TensorPrimitives.Subtract(ts, meanT, ty);
        TensorPrimitives.MultiplyAdd(xhat, -meanTx, ty, ty);
        TensorPrimitives.Multiply(ty, invStd, ty);
        TensorPrimitives.Multiply(ty, gamma, ty);
        if (!tGamma.IsEmpty) TensorPrimitives.MultiplyAdd(xhat, tGamma, ty, ty);
        if (!tBeta.IsEmpty) TensorPrimitives.Add(ty, tBeta, ty);
    }
}

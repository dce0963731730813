using System.Numerics.Tensors;
using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// Per-position and per-sequence scores (SPEC §4): p_t, aleatoric p(1−p), and the epistemic score of the parameter
/// gradient of p_t (and of p̄ per sequence) under an <see cref="EpistemicMetric"/>. One forward run per sequence
/// (batch-1 plan), then one backward pass per targeted position plus one for p̄, each reaching only the layer outputs
/// (<see cref="TapScorer"/> turns them into the score without forming weight gradients).
/// A causal model's p_t depends on the tokens up to t alone, so a position's pass can run on the shortest prefix
/// that holds it: the positions are scored in <see cref="PrefixBlocks"/> blocks, each on its own prefix (about half
/// the work over a sequence). That a model is causal is checked, not assumed: each prefix's logits must equal the
/// whole sequence's rows to float rounding (<see cref="PrefixTolerance"/>); the first prefix that differs (a
/// bidirectional encoder) or cannot be planned (a fixed sequence length) sends every later position to the whole
/// sequence.
/// </summary>
public static class PositionScorer
{
    /// <summary>Prefix lengths per sequence: ⌈k·seq/4⌉, k = 1..4 (the last one the whole sequence; four keep-all plans in all).</summary>
    internal const int PrefixBlocks = 4;

    /// <summary>max |prefix logits − whole-sequence logits| allowed, relative to the rows' largest |logit|.</summary>
    internal const float PrefixTolerance = 1e-5f;

    /// <summary>
    /// Positions propagated together in one reverse pass (<see cref="Backward.Cotangents"/>): the products' shared
    /// operands (a weight's packing, attention's transposed operand) are prepared once for the whole block.
    /// </summary>
    internal const int Cotangents = 8;

    /// <summary>
    /// Bytes the gradient buffers of the cotangents may take, over the <see cref="PrefixBlocks"/> passes together (each
    /// pass an equal share): fewer cotangents on a large model, whose buffers are ≈ 100 MB a cotangent at 128 positions.
    /// </summary>
    internal const long CotangentMemory = 512L << 20;

    /// <summary>Scores every sequence of <paramref name="tokens"/> for the gradients of <paramref name="parameters"/>.</summary>
    public static ScoreReport Score(LanguageModel lm, OpContext context, NdArray tokens, NdArray? targets,
                                    IReadOnlyList<string> parameters, string method, double priorPrecision,
                                    EpistemicMetric epistemic, ScoreLevel level = ScoreLevel.Both)
        => Score(lm, context, tokens, targets, parameters, method, priorPrecision, epistemic, passLengths: null, level);

    /// <summary>
    /// As the public overload; <paramref name="passLengths"/> gets the sequence length of each position's backward pass,
    /// <paramref name="cotangents"/> (at most) positions run through each reverse pass together.
    /// </summary>
    internal static ScoreReport Score(LanguageModel lm, OpContext context, NdArray tokens, NdArray? targets,
                                      IReadOnlyList<string> parameters, string method, double priorPrecision,
                                      EpistemicMetric epistemic, List<int>? passLengths, ScoreLevel level = ScoreLevel.Both, int cotangents = Cotangents)
    {
        if (level == 0 || (level & ~ScoreLevel.Both) != 0) throw new ArgumentOutOfRangeException(nameof(level), level, "not a score level");
        if (parameters.Count == 0) throw FisherKernelsException.Argument("score: the parameter set is empty");
        lm.Inputs(tokens);  // checks the token ids once for the whole batch
        // The sequence level alone runs one cotangent a pass (p̄'s): gradient buffers for a block would be allocated unused.
        if (!level.HasFlag(ScoreLevel.Token)) cotangents = 1;
        var scorer = new TapScorer(lm, parameters, epistemic, context.Backend);
        var variables = parameters.ToHashSet(StringComparer.Ordinal);
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        var ids = (NdArray<long>)(tokens.ElementType == ElementType.Int64 ? tokens : new NdArray<long>(tokens.Shape, Array.ConvertAll(((NdArray<int>)tokens).Data, v => (long)v)));
        NdArray<long>? checkedTargets = null;
        var passes = new Dictionary<ExecutionPlan, Backward>();  // built once a plan, as are their device forms
        bool causal = true;
        var sequences = new List<SequenceScore>();
        for (int b = 0; b < batch; b++)
        {
            var row = new NdArray<long>([1, seq], ids.Data[(b * seq)..((b + 1) * seq)]);
            var whole = Run(lm, context, row, variables, passes, scorer, cotangents)!;
            var logits = (NdArray<float>)whole.Plan.Get(lm.LogitsOutput);
            int vocab = logits.Shape[2];
            checkedTargets ??= targets is null ? Targets.NextToken(tokens) : Targets.Check(targets, tokens.Shape, vocab, "targets");

            // p_t and ∂p_t/∂z_t = p_t (onehot(y_t) − softmax(z_t)) of every targeted position.
            var probabilities = new float[vocab];
            var positions = new List<(int T, long Y, double P, float[] Cotangent)>();
            for (int t = 0; t < seq; t++)
            {
                long y = checkedTargets.Data[b * seq + t];
                if (y == Targets.Ignore) continue;
                Derivatives.Softmax(logits.Data.AsSpan(t * vocab, vocab), probabilities);
                double p = probabilities[y];
                var cotangent = new float[vocab];
                for (int k = 0; k < vocab; k++) cotangent[k] = (float)(-p * probabilities[k]);
                cotangent[y] += (float)p;
                positions.Add((t, y, p, cotangent));
            }
            var epistemics = new double[positions.Count];
            double sequenceEpistemic = double.NaN;
            if (!level.HasFlag(ScoreLevel.Token)) Array.Fill(epistemics, double.NaN);
            if (positions.Count > 0 && level.HasFlag(ScoreLevel.Sequence))
            {
                // ∇p̄ is the mean of the per-position gradients: one more backward pass with the mean cotangent.
                float scale = 1f / positions.Count;
                whole.Backward.Clear();
                var seed = whole.Backward.Gradient(lm.LogitsOutput);
                foreach (var (t, _, _, cotangent) in positions)
                    for (int k = 0; k < vocab; k++) seed.Data[t * vocab + k] = scale * cotangent[k];
                Reverse(whole, context, scorer, 1);
                sequenceEpistemic = scorer.Score(whole.Backward);
            }

            // The positions block by block, on the shortest prefix that holds each block; the scorer holds the taps of `taps`.
            var taps = whole;
            int done = level.HasFlag(ScoreLevel.Token) ? 0 : positions.Count;
            for (int k = 1; k <= PrefixBlocks && done < positions.Count; k++)
            {
                int length = k == PrefixBlocks || !causal ? seq : (int)(((long)k * seq + PrefixBlocks - 1) / PrefixBlocks);
                int end = done;
                while (end < positions.Count && positions[end].T < length) end++;
                if (end == done) continue;
                var pass = length < seq ? Run(lm, context, new NdArray<long>([1, length], row.Data[..length]), variables, passes, scorer, cotangents, logits) : whole;
                if (pass is null)
                {
                    causal = false;
                    (pass, end) = (whole, positions.Count);
                }
                if (pass != whole) taps = pass;
                else if (taps != whole) scorer.BeginSequence((taps = whole).Plan);
                // The block's positions in groups of the pass's cotangents, each group one reverse pass.
                for (int first = done; first < end; first += pass.Backward.Cotangents)
                {
                    int count = Math.Min(pass.Backward.Cotangents, end - first);
                    pass.Backward.Clear();
                    for (int c = 0; c < count; c++)
                    {
                        var (t, _, _, cotangent) = positions[first + c];
                        cotangent.CopyTo(pass.Backward.Gradient(lm.LogitsOutput, c).Data, t * vocab);
                    }
                    Reverse(pass, context, scorer, count);
                    for (int c = 0; c < count; c++)
                    {
                        epistemics[first + c] = scorer.Score(pass.Backward, c);
                        passLengths?.Add(pass.Plan.Info(lm.LogitsOutput).Shape[1]);
                    }
                }
                done = end;
            }
            var tokenScores = positions.Select((x, i) => new TokenScore(x.T, x.Y, x.P, epistemics[i])).ToList();
            sequences.Add(new SequenceScore(b, tokenScores, sequenceEpistemic));
        }
        return new ScoreReport(Path.GetFileName(lm.Model.Graph.Source), method, priorPrecision, sequences) { Level = level };
    }

    /// <summary>A keep-all plan and its reverse pass; on a device backend also their device forms (<see cref="DeviceBackward"/>).</summary>
    private sealed record Pass(ExecutionPlan Plan, Backward Backward, DeviceBackward? Device);

    /// <summary>
    /// The reverse pass of the first <paramref name="count"/> cotangents (their seeds filled). On a device (one cotangent a
    /// pass) the scorer's target gradients come back into the host pass's buffers, where <see cref="TapScorer"/> reads them.
    /// </summary>
    private static void Reverse(Pass pass, OpContext context, TapScorer scorer, int count)
    {
        if (pass.Device is null)
        {
            pass.Backward.Run(context, count: count);
            return;
        }
        pass.Device.Run();
        foreach (var name in scorer.TargetsIn(pass.Plan))
            if (pass.Backward.HasGradient(name)) pass.Device.DownloadInto(name);
    }

    /// <summary>
    /// Runs the keep-all plan of <paramref name="row"/> forward and hands its taps to the scorer. With
    /// <paramref name="wholeLogits"/> (the row is a prefix): null when the prefix cannot be planned or its logits
    /// differ from the whole sequence's first rows (the model is not causal).
    /// </summary>
    private static Pass? Run(LanguageModel lm, OpContext context, NdArray<long> row, HashSet<string> variables,
                             Dictionary<ExecutionPlan, Backward> passes, TapScorer scorer, int cotangents, NdArray<float>? wholeLogits = null)
    {
        var inputs = lm.Inputs(row);
        ExecutionPlan plan;
        try { plan = lm.Model.GetPlan(inputs, variables, keepAll: true); }
        catch (FisherKernelsException) when (wholeLogits is not null) { return null; }
        lm.CheckLogits(plan, row.Shape);
        var device = context.Backend as ITensorDevice;
        if (!passes.TryGetValue(plan, out var backward))
            passes[plan] = backward = new Backward(plan, [lm.LogitsOutput], scorer.TargetsIn(plan), device is null ? cotangents : 1, CotangentMemory / PrefixBlocks);
        var devicePass = device is null ? null : lm.Model.DevicePlanFor(plan, device, context.Backend.Name).BackwardFor(backward);
        DevicePlan.Run(plan, context, inputs, scorer.InputValuesIn(plan).Append(lm.LogitsOutput));
        if (wholeLogits is not null)
        {
            var logits = ((NdArray<float>)plan.Get(lm.LogitsOutput)).Data;
            var reference = wholeLogits.Data.AsSpan(0, logits.Length);
            float scale = TensorPrimitives.MaxMagnitude(reference);
            for (int i = 0; i < logits.Length; i++)
                if (!(MathF.Abs(logits[i] - reference[i]) <= PrefixTolerance * scale)) return null;
        }
        scorer.BeginSequence(plan);
        return new Pass(plan, backward, devicePass);
    }
}

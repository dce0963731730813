using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// Per-position and per-sequence scores (SPEC §4): p_t, aleatoric p(1−p), and the epistemic score of the parameter
/// gradient of p_t (and of p̄ per sequence) under an <see cref="EpistemicMetric"/>. One forward run per sequence
/// (batch-1 plan), then one backward pass per targeted position plus one for p̄, each reaching only the layer outputs
/// (<see cref="TapScorer"/> turns them into the score without forming weight gradients).
/// </summary>
public static class PositionScorer
{
    /// <summary>Scores every sequence of <paramref name="tokens"/> for the gradients of <paramref name="parameters"/>.</summary>
    public static ScoreReport Score(LanguageModel lm, OpContext context, NdArray tokens, NdArray? targets,
                                    IReadOnlyList<string> parameters, string method, double priorPrecision,
                                    EpistemicMetric epistemic)
    {
        if (parameters.Count == 0) throw FisherKernelsException.Argument("score: the parameter set is empty");
        lm.Inputs(tokens);  // checks the token ids once for the whole batch
        var scorer = new TapScorer(lm, parameters, epistemic, context.Backend);
        var variables = parameters.ToHashSet(StringComparer.Ordinal);
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        var ids = (NdArray<long>)(tokens.ElementType == ElementType.Int64 ? tokens : new NdArray<long>(tokens.Shape, Array.ConvertAll(((NdArray<int>)tokens).Data, v => (long)v)));
        NdArray<long>? checkedTargets = null;
        Backward? backward = null;
        var sequences = new List<SequenceScore>();
        for (int b = 0; b < batch; b++)
        {
            var row = new NdArray<long>([1, seq], ids.Data[(b * seq)..((b + 1) * seq)]);
            var inputs = lm.Inputs(row);
            var plan = lm.Model.GetPlan(Derivatives.Shapes(inputs), variables, keepAll: true);
            lm.CheckLogits(plan, row.Shape);
            if (backward?.Plan != plan) backward = new Backward(plan, [lm.LogitsOutput], scorer.Targets);
            plan.Run(context, inputs);
            scorer.BeginSequence(plan);
            var logits = (NdArray<float>)plan.Get(lm.LogitsOutput);
            int vocab = logits.Shape[2];
            checkedTargets ??= targets is null ? Targets.NextToken(tokens) : Targets.Check(targets, tokens.Shape, vocab, "targets");
            var seed = backward.Gradient(lm.LogitsOutput);
            var probabilities = new float[vocab];
            var tokenScores = new List<TokenScore>();
            var cotangents = new List<(int Position, float[] Cotangent)>();
            for (int t = 0; t < seq; t++)
            {
                long y = checkedTargets.Data[b * seq + t];
                if (y == Targets.Ignore) continue;
                Derivatives.Softmax(logits.Data.AsSpan(t * vocab, vocab), probabilities);
                double p = probabilities[y];
                // ∂p/∂z = p (onehot(y) − softmax(z)).
                var cotangent = new float[vocab];
                for (int k = 0; k < vocab; k++) cotangent[k] = (float)(-p * probabilities[k]);
                cotangent[y] += (float)p;
                backward.Clear();
                cotangent.CopyTo(seed.Data, t * vocab);
                backward.Run(context);
                tokenScores.Add(new TokenScore(t, y, p, scorer.Score(backward)));
                cotangents.Add((t, cotangent));
            }
            double sequenceEpistemic = double.NaN;
            if (tokenScores.Count > 0)
            {
                // ∇p̄ is the mean of the per-position gradients: one more backward pass with the mean cotangent.
                backward.Clear();
                float scale = 1f / tokenScores.Count;
                foreach (var (t, cotangent) in cotangents)
                    for (int k = 0; k < vocab; k++) seed.Data[t * vocab + k] = scale * cotangent[k];
                backward.Run(context);
                sequenceEpistemic = scorer.Score(backward);
            }
            sequences.Add(new SequenceScore(b, tokenScores, sequenceEpistemic));
        }
        return new ScoreReport(Path.GetFileName(lm.Model.Graph.Source), method, priorPrecision, sequences);
    }
}

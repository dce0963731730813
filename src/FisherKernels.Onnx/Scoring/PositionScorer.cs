using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// Per-position and per-sequence scores (SPEC §4): p_t, aleatoric p(1−p), and an epistemic score of
/// the parameter gradient of p_t (and of p̄ per sequence) given by the caller — ‖∇θ p‖² for the
/// isotropic method, a K-FAC quadratic form for the Laplace one. One backward pass per targeted
/// position plus one per sequence, each over a batch-1 plan of that sequence sharing one forward run.
/// </summary>
public static class PositionScorer
{
    /// <summary>
    /// Scores every sequence of <paramref name="tokens"/>. <paramref name="epistemic"/> receives the
    /// backward pass after it ran (gradients of the parameters available through it) and returns the
    /// epistemic score of that gradient.
    /// </summary>
    public static ScoreReport Score(LanguageModel lm, OpContext context, NdArray tokens, NdArray? targets,
                                    IReadOnlyList<string> parameters, string method, double priorPrecision,
                                    Func<Backward, double> epistemic)
    {
        if (parameters.Count == 0) throw FisherKernelsException.Argument("score: the parameter set is empty");
        lm.Inputs(tokens);  // checks the token ids once for the whole batch
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        var ids = (NdArray<long>)(tokens.ElementType == ElementType.Int64 ? tokens : new NdArray<long>(tokens.Shape, Array.ConvertAll(((NdArray<int>)tokens).Data, v => (long)v)));
        NdArray<long>? checkedTargets = null;
        var sequences = new List<SequenceScore>();
        for (int b = 0; b < batch; b++)
        {
            var row = new NdArray<long>([1, seq], ids.Data[(b * seq)..((b + 1) * seq)]);
            var (plan, backward, logits) = Derivatives.Prepare(lm, context, row, parameters);
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
                tokenScores.Add(new TokenScore(t, y, p, epistemic(backward)));
                cotangents.Add((t, cotangent));
            }
            double sequenceEpistemic = double.NaN;
            if (tokenScores.Count > 0)
            {
                backward.Clear();
                float scale = 1f / tokenScores.Count;
                foreach (var (t, cotangent) in cotangents)
                    for (int k = 0; k < vocab; k++) seed.Data[t * vocab + k] = scale * cotangent[k];
                backward.Run(context);
                sequenceEpistemic = epistemic(backward);
            }
            sequences.Add(new SequenceScore(b, tokenScores, sequenceEpistemic));
        }
        return new ScoreReport(Path.GetFileName(lm.Model.Graph.Source), method, priorPrecision, sequences);
    }

    /// <summary>Σ x² accumulated in double by blocks (float sums of a million squares would lose digits).</summary>
    private static double SumOfSquares(ReadOnlySpan<float> values)
    {
        const int Block = 1024;
        double sum = 0;
        for (int i = 0; i < values.Length; i += Block)
            sum += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(values.Slice(i, Math.Min(Block, values.Length - i)));
        return sum;
    }

    /// <summary>The isotropic estimator's epistemic score: ‖∇θ p‖² over the parameters (Σ = I).</summary>
    public static Func<Backward, double> SquaredGradientNorm(IReadOnlyList<string> parameters) => backward =>
    {
        double sum = 0;
        foreach (var name in parameters)
            if (backward.HasGradient(name))
                sum += SumOfSquares(backward.Gradient(name).Data);
        return sum;
    };
}

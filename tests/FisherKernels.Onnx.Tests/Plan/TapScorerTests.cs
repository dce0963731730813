using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// The tap scorer (scores from layer inputs and output gradients, no weight gradients) against the whole-gradient path:
/// a backward pass computing every parameter's gradient, then ‖∇θ‖² summed in float64, or the K-FAC quadratic form of
/// [∇W | ∇b] (that path is checked against the torch goldens). Causal and bidirectional models, zero rows that form a
/// prefix (causal), none (bidirectional) or holes (masked keys), rows above and below the layer widths, tied weights;
/// K-FAC layers rotated whole and in their curved G directions only (the fixtures' curvatures come from 24 positions).
/// </summary>
public class TapScorerTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    public enum Metric { Isotropic, IsotropicAllParameters, Kfac, KfacLowRank }

    [Theory]
    [InlineData("gpt2_tiny", Metric.Isotropic, 12, false)]          // causal; the tied output layer (wte) by its whole gradient
    [InlineData("gpt2_tiny", Metric.IsotropicAllParameters, 12, false)] // embeddings and normalization scales by their whole gradients
    [InlineData("gpt2_tiny", Metric.Kfac, 12, false)]
    [InlineData("gpt2_tiny", Metric.KfacLowRank, 12, false)]
    [InlineData("bert_tiny", Metric.Isotropic, 12, false)]          // bidirectional: no zero rows
    [InlineData("bert_tiny", Metric.Kfac, 12, false)]
    [InlineData("bert_tiny", Metric.Isotropic, 12, true)]           // masked keys: zero rows inside the sequence
    [InlineData("bert_tiny", Metric.Kfac, 12, true)]
    [InlineData("bert_tiny", Metric.KfacLowRank, 12, true)]
    [InlineData("llama_tiny", Metric.Isotropic, 32, false)]         // 32 rows: X itself for the 32-wide layers, the Gram for the 64-wide
    [InlineData("llama_tiny", Metric.Kfac, 32, false)]
    public void MatchesTheWholeGradientPath(string model, Metric metric, int seq, bool holes)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var random = new Random(seq + (int)metric);
        var row = new NdArray<long>(1, seq);
        for (int i = 0; i < seq; i++) row.Data[i] = random.Next(64);
        Dictionary<string, NdArray>? given = null;
        if (holes)
        {
            var mask = new NdArray<long>(1, seq);
            for (int i = 0; i < seq; i++) mask.Data[i] = i % 4 == 2 ? 0 : 1;
            given = new() { ["attention_mask"] = mask };
        }
        var parameters = metric == Metric.IsotropicAllParameters ? LayerDiscovery.AllParameters(lm.Model.Graph) : LayerDiscovery.DefaultParameters(lm.Model.Layers);
        EpistemicMetric epistemic = metric switch
        {
            Metric.Kfac => EpistemicMetric.Kfac(Posterior(lm, model, memoryBudget: 1L << 30)),
            Metric.KfacLowRank => EpistemicMetric.Kfac(Posterior(lm, model, memoryBudget: 20000)),
            _ => EpistemicMetric.SquaredGradientNorm,
        };
        if (metric == Metric.KfacLowRank) Assert.Contains(epistemic.Posterior!.Layers, l => l.IsLowRank);
        if (metric == Metric.KfacLowRank) Assert.Contains(epistemic.Posterior!.Layers, l => !l.IsLowRank);

        var inputs = lm.Inputs(row, given);
        var plan = lm.Model.GetPlan(Derivatives.Shapes(inputs), parameters.ToHashSet(), keepAll: true);
        var scorer = new TapScorer(lm, parameters, epistemic, Context.Backend);
        var taps = new Backward(plan, [lm.LogitsOutput], scorer.TargetsIn(plan));
        var whole = new Backward(plan, [lm.LogitsOutput]);
        plan.Run(Context, inputs);
        scorer.BeginSequence(plan);

        int vocab = plan.Info(lm.LogitsOutput).Shape[2];
        // Cotangents at single positions (first, middle, last, a masked one) and at every position at once.
        foreach (int position in new[] { 0, seq / 2, seq - 2, seq - 1, -1 })
        {
            var seed = new float[seq * vocab];
            for (int i = 0; i < seed.Length; i++)
                if (position < 0 || i / vocab == position) seed[i] = (float)(random.NextDouble() - 0.5);
            double expected = Whole(lm, parameters, epistemic, whole, seed);
            taps.Clear();
            seed.CopyTo(taps.Gradient(lm.LogitsOutput).Data, 0);
            taps.Run(Context);
            double actual = scorer.Score(taps);
            Assert.True(expected > 0, $"position {position}: the reference score is {expected}");
            Assert.True(Math.Abs(actual - expected) <= 1e-4 * expected, $"position {position}: {actual} vs {expected}");
        }
    }

    private static double Whole(LanguageModel lm, IReadOnlyList<string> parameters, EpistemicMetric epistemic, Backward whole, float[] seed)
    {
        whole.Clear();
        seed.CopyTo(whole.Gradient(lm.LogitsOutput).Data, 0);
        whole.Run(Context);
        if (epistemic.Posterior is { } posterior) return KfacScoring.GradientQuadratic(lm, posterior, whole);
        double sum = 0;
        foreach (string p in parameters)
            if (whole.HasGradient(p))
                foreach (float g in whole.Gradient(p).Data) sum += (double)g * g;
        return sum;
    }

    private static KfacPosterior Posterior(LanguageModel lm, string model, long memoryBudget)
    {
        var curvature = KfacCurvature.Load(Fixtures.Path(model + ".kfac.safetensors"), KfacScoring.Shapes(lm.Model.Layers));
        return new KfacPosterior(curvature, Context.Backend, new PosteriorOptions { PriorPrecision = 0.01, Rank = 8, MemoryBudgetBytes = memoryBudget });
    }
}

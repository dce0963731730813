using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Jobs;

/// <summary>How <c>calibrate</c> chooses τ (SPEC §4 <c>--prior-precision</c>).</summary>
public enum PriorPrecisionSearch
{
    /// <summary>τ as given (or as stored in the curvature, <see cref="PosteriorOptions.UseStoredPriorPrecision"/>).</summary>
    None,
    /// <summary>One τ maximizing the marginal likelihood of the dense layers (<c>auto</c>).</summary>
    Auto,
    /// <summary>Each dense layer's own τ; layers with a low-rank side take the <see cref="Auto"/> τ (<c>auto-layer</c>).</summary>
    AutoLayer,
}

/// <summary>What calibrate found: β's summary, the τ it used (and stored), and the log-evidence at τ and at 1 when τ was searched.</summary>
public sealed record CalibrateResult(CalibrationSummary Summary, StoredPriorPrecision PriorPrecision, (double AtOptimum, double AtOne, int Layers)? Evidence);

/// <summary>
/// Calibration (README "calibrate"): optionally chooses τ by marginal likelihood, scores the model's top-1 prediction at
/// each targeted position with K-FAC, fits β of the confidence <c>1/(1+β·u)</c> (u = <see cref="Calibration.RelativeUncertainty"/>)
/// on whether the prediction was the target, and stores β and τ in the curvature (<c>calibration_beta</c>, <c>prior_precision</c>).
/// </summary>
public static class CalibrateService
{
    /// <summary>
    /// Calibrates on <paramref name="tokens"/> (targets: <paramref name="targets"/>, null for the next token) and writes the
    /// curvature with β and τ to <paramref name="outPath"/>; the eigenvalue lines go to <paramref name="log"/>.
    /// </summary>
    public static CalibrateResult Calibrate(LanguageModel lm, OpContext context, NdArray tokens, string tokensName, NdArray? targets, string targetsName,
                                            string curvaturePath, PosteriorOptions options, PriorPrecisionSearch search, string outPath, TextWriter log,
                                            LayerSelection? selection = null)
        => Calibrate(lm, context, [(tokens, targets, tokensName, targetsName)], curvaturePath, options, search, outPath, log, selection);

    /// <summary>
    /// As above over several batches of their own lengths (text input's windows, <c>--text</c>): every targeted position of
    /// every batch counts once.
    /// </summary>
    public static CalibrateResult Calibrate(LanguageModel lm, OpContext context, IReadOnlyList<(NdArray Tokens, NdArray? Targets, string TokensName, string TargetsName)> batches,
                                            string curvaturePath, PosteriorOptions options, PriorPrecisionSearch search, string outPath, TextWriter log,
                                            LayerSelection? selection = null)
    {
        KfacCurvature curvature = KfacScoring.LoadCurvature(lm, curvaturePath, selection);
        (double, double, int)? evidence = null;
        if (search == PriorPrecisionSearch.None) options = options.WithStored(curvature.PriorPrecision);
        else
        {
            IReadOnlyList<MarginalLayer> terms = MarginalTerms(lm, curvature, context.Backend);
            StoredPriorPrecision prior = SearchPriorPrecision(curvature, terms, search);
            options = options with { PriorPrecision = prior.Shared, LayerPriorPrecisions = prior.PerLayer, UseStoredPriorPrecision = false };
            evidence = (terms.Sum(t => t.LogEvidence(options.PriorPrecisionOf(t.Layer))), MarginalLikelihood.LogEvidence(terms, 1.0), terms.Count);
        }
        KfacPosterior posterior = KfacScoring.Posterior(curvature, options, context.Backend, log);
        var p = new List<double>();
        var epistemic = new List<double>();
        var correct = new List<bool>();
        foreach (var (tokens, targets, tokensName, targetsName) in batches)
        {
            var logits = lm.Forward(context, tokens, null, tokensName);
            int vocab = logits.Shape[2];
            var checkedTargets = targets is null ? Targets.NextToken(tokens) : Targets.Check(targets, tokens.Shape, vocab, targetsName);

            // Score what the model predicts (its top-1 token): the confidence must be computable without knowing the truth;
            // the true targets only say which predictions were right.
            int seq = tokens.Shape[1];
            var predicted = Targets.Predicted(logits, checkedTargets);
            var report = PositionScorer.Score(lm, context, tokens, predicted, LayerDiscovery.DefaultParameters(KfacScoring.Layers(lm, posterior)), posterior.MethodName,
                                              posterior.PriorPrecision, KfacScoring.Epistemic(lm, posterior));
            foreach (var sequence in report.Sequences)
                foreach (var token in sequence.Tokens)
                {
                    p.Add(token.P);
                    epistemic.Add(token.Epistemic);
                    correct.Add(token.Target == checkedTargets.Data[sequence.Index * seq + token.Position]);
                }
        }
        if (correct.Count == 0) throw FisherKernelsException.Argument($"calibrate: '{batches[0].TokensName}' has no targeted positions");
        CalibrationSummary summary = CalibrationSummary.Fit(p.ToArray(), epistemic.ToArray(), correct.ToArray());
        var stored = new StoredPriorPrecision(options.PriorPrecision, options.LayerPriorPrecisions);
        curvature.WithCalibrationBeta(summary.Beta).WithPriorPrecision(stored).Save(outPath);
        return new CalibrateResult(summary, stored, evidence);
    }

    /// <summary>The marginal likelihood's terms of every layer whose factor sides are dense: its eigenvalues and <c>‖[W | b]‖²</c> from the model.</summary>
    public static IReadOnlyList<MarginalLayer> MarginalTerms(LanguageModel lm, KfacCurvature curvature, IComputeBackend backend)
    {
        var terms = new List<MarginalLayer>();
        foreach (Layer layer in lm.Model.Layers)
        {
            if (!curvature.TryGetLayer(layer.Id, out KroneckerBlock block) || !block.IsDense) continue; // a layer-selected curvature: its layers only
            double norm = SquaredNorm(lm, layer.Id) + (layer.Bias is null ? 0 : SquaredNorm(lm, layer.Bias));
            terms.Add(MarginalLayer.Of(block, backend, norm));
        }
        return terms;
    }

    /// <summary>τ by marginal likelihood: one for all (auto), or per dense layer with the shared one for low-rank layers (auto-layer).</summary>
    static StoredPriorPrecision SearchPriorPrecision(KfacCurvature curvature, IReadOnlyList<MarginalLayer> terms, PriorPrecisionSearch search)
    {
        if (search == PriorPrecisionSearch.Auto) return new StoredPriorPrecision(MarginalLikelihood.Optimize(terms));
        var perLayer = new Dictionary<string, double>(MarginalLikelihood.OptimizePerLayer(terms), StringComparer.Ordinal);
        if (curvature.Layers.Any(b => !b.IsDense))
        {
            double shared = MarginalLikelihood.Optimize(terms);
            foreach (KroneckerBlock b in curvature.Layers.Where(b => !b.IsDense)) perLayer[b.Layer] = shared;
        }
        return StoredPriorPrecision.ByLayer(perLayer);
    }

    static double SquaredNorm(LanguageModel lm, string initializer)
    {
        var values = (NdArray<float>)lm.Model.Graph.Initializers[initializer];
        double sum = 0;
        foreach (float v in values.Data) sum += (double)v * v;
        return sum;
    }
}

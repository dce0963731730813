using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Jobs;

/// <summary>
/// Calibration (README "calibrate"): scores the model's top-1 prediction at each targeted position with K-FAC, fits β of
/// the confidence <c>1/(1+β·u)</c> (u = <see cref="Calibration.RelativeUncertainty"/>) on whether the prediction was the
/// target, and stores β in the curvature as <c>calibration_beta</c>.
/// </summary>
public static class CalibrateService
{
    /// <summary>
    /// Calibrates on <paramref name="tokens"/> (targets: <paramref name="targets"/>, null for the next token) and writes the
    /// curvature with β to <paramref name="outPath"/>; the eigenvalue lines go to <paramref name="log"/>.
    /// </summary>
    public static CalibrationSummary Calibrate(LanguageModel lm, OpContext context, NdArray tokens, string tokensName, NdArray? targets, string targetsName,
                                               string curvaturePath, PosteriorOptions options, string outPath, TextWriter log)
    {
        var (curvature, posterior) = KfacScoring.LoadPosterior(lm, curvaturePath, options, context.Backend, log);
        var logits = lm.Forward(context, tokens, null, tokensName);
        int vocab = logits.Shape[2];
        var checkedTargets = targets is null ? Targets.NextToken(tokens) : Targets.Check(targets, tokens.Shape, vocab, targetsName);

        // Score what the model predicts (its top-1 token): the confidence must be computable without knowing the truth;
        // the true targets only say which predictions were right.
        int seq = tokens.Shape[1];
        var predicted = Targets.Predicted(logits, checkedTargets);
        var report = PositionScorer.Score(lm, context, tokens, predicted, LayerDiscovery.DefaultParameters(lm.Model.Layers), ScoreMethod.Kfac.Name(),
                                          posterior.PriorPrecision, KfacScoring.Epistemic(lm, posterior));
        var p = new List<double>();
        var epistemic = new List<double>();
        var correct = new List<bool>();
        foreach (var sequence in report.Sequences)
            foreach (var token in sequence.Tokens)
            {
                p.Add(token.P);
                epistemic.Add(token.Epistemic);
                correct.Add(token.Target == checkedTargets.Data[sequence.Index * seq + token.Position]);
            }
        if (correct.Count == 0) throw FisherKernelsException.Argument($"calibrate: '{tokensName}' has no targeted positions");
        CalibrationSummary summary = CalibrationSummary.Fit(p.ToArray(), epistemic.ToArray(), correct.ToArray());
        curvature.WithCalibrationBeta(summary.Beta).Save(outPath);
        return summary;
    }
}

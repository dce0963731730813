using System.Globalization;
using FisherKernels.Onnx;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Demo;

/// <summary>How well one estimator's uncertainty predicts next-token errors, and the calibration it buys.</summary>
internal sealed record ErrorAnalysis(int Positions, int Errors, double Beta, double AurocEpistemic, double AurocAleatoric,
                                     double AurocCombined, double AurocLogP, double EceBefore, double EceAfter,
                                     ReliabilityBin[] BinsBefore, ReliabilityBin[] BinsAfter)
{
    public IEnumerable<string> Lines(string estimator)
    {
        yield return DemoReport.Line("AUROC", "next-token errors", estimator, "epistemic", AurocEpistemic);
        yield return DemoReport.Line("AUROC", "next-token errors", estimator, "aleatoric", AurocAleatoric);
        yield return DemoReport.Line("AUROC", "next-token errors", estimator, "combined", AurocCombined);
        yield return DemoReport.Line("AUROC", "next-token errors", estimator, DemoReport.LogPScore, AurocLogP);
        yield return string.Create(CultureInfo.InvariantCulture,
            $"ECE    {"next-token confidence",-28} {estimator,-10} {"combined",-10} before {EceBefore:F4} (model's top-1 p), after {EceAfter:F4} (1/(1+β·u), β = {Beta:G4})");
    }
}

/// <summary>What the demo prints: the per-token table and the summary lines, each naming estimator and score.</summary>
internal static class DemoReport
{
    /// <summary>A byte as it reads in a table or on a plot axis: printable ASCII as itself, the rest escaped.</summary>
    public static string Show(long token) => token switch
    {
        (byte)' ' => "·",
        (byte)'\n' => "\\n",
        (byte)'\t' => "\\t",
        >= 33 and < 127 => ((char)token).ToString(),
        _ => $"\\x{token:x2}",
    };

    /// <summary>
    /// The epistemic score of log p rather than p, by the delta method: Var[log p] ≈ Var[p] / p² (per sequence
    /// with p̄). SPEC §4's epistemic score of p shrinks with p² (∇p = p·∇log p), so on text the model finds
    /// improbable it is small however unsure the parameters are; divided by p² it is not.
    /// </summary>
    public const string LogPScore = "epist/p²";

    public static string Line(string figure, string task, string estimator, string score, double value) =>
        string.Create(CultureInfo.InvariantCulture, $"{figure,-6} {task,-28} {estimator,-10} {score,-10} {value:F3}");

    /// <summary>
    /// One row per scored position of sequence 0: the bytes before it, the byte to predict (the target), its
    /// probability, the aleatoric score and each estimator's epistemic score.
    /// </summary>
    public static void PrintTokenTable(TextWriter stdout, string title, NdArray<long> tokens, IReadOnlyList<ScoreReport> estimators)
    {
        var c = CultureInfo.InvariantCulture;
        int seq = tokens.Shape[1];
        stdout.WriteLine(title);
        stdout.WriteLine($"{"pos",4}  {"context",16}  {"next",-4}  {"p",6}  {"aleatoric",9}" +
                         string.Concat(estimators.Select(e => $"  {"epistemic " + e.Method,20}")));
        var rows = estimators[0].Sequences[0].Tokens;
        for (int i = 0; i < rows.Count; i++)
        {
            var token = rows[i];
            int from = Math.Max(0, token.Position + 1 - 16);
            string before = string.Concat(tokens.Data.AsSpan(from, token.Position + 1 - from).ToArray().Select(Show));
            if (before.Length > 16) before = before[^16..];
            string line = string.Create(c, $"{token.Position,4}  {before,16}  {Show(token.Target),-4}  {token.P,6:F3}  {token.Aleatoric,9:F4}");
            foreach (var e in estimators) line += string.Create(c, $"  {e.Sequences[0].Tokens[i].Epistemic,20:E3}");
            stdout.WriteLine(line);
        }
    }

    /// <summary>
    /// AUROC lines for telling the in-distribution set (the first) from all the others by a per-sequence
    /// score (higher = more out-of-distribution), then the epistemic AUROC against each other set alone.
    /// </summary>
    public static IEnumerable<string> SequenceAurocLines(IReadOnlyList<TextSet> sets, Func<string, ScoreReport> scoresOf, string estimator)
    {
        var scores = new List<(double Epistemic, double Aleatoric, double LogP, bool Ood, string Set)>();
        foreach (var set in sets)
            foreach (var s in scoresOf(set.Name).Sequences)
                scores.Add((s.Epistemic, s.Aleatoric, s.Epistemic / (s.MeanP * s.MeanP), !set.InDistribution, set.Name));
        bool[] ood = scores.Select(s => s.Ood).ToArray();
        yield return Line("AUROC", "in vs out-of-distribution", estimator, "epistemic", Calibration.Auroc(scores.Select(s => s.Epistemic).ToArray(), ood));
        yield return Line("AUROC", "in vs out-of-distribution", estimator, "aleatoric", Calibration.Auroc(scores.Select(s => s.Aleatoric).ToArray(), ood));
        yield return Line("AUROC", "in vs out-of-distribution", estimator, "combined", Calibration.Auroc(scores.Select(s => s.Epistemic + s.Aleatoric).ToArray(), ood));
        yield return Line("AUROC", "in vs out-of-distribution", estimator, LogPScore, Calibration.Auroc(scores.Select(s => s.LogP).ToArray(), ood));
        foreach (var set in sets.Where(s => !s.InDistribution))
        {
            var pair = scores.Where(s => !s.Ood || s.Set == set.Name).ToArray();
            bool[] labels = pair.Select(s => s.Ood).ToArray();
            yield return Line("AUROC", $"  in vs {set.Name}", estimator, "epistemic", Calibration.Auroc(pair.Select(s => s.Epistemic).ToArray(), labels));
            yield return Line("AUROC", $"  in vs {set.Name}", estimator, LogPScore, Calibration.Auroc(pair.Select(s => s.LogP).ToArray(), labels));
        }
    }

    /// <summary>
    /// Next-token errors from scores of the predicted tokens: error = predicted ≠ <paramref name="trueNext"/>.
    /// β of <c>1/(1+β·u)</c> (u = epistemic + aleatoric) is fitted on even sequences and the ECE measured on
    /// odd ones, so calibration is judged on positions it did not see; AUROCs are over all positions.
    /// </summary>
    public static ErrorAnalysis ErrorAnalysis(ScoreReport predictions, NdArray<long> trueNext, double[] modelConfidence)
    {
        int seq = trueNext.Shape[1];
        var epistemic = new List<double>();
        var aleatoric = new List<double>();
        var logP = new List<double>();
        var confidence = new List<double>();
        var correct = new List<bool>();
        var even = new List<bool>();
        foreach (var sequence in predictions.Sequences)
            foreach (var token in sequence.Tokens)
            {
                int row = sequence.Index * seq + token.Position;
                if (trueNext.Data[row] == Targets.Ignore) continue;
                epistemic.Add(token.Epistemic);
                aleatoric.Add(token.Aleatoric);
                logP.Add(token.Epistemic / (token.P * token.P));
                confidence.Add(modelConfidence[row]);
                correct.Add(token.Target == trueNext.Data[row]);
                even.Add(sequence.Index % 2 == 0);
            }
        double[] combined = epistemic.Select((e, i) => e + aleatoric[i]).ToArray();
        bool[] errors = correct.Select(c => !c).ToArray();
        double[] Where(IEnumerable<double> values, bool isEven) => values.Where((_, i) => even[i] == isEven).ToArray();
        bool[] correctOdd = correct.Where((_, i) => !even[i]).ToArray();
        double beta = Calibration.FitBeta(Where(combined, true), correct.Where((_, i) => even[i]).ToArray());
        double[] before = Where(confidence, false);
        double[] after = Calibration.Confidences(beta, Where(combined, false));
        return new ErrorAnalysis(correct.Count, errors.Count(e => e), beta,
            Calibration.Auroc(epistemic.ToArray(), errors), Calibration.Auroc(aleatoric.ToArray(), errors), Calibration.Auroc(combined, errors), Calibration.Auroc(logP.ToArray(), errors),
            Calibration.ExpectedCalibrationError(before, correctOdd), Calibration.ExpectedCalibrationError(after, correctOdd),
            DemoMetrics.Reliability(before, correctOdd), DemoMetrics.Reliability(after, correctOdd));
    }
}

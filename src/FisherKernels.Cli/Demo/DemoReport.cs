using System.Globalization;
using FisherKernels.Onnx;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Demo;

/// <summary>How well one estimator's uncertainty predicts next-token errors, and the calibration it buys.</summary>
/// <para>
/// Selective prediction ranks every prediction by its combined uncertainty of log p (what a caller abstains on): <see cref="Aurc"/>,
/// and LM-Polygraph's PRR over the whole rejection range (<see cref="Prr"/>) and up to 50 % (<see cref="Prr50"/>), loss 1 for an
/// error. <see cref="NllAfter"/> is the negative log-likelihood of right/wrong under the calibrated confidence on the odd windows,
/// as <see cref="EceAfter"/>.
/// </para>
internal sealed record ErrorAnalysis(int Positions, int Errors, double Beta, ScaleAurocs OfLogP, ScaleAurocs OfP,
                                     double EceBefore, double EceAfter, ReliabilityBin[] BinsBefore, ReliabilityBin[] BinsAfter,
                                     double NllAfter, double Aurc, double Prr, double Prr50)
{
    public IEnumerable<string> Lines(string estimator)
    {
        foreach (string line in OfLogP.Lines("next-token errors", estimator, DemoReport.LogScale)) yield return line;
        foreach (string line in OfP.Lines("next-token errors", estimator, DemoReport.PScale)) yield return line;
        yield return string.Create(CultureInfo.InvariantCulture,
            $"ECE    {"next-token confidence",-28} {estimator,-10} {"combined " + DemoReport.LogScale,-22} before {EceBefore:F4} (model's top-1 p), after {EceAfter:F4} (1/(1+β·u), β = {Beta:G4})");
    }
}

/// <summary>The AUROC of the epistemic, aleatoric and combined scores on one scale, for one task.</summary>
internal sealed record ScaleAurocs(double Epistemic, double Aleatoric, double Combined)
{
    /// <summary>AUROCs of per-item scores (e, a, u) for <paramref name="positive"/>.</summary>
    public static ScaleAurocs Of(IReadOnlyList<(double Epistemic, double Aleatoric, double Combined)> scores, bool[] positive) => new(
        Calibration.Auroc(scores.Select(s => s.Epistemic).ToArray(), positive),
        Calibration.Auroc(scores.Select(s => s.Aleatoric).ToArray(), positive),
        Calibration.Auroc(scores.Select(s => s.Combined).ToArray(), positive));

    public IEnumerable<string> Lines(string task, string estimator, string scale)
    {
        yield return DemoReport.Line("AUROC", task, estimator, "epistemic " + scale, Epistemic);
        yield return DemoReport.Line("AUROC", task, estimator, "aleatoric " + scale, Aleatoric);
        yield return DemoReport.Line("AUROC", task, estimator, "combined " + scale, Combined);
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
    /// Scores of log p rather than p, by the delta method: Var[log p] ≈ Var[p]/p², so each SPEC §4 score divided by p²
    /// (epistemic/p², aleatoric/p² = (1−p)/p, combined = <see cref="Calibration.RelativeUncertainty"/>), and per sequence
    /// the mean over its tokens. SPEC §4's scores of p shrink with p² (∇p = p·∇log p), so on text the model finds
    /// improbable they are small however unsure the parameters are; on the log scale they are not.
    /// </summary>
    public const string LogScale = "of log p";

    /// <summary>SPEC §4's scores of p_t (per sequence: of p̄, and the mean aleatoric).</summary>
    public const string PScale = "of p";

    /// <summary>The per-token plot's score: the epistemic score of log p.</summary>
    public const string LogPScore = "epistemic " + LogScale;

    public static string Line(string figure, string task, string estimator, string score, double value) =>
        string.Create(CultureInfo.InvariantCulture, $"{figure,-6} {task,-28} {estimator,-10} {score,-22} {value:F3}");

    /// <summary>One token's (epistemic, aleatoric, combined) scores of log p.</summary>
    public static (double Epistemic, double Aleatoric, double Combined) OfLogP(TokenScore t) =>
        (t.Epistemic / (t.P * t.P), (1 - t.P) / t.P, Calibration.RelativeUncertainty(t.P, t.Epistemic));

    /// <summary>Rows of the per-token table: the last scored positions.</summary>
    public const int TableRows = 16;

    /// <summary>
    /// One row per scored position of sequence 0 (the last <see cref="TableRows"/>): the bytes before it, the byte to predict (the target), its
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
        for (int i = Math.Max(0, rows.Count - TableRows); i < rows.Count; i++)
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
    /// AUROC lines for telling the in-distribution set (the first) from all the others by per-sequence scores
    /// (higher = more out-of-distribution): of log p (the mean over the sequence's tokens) and SPEC §4's of p̄;
    /// then the epistemic AUROCs against each other set alone.
    /// </summary>
    /// <summary>
    /// The summary table: one row per estimator, everything on the log-p scale. OOD: the AUROC of the sequences' mean epistemic
    /// score of log p for telling the in-distribution set from the others; errors: the AUROC of the predictions' epistemic and
    /// combined scores of log p for next-token errors, ECE and NLL of the calibrated confidence (odd windows), AURC and PRR of
    /// selective prediction by the combined score.
    /// </summary>
    public static IEnumerable<string> SummaryLines(IReadOnlyList<(string Estimator, double? PriorPrecision, double OodAuroc, ErrorAnalysis Errors)> rows)
    {
        var c = CultureInfo.InvariantCulture;
        yield return $"{"estimator",-10} {"τ",9}  {"OOD AUROC",9}  {"err AUROC",9}  {"err AUROC",9}  {"ECE",6}  {"NLL",6}  {"AURC",6}  {"PRR",6}  {"PRR≤50%",7}";
        yield return $"{"",-10} {"",9}  {"epistemic",9}  {"epistemic",9}  {"combined",9}  {"",6}  {"",6}  {"",6}  {"",6}  {"",7}";
        foreach (var (name, tau, ood, e) in rows)
            yield return string.Create(c, $"{name,-10} {(tau is double t ? t.ToString("G4", c) : "-"),9}  {ood,9:F3}  {e.OfLogP.Epistemic,9:F3}  {e.OfLogP.Combined,9:F3}  {e.EceAfter,6:F4}  {e.NllAfter,6:F4}  {e.Aurc,6:F4}  {e.Prr,6:F3}  {e.Prr50,7:F3}");
    }

    /// <summary>AUROCs of the per-sequence scores of log p (the mean over each sequence's tokens) for telling the first set from the others.</summary>
    public static ScaleAurocs OutOfDistributionAurocs(IReadOnlyList<TextSet> sets, Func<string, ScoreReport> scoresOf)
    {
        var sequences = SequenceScores(sets, scoresOf);
        return ScaleAurocs.Of(sequences.Select(s => s.LogScale).ToArray(), sequences.Select(s => s.Set != sets[0].Name).ToArray());
    }

    /// <summary>Each sequence of every set: its scores of log p (the means over its tokens), SPEC §4's of p̄, and its set.</summary>
    static List<((double, double, double) LogScale, (double, double, double) PScale, string Set)> SequenceScores(IReadOnlyList<TextSet> sets, Func<string, ScoreReport> scoresOf)
    {
        var result = new List<((double, double, double), (double, double, double), string)>();
        foreach (var set in sets)
            foreach (var s in scoresOf(set.Name).Sequences)
            {
                var tokens = s.Tokens.Select(OfLogP).ToArray();
                result.Add(((tokens.Average(t => t.Epistemic), tokens.Average(t => t.Aleatoric), tokens.Average(t => t.Combined)),
                            (s.Epistemic, s.Aleatoric, s.Epistemic + s.Aleatoric), set.Name));
            }
        return result;
    }

    public static IEnumerable<string> SequenceAurocLines(IReadOnlyList<TextSet> sets, Func<string, ScoreReport> scoresOf, string estimator)
    {
        var sequences = SequenceScores(sets, scoresOf);
        var logScale = sequences.Select(s => s.LogScale).ToList();
        var pScale = sequences.Select(s => s.PScale).ToList();
        var setOf = sequences.Select(s => s.Set).ToList();
        const string task = "in vs out-of-distribution";
        bool[] ood = setOf.Select(name => name != sets[0].Name).ToArray();
        foreach (string line in ScaleAurocs.Of(logScale, ood).Lines(task, estimator, LogScale)) yield return line;
        foreach (string line in ScaleAurocs.Of(pScale, ood).Lines(task, estimator, PScale)) yield return line;
        foreach (var set in sets.Skip(1))
        {
            int[] pair = Enumerable.Range(0, ood.Length).Where(i => !ood[i] || setOf[i] == set.Name).ToArray();
            bool[] labels = pair.Select(i => ood[i]).ToArray();
            yield return Line("AUROC", $"  in vs {set.Name}", estimator, "epistemic " + LogScale, Calibration.Auroc(pair.Select(i => logScale[i].Item1).ToArray(), labels));
            yield return Line("AUROC", $"  in vs {set.Name}", estimator, "epistemic " + PScale, Calibration.Auroc(pair.Select(i => pScale[i].Item1).ToArray(), labels));
        }
    }

    /// <summary>
    /// Next-token errors from scores of the predicted tokens (their p is the model's top-1 confidence): error = predicted ≠
    /// <paramref name="trueNext"/>. β of <c>1/(1+β·u)</c> (u = <see cref="Calibration.RelativeUncertainty"/>) is fitted on
    /// even sequences and the ECE measured on odd ones, so calibration is judged on positions it did not see; AUROCs are over
    /// all positions.
    /// </summary>
    public static ErrorAnalysis ErrorAnalysis(ScoreReport predictions, NdArray<long> trueNext)
    {
        int seq = trueNext.Shape[1];
        var tokens = new List<TokenScore>();
        var correct = new List<bool>();
        var even = new List<bool>();
        foreach (var sequence in predictions.Sequences)
            foreach (var token in sequence.Tokens)
            {
                long truth = trueNext.Data[sequence.Index * seq + token.Position];
                if (truth == Targets.Ignore) continue;
                tokens.Add(token);
                correct.Add(token.Target == truth);
                even.Add(sequence.Index % 2 == 0);
            }
        bool[] errors = correct.Select(c => !c).ToArray();
        var logScale = tokens.Select(OfLogP).ToArray();
        var pScale = tokens.Select(t => (t.Epistemic, t.Aleatoric, t.Epistemic + t.Aleatoric)).ToArray();
        double[] Where(IEnumerable<double> values, bool isEven) => values.Where((_, i) => even[i] == isEven).ToArray();
        bool[] correctOdd = correct.Where((_, i) => !even[i]).ToArray();
        double beta = Calibration.FitBeta(Where(logScale.Select(u => u.Combined), true), correct.Where((_, i) => even[i]).ToArray());
        double[] before = Where(tokens.Select(t => t.P), false);
        double[] after = Calibration.Confidences(beta, Where(logScale.Select(u => u.Combined), false));
        double[] combined = logScale.Select(u => u.Combined).ToArray(), loss = errors.Select(e => e ? 1.0 : 0.0).ToArray();
        return new ErrorAnalysis(correct.Count, errors.Count(e => e), beta, ScaleAurocs.Of(logScale, errors), ScaleAurocs.Of(pScale, errors),
            Calibration.ExpectedCalibrationError(before, correctOdd), Calibration.ExpectedCalibrationError(after, correctOdd),
            DemoMetrics.Reliability(before, correctOdd), DemoMetrics.Reliability(after, correctOdd),
            Calibration.NegativeLogLikelihood(after, correctOdd), SelectivePrediction.Aurc(combined, loss),
            SelectivePrediction.Prr(combined, loss), SelectivePrediction.Prr(combined, loss, 0.5));
    }
}

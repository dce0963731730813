namespace FisherKernels.Uncertainty;

/// <summary>
/// How well uncertainty scores predict next-token errors, and the calibrated confidence <c>c = 1/(1+β·u)</c>
/// (the probability that a prediction is right given its uncertainty u), with β fitted on held-out data.
/// </summary>
public static class Calibration
{
    /// <summary>Confidences are clipped to [ε, 1−ε] in the NLL so that one confident mistake is costly but finite.</summary>
    public const double Epsilon = 1e-12;

    /// <summary>
    /// Area under the ROC curve of <paramref name="scores"/> for telling positives from negatives: the probability
    /// that a random positive scores higher than a random negative, ties counting one half (Mann–Whitney).
    /// NaN when either class is empty.
    /// </summary>
    public static double Auroc(ReadOnlySpan<double> scores, ReadOnlySpan<bool> positive)
    {
        Check(scores.Length, positive.Length, "AUROC");
        int n = scores.Length;
        int[] order = new int[n];
        for (int i = 0; i < n; i++) order[i] = i;
        double[] s = scores.ToArray();
        foreach (double v in s) if (double.IsNaN(v)) throw FisherKernelsException.Argument("AUROC: a score is NaN");
        Array.Sort(order, (x, y) => s[x].CompareTo(s[y]));
        // Sum of the (tie-averaged, 1-based) ranks of the positives.
        double rankSum = 0;
        long positives = 0;
        for (int i = 0; i < n;)
        {
            int j = i;
            while (j + 1 < n && s[order[j + 1]] == s[order[i]]) j++;
            double rank = (i + j) / 2.0 + 1;
            for (int k = i; k <= j; k++) if (positive[order[k]]) { rankSum += rank; positives++; }
            i = j + 1;
        }
        long negatives = n - positives;
        if (positives == 0 || negatives == 0) return double.NaN;
        return (rankSum - positives * (positives + 1) / 2.0) / ((double)positives * negatives);
    }

    /// <summary>Expected calibration error over <paramref name="bins"/> equal-width confidence bins: Σ_b (n_b/N)·|accuracy_b − mean confidence_b|.</summary>
    public static double ExpectedCalibrationError(ReadOnlySpan<double> confidence, ReadOnlySpan<bool> correct, int bins = 10)
    {
        Check(confidence.Length, correct.Length, "ECE");
        if (bins < 1) throw FisherKernelsException.Argument($"ECE: bins must be at least 1, got {bins}");
        var count = new long[bins];
        var sumConfidence = new double[bins];
        var sumCorrect = new double[bins];
        for (int i = 0; i < confidence.Length; i++)
        {
            double c = CheckProbability(confidence[i], "ECE");
            int b = Math.Min((int)(c * bins), bins - 1);
            count[b]++;
            sumConfidence[b] += c;
            if (correct[i]) sumCorrect[b]++;
        }
        double ece = 0;
        for (int b = 0; b < bins; b++)
            if (count[b] > 0) ece += Math.Abs(sumCorrect[b] - sumConfidence[b]) / confidence.Length;
        return confidence.Length == 0 ? double.NaN : ece;
    }

    /// <summary>Mean negative log-likelihood of the outcomes under the confidences (clipped to [ε, 1−ε]).</summary>
    public static double NegativeLogLikelihood(ReadOnlySpan<double> confidence, ReadOnlySpan<bool> correct)
    {
        Check(confidence.Length, correct.Length, "NLL");
        double sum = 0;
        for (int i = 0; i < confidence.Length; i++)
        {
            double c = Math.Clamp(CheckProbability(confidence[i], "NLL"), Epsilon, 1 - Epsilon);
            sum -= correct[i] ? Math.Log(c) : Math.Log(1 - c);
        }
        return confidence.Length == 0 ? double.NaN : sum / confidence.Length;
    }

    /// <summary>
    /// The uncertainty u of a prediction with probability <paramref name="p"/> that the calibrated confidence uses:
    /// <c>u = (aleatoric + epistemic)/p² = (1−p)/p + epistemic/p²</c>, the odds against the prediction plus the
    /// delta-method variance of log p. On this scale, with no epistemic part and β = 1, <c>1/(1+β·u)</c> is p itself,
    /// so β recalibrates the model's odds and the epistemic part lowers confidence where the parameters are unsure.
    /// (SPEC §4's scores of p shrink with p², so u = aleatoric + epistemic would call improbable predictions certain.)
    /// </summary>
    public static double RelativeUncertainty(double p, double epistemic)
    {
        if (!(p > 0 && p <= 1)) throw FisherKernelsException.Argument($"calibrate: probability {p} is not in (0, 1]");
        if (!(epistemic >= 0 && double.IsFinite(epistemic))) throw FisherKernelsException.Argument($"calibrate: epistemic score {epistemic} is not a finite non-negative number");
        return (p * (1 - p) + epistemic) / (p * p);
    }

    /// <summary>The calibrated confidence <c>1/(1+β·u)</c>.</summary>
    public static double Confidence(double beta, double uncertainty) => 1 / (1 + beta * uncertainty);

    public static double[] Confidences(double beta, ReadOnlySpan<double> uncertainty)
    {
        var c = new double[uncertainty.Length];
        for (int i = 0; i < c.Length; i++) c[i] = Confidence(beta, uncertainty[i]);
        return c;
    }

    /// <summary>
    /// The β ≥ 0 that minimizes the NLL of <c>c = 1/(1+β·u)</c> for the outcomes (the maximum-likelihood fit).
    /// Without clipping, NLL(β) = mean log(1+βu) − mean over errors of log(βu), convex in log β, so its minimum is
    /// the root of the monotone <c>mean βu/(1+βu) − (errors/N)</c>, found by bisection in log β. No errors: β = 0.
    /// More errors than positions with u &gt; 0 can explain: β at the top of the search range (every u &gt; 0 maps to ~0).
    /// </summary>
    public static double FitBeta(ReadOnlySpan<double> uncertainty, ReadOnlySpan<bool> correct)
    {
        Check(uncertainty.Length, correct.Length, "calibrate");
        if (uncertainty.Length == 0) throw FisherKernelsException.Argument("calibrate: no held-out positions to fit β on");
        double scale = 0;
        int errors = 0;
        for (int i = 0; i < uncertainty.Length; i++)
        {
            double u = uncertainty[i];
            if (!double.IsFinite(u) || u < 0) throw FisherKernelsException.Argument($"calibrate: uncertainty {u} at position {i} is not a finite non-negative number");
            scale = Math.Max(scale, u);
            if (!correct[i]) errors++;
        }
        if (errors == 0 || scale == 0) return 0;
        double target = (double)errors / uncertainty.Length;
        double[] values = uncertainty.ToArray();
        double Excess(double logBeta)
        {
            double beta = Math.Exp(logBeta) / scale, sum = 0;
            foreach (double u in values) sum += beta * u / (1 + beta * u);
            return sum / values.Length - target;
        }
        // β·max(u) from 1e-12 to 1e12 covers every confidence a double can tell apart from 0 or 1.
        double lo = Math.Log(1e-12), hi = Math.Log(1e12);
        if (Excess(lo) >= 0) return Math.Exp(lo) / scale;
        if (Excess(hi) <= 0) return Math.Exp(hi) / scale;
        for (int it = 0; it < 200 && hi - lo > 1e-13; it++)
        {
            double mid = (lo + hi) / 2;
            if (Excess(mid) < 0) lo = mid; else hi = mid;
        }
        return Math.Exp((lo + hi) / 2) / scale;
    }

    static void Check(int values, int labels, string what)
    {
        if (values != labels) throw FisherKernelsException.Argument($"{what}: {values} scores but {labels} outcomes");
    }

    static double CheckProbability(double c, string what) =>
        c is >= 0 and <= 1 ? c : throw FisherKernelsException.Argument($"{what}: confidence {c} is not in [0, 1]");
}

/// <summary>
/// What <c>calibrate</c> reports (issue 5) for one estimator on held-out predictions (the model's top-1 token at each
/// position, scored as the target): the AUROC of the epistemic score (of p, and of log p = epistemic/p²), the aleatoric
/// score and the combined <see cref="Calibration.RelativeUncertainty"/> for predicting errors (top-1 ≠ true token), and
/// ECE / NLL of the model's own confidence p (before) and of the calibrated <c>1/(1+β·u)</c> (after).
/// </summary>
public sealed record CalibrationSummary(int Positions, int Errors, double Beta,
                                        double AurocEpistemic, double AurocEpistemicLogP, double AurocAleatoric, double AurocCombined,
                                        double EceBefore, double EceAfter, double NllBefore, double NllAfter)
{
    /// <param name="p">the model's probability of the token it predicts (its uncalibrated confidence).</param>
    /// <param name="epistemic">the epistemic score of that prediction's p (SPEC §4).</param>
    /// <param name="correct">whether the prediction is the true next token.</param>
    public static CalibrationSummary Fit(ReadOnlySpan<double> p, ReadOnlySpan<double> epistemic, ReadOnlySpan<bool> correct)
    {
        int n = correct.Length;
        if (epistemic.Length != n || p.Length != n)
            throw FisherKernelsException.Argument($"calibrate: {p.Length} probabilities and {epistemic.Length} epistemic values for {n} positions");
        var (combined, logP, aleatoric) = (new double[n], new double[n], new double[n]);
        var errors = new bool[n];
        int errorCount = 0;
        for (int i = 0; i < n; i++)
        {
            combined[i] = Calibration.RelativeUncertainty(p[i], epistemic[i]);
            logP[i] = epistemic[i] / (p[i] * p[i]);
            aleatoric[i] = p[i] * (1 - p[i]);
            errors[i] = !correct[i];
            if (errors[i]) errorCount++;
        }
        double beta = Calibration.FitBeta(combined, correct);
        double[] calibrated = Calibration.Confidences(beta, combined);
        return new CalibrationSummary(n, errorCount, beta,
            Calibration.Auroc(epistemic, errors), Calibration.Auroc(logP, errors), Calibration.Auroc(aleatoric, errors), Calibration.Auroc(combined, errors),
            Calibration.ExpectedCalibrationError(p, correct), Calibration.ExpectedCalibrationError(calibrated, correct),
            Calibration.NegativeLogLikelihood(p, correct), Calibration.NegativeLogLikelihood(calibrated, correct));
    }

    /// <summary>One line per figure, each naming the estimator and the score.</summary>
    public IEnumerable<string> Lines(string estimator)
    {
        var c = System.Globalization.CultureInfo.InvariantCulture;
        yield return string.Create(c, $"{estimator}: {Positions} positions, {Errors} next-token errors, β = {Beta:G6}");
        yield return string.Create(c, $"{estimator}: AUROC for errors: epistemic {AurocEpistemic:F4} (of log p: {AurocEpistemicLogP:F4}), aleatoric {AurocAleatoric:F4}, combined {AurocCombined:F4}");
        yield return string.Create(c, $"{estimator}: ECE {EceBefore:F4} before calibration (model confidence p), {EceAfter:F4} after (1/(1+β·u), u = (aleatoric+epistemic)/p²)");
        yield return string.Create(c, $"{estimator}: NLL {NllBefore:F4} before calibration, {NllAfter:F4} after");
    }
}

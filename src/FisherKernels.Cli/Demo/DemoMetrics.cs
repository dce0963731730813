namespace FisherKernels.Cli.Demo;

/// <summary>One bin of a reliability diagram: predictions whose confidence fell in [Low, High).</summary>
internal readonly record struct ReliabilityBin(double Low, double High, int Count, double MeanConfidence, double Accuracy);

/// <summary>The figures the demo reports: AUROC of a score, and calibration of a confidence.</summary>
internal static class DemoMetrics
{
    /// <summary>
    /// Area under the ROC curve of <paramref name="scores"/> for telling positives from negatives:
    /// the probability that a random positive scores above a random negative, ties counting half
    /// (the Mann–Whitney U statistic, from average ranks). NaN when a class is empty.
    /// </summary>
    public static double Auroc(ReadOnlySpan<double> scores, ReadOnlySpan<bool> positive)
    {
        if (scores.Length != positive.Length) throw new ArgumentException("scores and labels differ in length");
        int n = scores.Length;
        var order = new int[n];
        for (int i = 0; i < n; i++) order[i] = i;
        var keys = scores.ToArray();
        foreach (double s in keys)
            if (double.IsNaN(s)) throw new ArgumentException("a score is NaN");
        Array.Sort(keys, order);
        double positiveRankSum = 0;
        long positives = 0;
        for (int i = 0; i < n;)
        {
            int j = i;
            while (j + 1 < n && keys[j + 1] == keys[i]) j++;
            double averageRank = (i + j) / 2.0 + 1;  // ranks are 1-based; ties share the average
            for (int k = i; k <= j; k++)
                if (positive[order[k]]) { positiveRankSum += averageRank; positives++; }
            i = j + 1;
        }
        long negatives = n - positives;
        if (positives == 0 || negatives == 0) return double.NaN;
        return (positiveRankSum - positives * (positives + 1) / 2.0) / ((double)positives * negatives);
    }

    /// <summary>Equal-width confidence bins over [0, 1]; confidence 1 falls in the last bin.</summary>
    public static ReliabilityBin[] Reliability(ReadOnlySpan<double> confidence, ReadOnlySpan<bool> correct, int bins = 10)
    {
        if (confidence.Length != correct.Length) throw new ArgumentException("confidence and labels differ in length");
        var count = new int[bins];
        var sumConfidence = new double[bins];
        var sumCorrect = new double[bins];
        for (int i = 0; i < confidence.Length; i++)
        {
            double c = confidence[i];
            if (!(c >= 0 && c <= 1)) throw new ArgumentException($"confidence {c} is outside [0, 1]");
            int b = Math.Min(bins - 1, (int)(c * bins));
            count[b]++;
            sumConfidence[b] += c;
            if (correct[i]) sumCorrect[b]++;
        }
        var result = new ReliabilityBin[bins];
        for (int b = 0; b < bins; b++)
            result[b] = new ReliabilityBin((double)b / bins, (double)(b + 1) / bins, count[b],
                count[b] > 0 ? sumConfidence[b] / count[b] : double.NaN,
                count[b] > 0 ? sumCorrect[b] / count[b] : double.NaN);
        return result;
    }

    /// <summary>Expected calibration error: Σ (n_b / N) |accuracy_b − confidence_b| over the bins.</summary>
    public static double ExpectedCalibrationError(ReadOnlySpan<ReliabilityBin> bins)
    {
        long total = 0;
        double sum = 0;
        foreach (var bin in bins)
        {
            if (bin.Count == 0) continue;
            total += bin.Count;
            sum += bin.Count * Math.Abs(bin.Accuracy - bin.MeanConfidence);
        }
        return total == 0 ? double.NaN : sum / total;
    }
}

namespace FisherKernels.Cli.Demo;

/// <summary>One bin of a reliability diagram: predictions whose confidence fell in [Low, High).</summary>
internal readonly record struct ReliabilityBin(double Low, double High, int Count, double MeanConfidence, double Accuracy);

/// <summary>The reliability diagram's bins (the figures themselves come from <see cref="Uncertainty.Calibration"/>).</summary>
internal static class DemoMetrics
{
    /// <summary>Equal-width confidence bins over [0, 1], the same binning as the ECE; confidence 1 falls in the last bin.</summary>
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
}

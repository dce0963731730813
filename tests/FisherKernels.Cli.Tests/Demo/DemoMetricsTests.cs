using FisherKernels.Cli.Demo;

namespace FisherKernels.Tests.Demo;

public class DemoMetricsTests
{
    [Fact]
    public void ReliabilityBins()
    {
        // Bin [0.2, 0.3): confidences 0.25, 0.25, accuracy 1/2 -> gap 0.25.
        // Bin [0.9, 1.0]: confidences 0.95, 1.0, accuracy 1 -> gap 0.025.
        double[] confidence = [0.25, 0.25, 0.95, 1.0];
        bool[] correct = [true, false, true, true];
        var bins = DemoMetrics.Reliability(confidence, correct, 10);
        Assert.Equal(2, bins[2].Count);
        Assert.Equal(0.25, bins[2].MeanConfidence, 12);
        Assert.Equal(0.5, bins[2].Accuracy, 12);
        Assert.Equal(2, bins[9].Count);
        Assert.Equal(0.975, bins[9].MeanConfidence, 12);
        // The bins agree with the ECE: Σ (n_b / N) |accuracy_b − confidence_b|.
        double ece = bins.Where(b => b.Count > 0).Sum(b => b.Count * Math.Abs(b.Accuracy - b.MeanConfidence)) / 4;
        Assert.Equal(FisherKernels.Uncertainty.Calibration.ExpectedCalibrationError(confidence, correct), ece, 12);
        Assert.Equal((2 * 0.25 + 2 * 0.025) / 4, ece, 12);
        Assert.Throws<ArgumentException>(() => DemoMetrics.Reliability([1.5], [true]));
    }
}

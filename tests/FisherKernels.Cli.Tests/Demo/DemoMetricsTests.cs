using FisherKernels.Cli.Demo;

namespace FisherKernels.Tests.Demo;

public class DemoMetricsTests
{
    /// <summary>The definition: fraction of (positive, negative) pairs ordered right, ties half.</summary>
    static double PairwiseAuroc(double[] scores, bool[] positive)
    {
        double wins = 0;
        long pairs = 0;
        for (int i = 0; i < scores.Length; i++)
            for (int j = 0; j < scores.Length; j++)
                if (positive[i] && !positive[j])
                {
                    pairs++;
                    wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
                }
        return wins / pairs;
    }

    [Fact]
    public void AurocMatchesPairwiseDefinitionWithTies()
    {
        var random = new Random(3);
        for (int trial = 0; trial < 20; trial++)
        {
            int n = 5 + random.Next(60);
            var scores = new double[n];
            var positive = new bool[n];
            for (int i = 0; i < n; i++)
            {
                scores[i] = random.Next(8);  // few distinct values: many ties
                positive[i] = random.NextDouble() < 0.4;
            }
            positive[0] = true;
            positive[1] = false;
            Assert.Equal(PairwiseAuroc(scores, positive), DemoMetrics.Auroc(scores, positive), 12);
        }
    }

    [Fact]
    public void AurocExtremesAndEmptyClass()
    {
        Assert.Equal(1.0, DemoMetrics.Auroc([0.1, 0.2, 0.9, 0.8], [false, false, true, true]));
        Assert.Equal(0.0, DemoMetrics.Auroc([0.9, 0.8, 0.1, 0.2], [false, false, true, true]));
        Assert.Equal(0.5, DemoMetrics.Auroc([1, 1, 1, 1], [false, true, false, true]));
        Assert.True(double.IsNaN(DemoMetrics.Auroc([1, 2], [true, true])));
        Assert.Throws<ArgumentException>(() => DemoMetrics.Auroc([double.NaN, 1], [true, false]));
    }

    [Fact]
    public void ReliabilityBinsAndEce()
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
        Assert.Equal((2 * 0.25 + 2 * 0.025) / 4, DemoMetrics.ExpectedCalibrationError(bins), 12);
        Assert.Throws<ArgumentException>(() => DemoMetrics.Reliability([1.5], [true]));
    }
}

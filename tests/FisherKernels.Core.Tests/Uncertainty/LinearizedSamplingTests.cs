using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

public class LinearizedSamplingTests
{
    [Fact]
    public void VarianceAndIntervalOfASmallCaseByHand()
    {
        // Two rows, vocabulary 2, logits 0; three samples move the first logit by 0, +ln 3, −ln 3: p_0 = 1/2, 3/4, 1/4.
        float l3 = (float)Math.Log(3);
        float[] logits = [0, 0, 0, 0];
        float[] jvps = [0, 0, 0, 0, /**/ l3, 0, 1, 0, /**/ -l3, 0, 2, 0];
        var variance = new double[2];
        var low = new double[2];
        var high = new double[2];
        LinearizedSampling.Summarize(logits, jvps, 3, 2, 2, [0, -100], 0.5, variance, low, high);
        Assert.Equal(2.0 / 3 * l3 * l3, variance[0], 12);
        Assert.Equal(0.375, low[0], 6);  // quantile 0.25 of {1/4, 1/2, 3/4}: halfway between the first two
        Assert.Equal(0.625, high[0], 6);
        Assert.True(double.IsNaN(variance[1]) && double.IsNaN(low[1]) && double.IsNaN(high[1]));
        Assert.Contains("row 0", Assert.Throws<FisherKernelsException>(() => LinearizedSampling.Summarize(logits, jvps, 3, 2, 2, [2, 0], 0.5, variance, low, high)).Message);
        Assert.Throws<FisherKernelsException>(() => LinearizedSampling.Summarize(logits, jvps, 3, 2, 2, [0, 0], 1.0, variance, low, high));
    }

    [Fact]
    public void CalibrationSummaryUsesTheCombinedScore()
    {
        double[] epistemic = [0.1, 0.4, 0.35, 0.8], aleatoric = [0, 0, 0, 0], confidence = [0.9, 0.8, 0.7, 0.6];
        bool[] correct = [true, true, false, false];
        CalibrationSummary s = CalibrationSummary.Fit(epistemic, aleatoric, confidence, correct);
        Assert.Equal(0.75, s.AurocEpistemic);
        Assert.Equal(0.5, s.AurocAleatoric);
        Assert.Equal(0.75, s.AurocCombined);
        Assert.Equal(2, s.Errors);
        Assert.Equal(Calibration.FitBeta(epistemic, correct), s.Beta);
        Assert.Equal(Calibration.ExpectedCalibrationError(confidence, correct), s.EceBefore);
        Assert.Equal(Calibration.NegativeLogLikelihood(Calibration.Confidences(s.Beta, epistemic), correct), s.NllAfter);
        Assert.All(s.Lines("kfac"), line => Assert.StartsWith("kfac: ", line));
    }
}

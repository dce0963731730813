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
    public void CalibrationSummaryUsesTheRelativeUncertainty()
    {
        double[] p = [0.9, 0.8, 0.7, 0.6], epistemic = [0.1, 0.4, 0.35, 0.8];
        bool[] correct = [true, true, false, false];
        CalibrationSummary s = CalibrationSummary.Fit(p, epistemic, correct);
        // u = (p(1−p) + e)/p²: 0.2346, 0.875, 1.1429, 2.8889 — by hand.
        double[] u = [(0.09 + 0.1) / 0.81, (0.16 + 0.4) / 0.64, (0.21 + 0.35) / 0.49, (0.24 + 0.8) / 0.36];
        for (int i = 0; i < 4; i++) Assert.Equal(u[i], Calibration.RelativeUncertainty(p[i], epistemic[i]), 14);
        Assert.Equal(0.75, s.AurocEpistemic);
        Assert.Equal(1.0, s.AurocEpistemicLogP);  // e/p²: 0.123, 0.625, 0.714, 2.22
        Assert.Equal(1.0, s.AurocAleatoric);      // p(1−p): 0.09, 0.16, 0.21, 0.24
        Assert.Equal(1.0, s.AurocCombined);
        Assert.Equal(2, s.Errors);
        Assert.Equal(Calibration.FitBeta(u, correct), s.Beta, 12);
        Assert.Equal(Calibration.ExpectedCalibrationError(p, correct), s.EceBefore);
        Assert.Equal(Calibration.NegativeLogLikelihood(Calibration.Confidences(s.Beta, u), correct), s.NllAfter, 12);
        Assert.All(s.Lines("kfac"), line => Assert.StartsWith("kfac: ", line));
    }

    [Fact]
    public void WithoutEpistemicPartTheConfidenceAtBetaOneIsP()
    {
        foreach (double p in new[] { 0.001, 0.3, 0.5, 0.97, 1.0 })
            Assert.Equal(p, Calibration.Confidence(1.0, Calibration.RelativeUncertainty(p, 0)), 12);
        Assert.True(Calibration.Confidence(1.0, Calibration.RelativeUncertainty(0.5, 0.1)) < 0.5);
        Assert.Throws<FisherKernelsException>(() => Calibration.RelativeUncertainty(0, 0.1));
        Assert.Throws<FisherKernelsException>(() => Calibration.RelativeUncertainty(0.5, double.NaN));
    }
}

using System.Globalization;
using FisherKernels.Cli.Demo;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Demo;

public class DemoReportTests
{
    static double Value(IEnumerable<string> lines, string task, string score) =>
        double.Parse(lines.Single(l => l.Contains(task) && l.Contains(score + " ")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1], CultureInfo.InvariantCulture);

    static ScoreReport Report(params (double P, double Epistemic)[][] sequences) => new("m.onnx", "kfac", 1.0,
        sequences.Select((tokens, i) => new SequenceScore(i, tokens.Select((t, k) => new TokenScore(k, 1, t.P, t.Epistemic)).ToArray(),
                                                          epistemic: tokens.Sum(t => t.Epistemic))).ToArray());

    [Fact]
    public void OutOfDistributionAurocsOnBothScales()
    {
        // In-distribution: probable tokens with large SPEC epistemic scores; out: improbable tokens whose small
        // epistemic scores are large relative to p². So the score of p ranks backwards and the score of log p right.
        var heldOut = Report([(0.8, 0.2), (0.6, 0.1)], [(0.9, 0.3)]);
        var other = Report([(0.05, 0.01)], [(0.1, 0.02), (0.02, 0.001)]);
        var sets = new[] { new TextSet("held-out", true, new NdArray<long>(2, 4)), new TextSet("code", false, new NdArray<long>(2, 4)) };
        var lines = DemoReport.SequenceAurocLines(sets, name => name == "held-out" ? heldOut : other, "K-FAC").ToArray();
        Assert.Equal(1.0, Value(lines, "in vs out-of-distribution", "epistemic of log p"));
        Assert.Equal(0.0, Value(lines, "in vs out-of-distribution", "epistemic of p"));
        Assert.Equal(1.0, Value(lines, "in vs out-of-distribution", "aleatoric of log p"));
        Assert.Equal(1.0, Value(lines, "in vs code", "epistemic of log p"));
        Assert.All(lines, l => Assert.Contains("K-FAC", l));
    }

    [Fact]
    public void ErrorAnalysisFitsBetaOnEvenAndMeasuresOnOddSequences()
    {
        // Targets are the predictions; trueNext says which were right (token 1 predicted everywhere).
        var predictions = Report([(0.9, 0.0), (0.4, 0.0)], [(0.9, 0.0), (0.4, 0.0)], [(0.8, 0.0), (0.3, 0.0)], [(0.8, 0.0), (0.3, 0.0)]);
        var trueNext = new NdArray<long>(4, 2);
        trueNext.Data.AsSpan().Fill(1);
        trueNext.Data[1] = 2; // sequence 0 position 1 was wrong
        trueNext.Data[5] = 2; // sequence 2 position 1 was wrong
        trueNext.Data[7] = 2; // sequence 3 position 1 was wrong
        var analysis = DemoReport.ErrorAnalysis(predictions, trueNext);
        Assert.Equal(8, analysis.Positions);
        Assert.Equal(3, analysis.Errors);
        double[] uEven = [Calibration.RelativeUncertainty(0.9, 0), Calibration.RelativeUncertainty(0.4, 0), Calibration.RelativeUncertainty(0.8, 0), Calibration.RelativeUncertainty(0.3, 0)];
        Assert.Equal(Calibration.FitBeta(uEven, [true, false, true, false]), analysis.Beta, 12);
        double[] pOdd = [0.9, 0.4, 0.8, 0.3];
        bool[] correctOdd = [true, true, true, false];
        Assert.Equal(Calibration.ExpectedCalibrationError(pOdd, correctOdd), analysis.EceBefore, 12);
        double[] after = pOdd.Select(p => Calibration.Confidence(analysis.Beta, Calibration.RelativeUncertainty(p, 0))).ToArray();
        Assert.Equal(Calibration.ExpectedCalibrationError(after, correctOdd), analysis.EceAfter, 12);
        // (1−p)/p of errors {1.5, 2.33, 2.33} against correct {0.11, 0.11, 1.5, 0.25, 0.25}: 14.5 of 15 pairs.
        Assert.Equal(14.5 / 15, analysis.OfLogP.Aleatoric, 12);
        Assert.Equal(Calibration.NegativeLogLikelihood(after, correctOdd), analysis.NllAfter, 12);

        // Selective prediction ranks all 8 predictions by u = (1−p)/p (epistemic 0): p 0.9, 0.9, 0.8, 0.8 right, then 0.4 (right),
        // 0.4, 0.3, 0.3 wrong (0.4 tied: the right one of sequence 1 comes after the wrong one of sequence 0 in the given order).
        double[] u = new[] { 0.9, 0.4, 0.9, 0.4, 0.8, 0.3, 0.8, 0.3 }.Select(p => Calibration.RelativeUncertainty(p, 0)).ToArray();
        double[] loss = [0, 1, 0, 0, 0, 1, 0, 1];
        Assert.Equal(SelectivePrediction.Aurc(u, loss), analysis.Aurc, 12);
        Assert.Equal(SelectivePrediction.Prr(u, loss), analysis.Prr, 12);
        Assert.Equal(SelectivePrediction.Prr(u, loss, 0.5), analysis.Prr50, 12);
        // Risks of the 8 prefixes: 0, 0, 0, 0, 1/5, 1/6, 2/7, 3/8.
        Assert.Equal((0.2 + 1.0 / 6 + 2.0 / 7 + 3.0 / 8) / 8, analysis.Aurc, 12);

        string[] table = DemoReport.SummaryLines([("K-FAC τ*", 2.5, 0.75, analysis)]).ToArray();
        Assert.Equal(3, table.Length);
        Assert.StartsWith("K-FAC τ*", table[2]);
        Assert.Contains("2.5", table[2]);
        Assert.Contains(analysis.Prr.ToString("F3", CultureInfo.InvariantCulture), table[2]);
    }
}

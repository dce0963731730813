using System.Text.Json;
using FisherKernels.Tests.Curvature;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

public class CalibrationTests
{
    /// <summary>References written by make_references.py (numpy, all-pairs AUROC, grid + golden-section β).</summary>
    internal static string ReferencePath(string name) => Path.Combine(FixtureFiles.Folder, "..", "FisherKernels.Core.Tests", "Uncertainty", name);

    static (double[] U, bool[] Correct, JsonElement Root) Reference()
    {
        JsonElement root = JsonDocument.Parse(File.ReadAllText(ReferencePath("calibration_references.json"))).RootElement;
        return (root.GetProperty("uncertainty").EnumerateArray().Select(e => e.GetDouble()).ToArray(),
                root.GetProperty("correct").EnumerateArray().Select(e => e.GetBoolean()).ToArray(), root);
    }

    [Fact]
    public void AurocOfSmallCasesByHand()
    {
        Assert.Equal(1.0, Calibration.Auroc([1, 2, 3, 4], [false, false, true, true]));
        Assert.Equal(0.0, Calibration.Auroc([1, 2, 3, 4], [true, true, false, false]));
        Assert.Equal(0.75, Calibration.Auroc([0.1, 0.4, 0.35, 0.8], [false, false, true, true]));
        Assert.Equal(0.5, Calibration.Auroc([7, 7, 7], [true, false, false]));
        // positives {2, 5}, negatives {2, 1, 9}: pairs won 0.5+1+0, 1+1+0 → 3.5 / 6
        Assert.Equal(3.5 / 6, Calibration.Auroc([2, 5, 2, 1, 9], [true, true, false, false, false]), 15);
        Assert.True(double.IsNaN(Calibration.Auroc([1, 2], [true, true])));
        Assert.Throws<FisherKernelsException>(() => Calibration.Auroc([1, 2], [true]));
    }

    [Fact]
    public void MetricsMatchTheNumpyReference()
    {
        var (u, correct, root) = Reference();
        bool[] errors = correct.Select(c => !c).ToArray();
        Assert.Equal(root.GetProperty("auroc_errors").GetDouble(), Calibration.Auroc(u, errors), 12);
        double[] confidence = Calibration.Confidences(1.0, u);
        Assert.Equal(root.GetProperty("ece_beta_1").GetDouble(), Calibration.ExpectedCalibrationError(confidence, correct), 12);
        Assert.Equal(root.GetProperty("nll_beta_1").GetDouble(), Calibration.NegativeLogLikelihood(confidence, correct), 12);
    }

    [Fact]
    public void FittedBetaMinimizesTheNllLikeTheNumpyReference()
    {
        var (u, correct, root) = Reference();
        double beta = Calibration.FitBeta(u, correct), expected = root.GetProperty("beta").GetDouble();
        Assert.True(Math.Abs(beta - expected) < 1e-6 * expected, $"β {beta}, numpy {expected}");
        Assert.Equal(root.GetProperty("nll_at_beta").GetDouble(), Calibration.NegativeLogLikelihood(Calibration.Confidences(beta, u), correct), 10);
        Assert.Equal(root.GetProperty("ece_at_beta").GetDouble(), Calibration.ExpectedCalibrationError(Calibration.Confidences(beta, u), correct), 6);
        // The fit is invariant to the scale of u.
        double scaled = Calibration.FitBeta(u.Select(x => x * 1e6).ToArray(), correct);
        Assert.True(Math.Abs(scaled * 1e6 - beta) < 1e-6 * beta);
    }

    [Fact]
    public void DegenerateFitsAndBadInput()
    {
        Assert.Equal(0, Calibration.FitBeta([0.5, 2], [true, true]));
        Assert.True(Calibration.FitBeta([0.5, 2], [false, false]) > 1e10); // every position wrong: confidence → 0
        Assert.Contains("position 1", Assert.Throws<FisherKernelsException>(() => Calibration.FitBeta([0.5, double.NaN], [true, false])).Message);
        Assert.Throws<FisherKernelsException>(() => Calibration.FitBeta([], []));
        Assert.Throws<FisherKernelsException>(() => Calibration.ExpectedCalibrationError([1.5], [true]));
    }
}

using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.Tests.Curvature;
using FisherKernels.Uncertainty;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>
/// <see cref="LayerPosterior.TargetOutputVariance"/>, the closed-form variance of the target logit from the last layer, against
/// a float64 dense solve of <c>vec(e_y ãᵀ)ᵀ (M·A⊗G + τI)⁻¹ vec(e_y ãᵀ)</c>, in the dense and both low-rank orientations.
/// </summary>
public class TargetOutputVarianceTests
{
    const string Hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const double Positions = 40, Tau = 0.5;
    const int Rank = 3;
    // 12 inputs (with the bias) and 4 outputs or the reverse: dense 4·(12² + 4² + 12·4) = 832 bytes, low rank 4·(4² + 12·3) + 8·12 = 304.
    static readonly PosteriorOptions LowRank = new() { Rank = Rank, MemoryBudgetBytes = 500, PriorPrecision = Tau };

    static IComputeBackend Make(string name) => name == "cpu" ? new CpuBackend(threads: 2) : new Float64Backend();

    static double[] ToDouble(NdArray<float> m) => m.Data.Select(v => (double)v).ToArray();

    /// <summary>
    /// A block for a layer with a bias: A from <paramref name="inputRows"/> rows of 11 or 3 inputs, G from
    /// <paramref name="gradientRows"/> rows of 4 or 12 outputs; a factor made from 3 rows has rank 3 = r.
    /// </summary>
    static KroneckerBlock Block(Random rng, int inF, int outF, int inputRows, int gradientRows) =>
        new("head", ToFloat(MeanOuter(RandomRows(rng, inputRows, inF, 1.5), true)), ToFloat(MeanOuter(RandomRows(rng, gradientRows, outF, 0.4), false)), true, Positions);

    /// <summary>Checks every targeted row against the dense solve with the factors <paramref name="a"/>, <paramref name="g"/>.</summary>
    static void AssertMatchesDenseSolve(LayerPosterior layer, double[] a, double[] g, Random rng)
    {
        int inF = layer.ADim - 1, outF = layer.GDim, rows = 4;
        float[] inputs = Enumerable.Range(0, rows * inF).Select(_ => (float)(2 * rng.NextDouble() - 1)).ToArray();
        long[] targets = [1, -100, outF - 1, 1];
        var variance = new double[rows];
        layer.TargetOutputVariance(inputs, targets, rows, variance);
        for (int r = 0; r < rows; r++)
        {
            if (targets[r] == -100) { Assert.True(double.IsNaN(variance[r])); continue; }
            var x = new float[outF * (inF + 1)]; // e_y ãᵀ
            inputs.AsSpan(r * inF, inF).CopyTo(x.AsSpan((int)targets[r] * (inF + 1)));
            x[(int)targets[r] * (inF + 1) + inF] = 1;
            double expected = KfacPosteriorTests.DenseQuadratic(a, inF + 1, g, outF, Positions, Tau, x);
            Assert.True(Math.Abs(variance[r] - expected) <= 1e-3 * expected, $"row {r}: expected {expected}, got {variance[r]}");
        }
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("float64")]
    public void DenseFormMatchesTheDenseSolve(string backendName)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(11);
        KroneckerBlock block = Block(rng, 5, 7, 30, 30);
        var posterior = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend, new PosteriorOptions { PriorPrecision = Tau });
        Assert.False(posterior["head"].IsLowRank);
        AssertMatchesDenseSolve(posterior["head"], ToDouble(block.A), ToDouble(block.G), rng);
    }

    /// <summary>
    /// Low rank: exact when the large factor has rank ≤ r; otherwise the posterior of D + UΛUᵀ (top r eigenpairs plus the
    /// diagonal of the rest), checked against that matrix solved densely.
    /// </summary>
    [Theory]
    [InlineData("cpu", false)]
    [InlineData("cpu", true)]
    [InlineData("float64", false)]
    [InlineData("float64", true)]
    public void LowRankFormMatchesTheDenseSolve(string backendName, bool largeIsA)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(largeIsA ? 12 : 13);
        int inF = largeIsA ? 11 : 3, outF = largeIsA ? 4 : 12;
        KroneckerBlock exact = largeIsA ? Block(rng, inF, outF, 3, 40) : Block(rng, inF, outF, 40, 3);
        var posterior = new KfacPosterior(new KfacCurvature([exact], "sampled", Hash, "t"), backend, LowRank);
        Assert.True(posterior["head"].IsLowRank);
        Assert.Contains($"low rank {Rank} on {(largeIsA ? "A" : "G")}", posterior["head"].Describe());
        AssertMatchesDenseSolve(posterior["head"], ToDouble(exact.A), ToDouble(exact.G), rng);

        KroneckerBlock full = Block(rng, inF, outF, 40, 40);
        posterior = new KfacPosterior(new KfacCurvature([full], "sampled", Hash, "t"), backend, LowRank);
        Assert.True(posterior["head"].IsLowRank);
        double[] a = ToDouble(full.A), g = ToDouble(full.G);
        if (largeIsA) a = KfacPosteriorTests.DiagonalPlusLowRank(a, inF + 1, Rank);
        else g = KfacPosteriorTests.DiagonalPlusLowRank(g, outF, Rank);
        AssertMatchesDenseSolve(posterior["head"], a, g, rng);
    }

    [Fact]
    public void BadShapesAndTargetsAreRefusedNamingTheLayer()
    {
        using IComputeBackend backend = new Float64Backend();
        KroneckerBlock block = Block(new Random(1), 3, 5, 10, 10);
        LayerPosterior layer = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend)["head"];
        var e = Assert.Throws<FisherKernelsException>(() => layer.TargetOutputVariance(new float[6], [0, 5], 2, new double[2]));
        Assert.Contains("'head'", e.Message);
        Assert.Contains("target 5", e.Message);
        e = Assert.Throws<FisherKernelsException>(() => layer.TargetOutputVariance(new float[5], [0, 1], 2, new double[2]));
        Assert.Contains("'head'", e.Message);
    }
}

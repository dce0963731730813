using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.Uncertainty;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>
/// τ by marginal likelihood (SPEC §4) against a float64 reference built from the same factors without eigenvalues: the
/// dense precision <c>M·A⊗G + τI</c>, its log-determinant by the float64 Cholesky of the posterior tests, and a golden-section search of the
/// objective in log τ.
/// </summary>
public class MarginalLikelihoodTests
{
    /// <summary>The float64 objective <c>−½τ‖θ‖² − ½ log det(M·A⊗G + τI) + ½ P log τ</c> of one layer, its log-determinant from the dense precision by Cholesky.</summary>
    static double Objective(KroneckerBlock block, double norm, double tau)
    {
        double logDet = KfacPosteriorTests.DenseLogDeterminant(block.A.Data.Select(v => (double)v).ToArray(), block.ADim,
                                                               block.G.Data.Select(v => (double)v).ToArray(), block.GDim, block.Positions, tau);
        return -0.5 * tau * norm - 0.5 * logDet + 0.5 * block.ADim * block.GDim * Math.Log(tau);
    }

    /// <summary>Golden-section maximum of <paramref name="f"/> over log τ in [1e-6, 1e6].</summary>
    static double GoldenSection(Func<double, double> f)
    {
        double lo = Math.Log(1e-6), hi = Math.Log(1e6), r = (Math.Sqrt(5) - 1) / 2;
        double x1 = hi - r * (hi - lo), x2 = lo + r * (hi - lo), f1 = f(Math.Exp(x1)), f2 = f(Math.Exp(x2));
        while (hi - lo > 1e-10)
        {
            if (f1 < f2) { lo = x1; x1 = x2; f1 = f2; x2 = lo + r * (hi - lo); f2 = f(Math.Exp(x2)); }
            else { hi = x2; x2 = x1; f2 = f1; x1 = hi - r * (hi - lo); f1 = f(Math.Exp(x1)); }
        }
        return Math.Exp((lo + hi) / 2);
    }

    static (KroneckerBlock Block, double Norm)[] Layers()
    {
        var rng = new Random(22);
        // Fewer positions than the layer is wide in the second: many zero eigenvalues, as in a short fit.
        return [(FromRows("first", RandomRows(rng, 40, 4, 1.0), RandomRows(rng, 40, 3, 0.3), hasBias: true), 2.5),
                (FromRows("second", RandomRows(rng, 3, 5, 0.5), RandomRows(rng, 3, 2, 2.0), hasBias: false), 0.7)];
    }

    [Fact]
    public void OptimumMatchesAGoldenSectionSearchOfTheDenseFloat64Objective()
    {
        var backend = new CpuBackend(threads: 1);
        var layers = Layers();
        MarginalLayer[] terms = layers.Select(l => MarginalLayer.Of(l.Block, backend, l.Norm)).ToArray();

        // The eigenvalue form of the objective is the dense one.
        foreach (double tau in new[] { 0.01, 1.0, 30.0 })
            for (int i = 0; i < layers.Length; i++)
                Assert.Equal(Objective(layers[i].Block, layers[i].Norm, tau), terms[i].LogEvidence(tau), 1e-6 * Math.Max(1, Math.Abs(terms[i].LogEvidence(tau))));

        double joint = MarginalLikelihood.Optimize(terms);
        double reference = GoldenSection(tau => layers.Sum(l => Objective(l.Block, l.Norm, tau)));
        Assert.True(Math.Abs(joint / reference - 1) < 1e-6, $"joint τ {joint}, float64 golden section {reference}");

        IReadOnlyDictionary<string, double> perLayer = MarginalLikelihood.OptimizePerLayer(terms);
        foreach (var (block, norm) in layers)
        {
            double own = GoldenSection(tau => Objective(block, norm, tau));
            Assert.True(Math.Abs(perLayer[block.Layer] / own - 1) < 1e-6, $"{block.Layer}: τ {perLayer[block.Layer]}, float64 golden section {own}");
        }
        Assert.NotEqual(perLayer["first"], perLayer["second"], 3);
    }

    [Fact]
    public void AnOptimumThatCannotBeBracketedIsOneClearError()
    {
        var backend = new CpuBackend(threads: 1);
        KroneckerBlock block = Layers()[0].Block;
        // Zero parameters: the evidence keeps rising with τ.
        var error = Assert.Throws<FisherKernelsException>(() => MarginalLikelihood.Optimize([MarginalLayer.Of(block, backend, 0)]));
        Assert.Contains("layer 'first'", error.Message);
        Assert.Contains("τ grows", error.Message);
        Assert.DoesNotContain('\n', error.Message);
        // No curvature (M = 0): it keeps rising as τ falls.
        var empty = new KroneckerBlock("empty", block.A, block.G, true, 0);
        error = Assert.Throws<FisherKernelsException>(() => MarginalLikelihood.OptimizePerLayer([MarginalLayer.Of(empty, backend, 1)]));
        Assert.Contains("layer 'empty'", error.Message);
        Assert.Contains("τ falls", error.Message);
        error = Assert.Throws<FisherKernelsException>(() => MarginalLikelihood.Optimize([]));
        Assert.Contains("no layer has dense factor sides", error.Message);
    }

    [Fact]
    public void StoredPriorPrecisionRoundTripsAsANumberOrAnObjectByLayer()
    {
        var one = StoredPriorPrecision.Parse(new StoredPriorPrecision(0.125).ToMetadata(), "c");
        Assert.Equal(0.125, one.Shared);
        Assert.Null(one.PerLayer);
        var byLayer = StoredPriorPrecision.Parse(StoredPriorPrecision.ByLayer(new Dictionary<string, double> { ["a"] = 2, ["b"] = 8 }).ToMetadata(), "c");
        Assert.Equal(4, byLayer.Shared, 12);
        Assert.Equal(8, byLayer.PerLayer!["b"]);
        foreach (string bad in new[] { "-1", "0", "{}", "{\"a\": -2}", "[1]", "x" })
            Assert.Contains("'prior_precision'", Assert.Throws<FisherKernelsException>(() => StoredPriorPrecision.Parse(bad, "c")).Message);
    }
}

using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>
/// One dense layer's share of the Laplace marginal likelihood (SPEC §4): the eigenvalues of its factors A and G (float64,
/// as the posterior clamps them), M, and <c>‖θ‖²</c> of its <c>[W | b]</c>. The curvature's eigenvalues are the products
/// <c>c_ij = M λ_G,i λ_A,j</c>, or with EK-FAC's <paramref name="E"/> (as <see cref="KronEigenbasis.WithCorrection"/> reads it)
/// <c>c_ij = M E_ij</c>; P = out·in(+1) parameters.
/// </summary>
public sealed record MarginalLayer(string Layer, double[] LambdaA, double[] LambdaG, double Positions, double ParameterSquaredNorm, float[]? E = null)
{
    public long Parameters => (long)LambdaA.Length * LambdaG.Length;

    /// <summary>The factors' eigenvalues of a dense block (one float64 decomposition of A and of G) and <paramref name="parameterSquaredNorm"/>.</summary>
    public static MarginalLayer Of(KroneckerBlock block, IComputeBackend backend, double parameterSquaredNorm)
    {
        ArgumentNullException.ThrowIfNull(block);
        var basis = KronEigenbasis.Create(backend, block.A.Data, block.ADim, block.G.Data, block.GDim, block.Positions, 1.0);
        if (block.E is not null) basis = basis.WithCorrection(block.E.Data);
        return new MarginalLayer(block.Layer, basis.LambdaA, basis.LambdaG, block.Positions, parameterSquaredNorm, basis.Correction);
    }

    /// <summary>The curvature's eigenvalue c_ij.</summary>
    double Eigenvalue(int i, int j) => E is null ? Positions * LambdaG[i] * LambdaA[j] : Positions * (double)E[(long)i * LambdaA.Length + j];

    /// <summary><c>−½ τ‖θ‖² − ½ Σ_ij log(c_ij + τ) + ½ P log τ</c>.</summary>
    public double LogEvidence(double tau)
    {
        double logDet = 0;
        for (int i = 0; i < LambdaG.Length; i++)
            for (int j = 0; j < LambdaA.Length; j++) logDet += Math.Log(Eigenvalue(i, j) + tau);
        return -0.5 * tau * ParameterSquaredNorm - 0.5 * logDet + 0.5 * Parameters * Math.Log(tau);
    }

    /// <summary>
    /// <c>2·d(LogEvidence)/d(log τ) = Σ_ij c_ij/(c_ij + τ) − τ‖θ‖²</c>: the effective number of parameters the data fix minus
    /// τ‖θ‖² (MacKay's fixed point). Strictly decreasing in τ, so the optimum is its one root.
    /// </summary>
    public double Slope(double tau)
    {
        double effective = 0;
        for (int i = 0; i < LambdaG.Length; i++)
            for (int j = 0; j < LambdaA.Length; j++)
            {
                double c = Eigenvalue(i, j);
                effective += c / (c + tau);
            }
        return effective - tau * ParameterSquaredNorm;
    }
}

/// <summary>
/// The prior precision τ that maximizes the Laplace marginal likelihood of a K-FAC posterior (SPEC §4, laplace-torch's
/// "marglik"), from the factors' eigenvalues: each τ tried costs one pass over the eigenvalue products (no decomposition,
/// no posterior). The log-evidence is concave in log τ with slope <see cref="MarginalLayer.Slope"/>, so its maximum is the
/// slope's root, found by bisection in log τ within [<see cref="MinPrecision"/>, <see cref="MaxPrecision"/>]; an optimum
/// outside (no curvature: τ → 0; zero parameters: τ → ∞) is an error that says which way it runs.
/// </summary>
public static class MarginalLikelihood
{
    public const double MinPrecision = 1e-12, MaxPrecision = 1e12;

    /// <summary>Stop when the bracket's ends are within this factor of each other.</summary>
    const double RelativeTolerance = 1e-12;

    /// <summary>The log-evidence summed over <paramref name="layers"/> at one τ.</summary>
    public static double LogEvidence(IReadOnlyList<MarginalLayer> layers, double tau) => layers.Sum(l => l.LogEvidence(tau));

    /// <summary>One τ for all <paramref name="layers"/> (<c>--prior-precision auto</c>).</summary>
    public static double Optimize(IReadOnlyList<MarginalLayer> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Count == 0) throw FisherKernelsException.Argument("--prior-precision auto: no layer has dense factor sides to take the marginal likelihood over");
        return Root(tau => layers.Sum(l => l.Slope(tau)), layers.Count == 1 ? $"layer '{layers[0].Layer}'" : $"the {layers.Count} dense layers");
    }

    /// <summary>Each layer's own τ (<c>--prior-precision auto-layer</c>).</summary>
    public static IReadOnlyDictionary<string, double> OptimizePerLayer(IReadOnlyList<MarginalLayer> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        return layers.ToDictionary(l => l.Layer, l => Root(l.Slope, $"layer '{l.Layer}'"), StringComparer.Ordinal);
    }

    static double Root(Func<double, double> slope, string what)
    {
        double lo = MinPrecision, hi = MaxPrecision;
        double atLo = slope(lo), atHi = slope(hi);
        if (!double.IsFinite(atLo) || !double.IsFinite(atHi))
            throw FisherKernelsException.Argument($"--prior-precision auto: the marginal likelihood of {what} is not finite (check the curvature and the parameters)");
        if (atLo <= 0)
            throw FisherKernelsException.Argument(string.Create(CultureInfo.InvariantCulture,
                $"--prior-precision auto: the marginal likelihood of {what} still rises as τ falls to {MinPrecision:G} (the curvature carries no information); it has no optimum to bracket, give --prior-precision τ"));
        if (atHi >= 0)
            throw FisherKernelsException.Argument(string.Create(CultureInfo.InvariantCulture,
                $"--prior-precision auto: the marginal likelihood of {what} still rises as τ grows to {MaxPrecision:G} (the parameters' norm is zero or tiny); it has no optimum to bracket, give --prior-precision τ"));
        while (hi / lo > 1 + RelativeTolerance)
        {
            double mid = Math.Sqrt(lo * hi);
            if (mid <= lo || mid >= hi) break;
            if (slope(mid) > 0) lo = mid; else hi = mid;
        }
        return Math.Sqrt(lo * hi);
    }
}

using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// What <see cref="PositionScorer"/> makes of a parameter gradient ∇θ p (SPEC §4): its squared norm (the isotropic
/// gradient-norm estimator, Σ = I) or its quadratic form under a K-FAC Laplace posterior.
/// </summary>
public sealed class EpistemicMetric
{
    private EpistemicMetric(KfacPosterior? posterior) => Posterior = posterior;

    /// <summary><c>‖∇θ p‖²</c> (<c>--method isotropic</c>).</summary>
    public static EpistemicMetric SquaredGradientNorm { get; } = new(null);

    /// <summary><c>∇θ pᵀ Σ ∇θ p</c> with Σ block-diagonal over the layers (<c>--method kfac</c>); the parameters must be every layer's weight and bias.</summary>
    public static EpistemicMetric Kfac(KfacPosterior posterior) => new(posterior ?? throw new ArgumentNullException(nameof(posterior)));

    /// <summary>The K-FAC posterior, null for the isotropic metric.</summary>
    public KfacPosterior? Posterior { get; }
}

using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// The covariance Σ under which <see cref="PositionScorer"/> scores a parameter gradient ∇θ p (SPEC §4): Σ = I on every
/// parameter (the isotropic gradient-norm estimator), or a K-FAC Laplace posterior, block-diagonal over the layers and
/// covering only their weights and biases. Each layer's block is a <see cref="LayerPosterior"/>.
/// </summary>
public sealed class EpistemicMetric
{
    private EpistemicMetric(KfacPosterior? posterior) => Posterior = posterior;

    /// <summary><c>‖∇θ p‖²</c> (<c>--method isotropic</c>).</summary>
    public static EpistemicMetric SquaredGradientNorm { get; } = new(null);

    /// <summary><c>∇θ pᵀ Σ ∇θ p</c> with Σ block-diagonal over the layers (<c>--method kfac</c>); the parameters must be the weight and bias of every layer it covers.</summary>
    public static EpistemicMetric Kfac(KfacPosterior posterior) => new(posterior ?? throw new ArgumentNullException(nameof(posterior)));

    /// <summary>The K-FAC posterior; none for the isotropic Σ = I.</summary>
    public KfacPosterior? Posterior { get; }

    /// <summary>Whether Σ covers the layers' weights and biases only (K-FAC), rather than every parameter (Σ = I).</summary>
    public bool CoversLayersOnly => Posterior is not null;

    /// <summary>
    /// Whether Σ covers <paramref name="layer"/>: every layer under Σ = I, the posterior's layers under K-FAC (a curvature fitted
    /// on a layer selection holds only those, and the epistemic score sums over them alone, SPEC §2).
    /// </summary>
    public bool Covers(Layer layer) => Posterior is null || Posterior.Contains(layer.Id);

    /// <summary>The block of Σ on <paramref name="layer"/>'s weight, with its bias when <paramref name="withBias"/>.</summary>
    public LayerPosterior For(Layer layer, bool withBias, IComputeBackend backend) =>
        Posterior?[layer.Id] ?? new IsotropicLayerPosterior(layer.Id, layer.In, layer.Out, withBias, backend);
}

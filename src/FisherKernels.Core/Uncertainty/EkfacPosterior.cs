using FisherKernels.Backends;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>
/// The EK-FAC posterior of one layer (SPEC §3, §4): diagonal in the Kronecker eigenbasis like <see cref="DenseKroneckerPosterior"/>,
/// with the Fisher's own diagonal there, <c>M·E_ij + τ</c>, in place of K-FAC's <c>M·λ_G,i·λ_A,j + τ</c>. Every operation
/// (quadratic forms, sampling, the solve, output variances, the log-determinant) is the dense form's with those
/// denominators (<see cref="KronEigenbasis.WithCorrection"/>), so only the construction differs.
/// </summary>
public sealed class EkfacPosterior : DenseKroneckerPosterior
{
    internal EkfacPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options, CachedDecomposition? cached = null)
        : base(block, index, backend, options, correct: true, cached) { }
}

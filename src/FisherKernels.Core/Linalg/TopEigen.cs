using System.Numerics.Tensors;
using FisherKernels.Backends;

namespace FisherKernels.Linalg;

/// <summary>
/// Top-r eigenpairs of a symmetric positive semi-definite matrix by randomized subspace iteration
/// (Halko, Martinsson &amp; Tropp 2011, algorithm 4.4 with Rayleigh–Ritz): a seeded Gaussian start block of
/// r + oversampling vectors, repeated multiplication by A (the backend's GEMM) with float64 re-orthonormalization,
/// then the exact eigendecomposition of the small projected matrix. Builds U for the low-rank (Woodbury) posterior.
/// The error in the r-th pair shrinks like (λ_{l+1}/λ_r)^(2·iterations+1), l = r + oversampling.
/// </summary>
public static class TopEigen
{
    public static void Compute(IComputeBackend backend, ReadOnlySpan<float> a, int n, int r,
                               Span<float> eigenvalues, Span<float> eigenvectors,
                               int iterations = 8, int oversampling = 10, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (n < 0 || r < 0 || r > n) throw FisherKernelsException.Argument($"top eigenpairs: need 0 ≤ r ≤ n, got r {r}, n {n}");
        if (iterations < 0 || oversampling < 0) throw FisherKernelsException.Argument($"top eigenpairs: iterations ({iterations}) and oversampling ({oversampling}) must be non-negative");
        if (a.Length != (long)n * n) throw FisherKernelsException.Argument($"top eigenpairs of [{n} × {n}] need {(long)n * n} elements, got {a.Length}");
        if (eigenvalues.Length != r) throw FisherKernelsException.Argument($"top eigenpairs: {r} eigenvalue slots needed, got {eigenvalues.Length}");
        if (eigenvectors.Length != (long)n * r) throw FisherKernelsException.Argument($"top eigenpairs: {(long)n * r} eigenvector elements needed, got {eigenvectors.Length}");
        Finite.Require(a, "the matrix for the top eigenpairs");
        if (r == 0) return;

        int l = Math.Min(n, r + oversampling);
        var rng = new Random(seed);
        // The basis is kept as rows: Q [l × n], so Q·A = (A·Qᵀ)ᵀ for symmetric A is one row-major GEMM.
        var q = new float[l * n];
        var product = new float[l * n];
        var work = new double[l * n];
        for (int i = 0; i < q.Length; i++) q[i] = Gaussian(rng);
        Orthonormalize(q, work, l, n, rng);
        for (int it = 0; it < iterations; it++)
        {
            backend.Gemm(new GemmShape(l, n, n), q, a, product);
            Orthonormalize(product, work, l, n, rng);
            (q, product) = (product, q);
        }

        backend.Gemm(new GemmShape(l, n, n), q, a, product);
        var projected = new float[l * l];
        backend.Gemm(new GemmShape(l, l, n, TransB: true), product, q, projected); // Q·A·Qᵀ
        var small = new double[l * l];
        for (int i = 0; i < small.Length; i++) small[i] = projected[i];
        var ritzValues = new double[l];
        var ritzVectors = new double[l * l];
        backend.SymmetricEigen(small, l, ritzValues, ritzVectors);

        var top = new float[l * r]; // the last r Ritz vectors (largest first) as columns of [l × r]
        for (int t = 0; t < r; t++)
        {
            eigenvalues[t] = (float)ritzValues[l - 1 - t];
            for (int p = 0; p < l; p++) top[p * r + t] = (float)ritzVectors[p * l + l - 1 - t];
        }
        backend.Gemm(new GemmShape(n, r, l, TransA: true), q, top, eigenvectors); // Qᵀ·W
    }

    /// <summary>
    /// Modified Gram–Schmidt in float64, twice (one pass loses orthogonality on ill-conditioned blocks). A row that
    /// collapses — A has rank below l — is replaced by a fresh random direction so that Q stays a basis.
    /// </summary>
    private static void Orthonormalize(float[] rows, double[] work, int l, int n, Random rng)
    {
        for (int i = 0; i < work.Length; i++) work[i] = rows[i];
        for (int i = 0; i < l; i++)
        {
            var row = work.AsSpan(i * n, n);
            double original = Math.Sqrt(TensorPrimitives.Dot<double>(row, row));
            for (int attempt = 0; ; attempt++)
            {
                for (int pass = 0; pass < 2; pass++)
                    for (int p = 0; p < i; p++)
                    {
                        var previous = work.AsSpan(p * n, n);
                        TensorPrimitives.MultiplyAdd(previous, -TensorPrimitives.Dot<double>(previous, row), row, row);
                    }
                double norm = Math.Sqrt(TensorPrimitives.Dot<double>(row, row));
                if (norm > 1e-10 * original && norm > 0)
                {
                    TensorPrimitives.Divide(row, norm, row);
                    break;
                }
                if (attempt == 3) throw FisherKernelsException.Backend("top eigenpairs: could not extend the subspace basis");
                for (int j = 0; j < n; j++) row[j] = Gaussian(rng);
                original = Math.Sqrt(TensorPrimitives.Dot<double>(row, row));
            }
        }
        for (int i = 0; i < work.Length; i++) rows[i] = (float)work[i];
    }

    private static float Gaussian(Random rng) =>
        (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
}

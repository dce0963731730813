using FisherKernels.Backends;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>
/// <c>Σ = (M·A⊗G + τ·I)⁻¹</c> through both factors' eigenbases (SPEC §4): <c>vec(X)ᵀ Σ vec(X) = Σ_ij (Q_Gᵀ X Q_A)_ij² / (M λ_G,i λ_A,j + τ)</c>,
/// kernel family 2's <see cref="IComputeBackend.KronQuadratic"/>. When only k of G's eigenvalues are non-zero (a curvature
/// fitted on fewer positions than the layer is wide) and rotating only those is cheaper, the rest of Σ is the flat 1/τ
/// (<see cref="CurvedSubspace"/>).
/// </summary>
public class DenseKroneckerPosterior : LayerPosterior
{
    readonly IComputeBackend backend;
    readonly KronEigenbasis basis;

    /// <summary>
    /// The G eigenvectors with a non-zero eigenvalue, packed [out × k] (<see cref="Q"/>), and their rows of the inverse
    /// denominators [k × in(+1)]. Along every other G eigenvector Σ is <see cref="FlatWeight"/> = 1/τ, whatever the A
    /// direction, so a gradient needs no rotation there.
    /// </summary>
    sealed record CurvedSubspace(float[] Q, float[] Weights, int K, float FlatWeight);
    readonly CurvedSubspace? curved;

    internal DenseKroneckerPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options, CachedDecomposition? cached = null)
        : this(block, index, backend, options, correct: false, cached) { }

    /// <param name="correct">Whether the curvature's eigenvalues are the block's E (<see cref="EkfacPosterior"/>) instead of the factors' products.</param>
    /// <param name="cached">The eigenpairs as decomposed before (the posterior cache), so scores are bit for bit those of a fresh build; τ, M and E enter here.</param>
    private protected DenseKroneckerPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options, bool correct, CachedDecomposition? cached)
        : base(block.Layer, block.HasBias, block.ADim, block.GDim, block.Positions, options.PriorPrecisionOf(block.Layer), index)
    {
        this.backend = backend;
        basis = cached is null
            ? KronEigenbasis.Create(backend, block.A.Data, ADim, block.G.Data, GDim, Positions, PriorPrecision)
            : new KronEigenbasis(cached.Float32("QA", ADim, ADim), cached.Float64("lambda_A", ADim), cached.Float32("QG", GDim, GDim), cached.Float64("lambda_G", GDim), Positions, PriorPrecision);
        if (correct) basis = basis.WithCorrection((block.E ?? throw FisherKernelsException.Argument($"layer '{block.Layer}' has no EK-FAC E")).Data);
        RangeA = RangeOf(basis.LambdaA);
        RangeG = RangeOf(basis.LambdaG);
        curved = CurvedSubspaceOf(basis);
    }

    /// <summary>Bytes of the dense form of an [a]² ⊗ [g]² block: Q_A, Q_G and the inverse denominators, float32.</summary>
    public static long Bytes(int aDim, int gDim) => 4L * ((long)aDim * aDim + (long)gDim * gDim + (long)aDim * gDim);

    protected override string Form => basis.Correction is null ? "dense eigenbasis" : "EK-FAC, dense eigenbasis";

    /// <summary>Both factors' eigenpairs (the float32 vectors and float64 values the basis holds), independent of τ.</summary>
    internal override IEnumerable<(string Name, NdArray Tensor)> Decomposition() =>
    [
        ("QA", new NdArray<float>([ADim, ADim], basis.QA)),
        ("lambda_A", new NdArray<double>([ADim], basis.LambdaA)),
        ("QG", new NdArray<float>([GDim, GDim], basis.QG)),
        ("lambda_G", new NdArray<double>([GDim], basis.LambdaG)),
    ];

    protected override void QuadraticCore(ReadOnlySpan<float> xs, int count, Span<float> output) => backend.KronQuadratic(basis, xs, count, output);

    protected override void ProjectInputRowsCore(ReadOnlySpan<float> homogeneousInputs, int rows, Span<float> projected) =>
        backend.Gemm(new GemmShape(rows, ADim, ADim), homogeneousInputs, basis.QA, projected);

    public override long OuterProductWorkspace(int rows) => (long)GDim * ADim + (long)rows * GDim
        + (curved is null ? 0 : (long)curved.K * (ADim + rows) + (long)rows * rows);

    /// <summary>Only some G directions are curved: the flat rest's norm comes from the input Gram.</summary>
    public override bool UsesInputGram => curved is not null;

    /// <summary>
    /// <c>Q_Gᵀ X Q_A = (G Q_G)ᵀ (Ã Q_A)</c>, then the eigenvalue-weighted squares (SPEC §4), 2·rows·out·(out + in) flops instead
    /// of the weight gradient's rotation on both sides. With a curved subspace of k directions the k are rotated and the
    /// rest is the plain square norm of <c>(G − G Q_k Q_kᵀ)ᵀ (Ã Q_A)</c> times 1/τ: 2·rows·(2·out·k + k·in + out·in) flops, or
    /// with the input Gram that norm as <c>Σ (Ã Ãᵀ) ⊙ (G⊥ G⊥ᵀ)</c>: out·in becomes rows·out.
    /// </summary>
    protected override double OuterProductQuadraticCore(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows,
                                                        Span<float> workspace, ReadOnlySpan<float> inputGram)
    {
        long size = (long)GDim * ADim;
        Span<float> x = workspace[..(int)size];
        Span<float> rotated = workspace.Slice((int)size, rows * GDim);
        if (curved is null)
        {
            backend.Gemm(new GemmShape(rows, GDim, GDim), outputGradients, basis.QG, rotated);
            backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), rotated, projectedInputs, x);
            return WeightedSquares(x, basis.InverseDenominators);
        }
        int k = curved.K;
        Span<float> inCurved = workspace.Slice((int)size + rows * GDim, rows * k), xCurved = workspace.Slice((int)size + rows * GDim + rows * k, k * ADim);
        backend.Gemm(new GemmShape(rows, k, GDim), outputGradients, curved.Q, inCurved);
        outputGradients.CopyTo(rotated);
        backend.Gemm(new GemmShape(rows, GDim, k, TransB: true, Alpha: -1, Beta: 1), inCurved, curved.Q, rotated);
        backend.Gemm(new GemmShape(k, ADim, rows, TransA: true), inCurved, projectedInputs, xCurved);
        double curvedPart = WeightedSquares(xCurved, curved.Weights);
        if (inputGram.IsEmpty)
        {
            backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), rotated, projectedInputs, x);
            return curvedPart + curved.FlatWeight * WeightedSquares(x, default);
        }
        Span<float> outputGram = workspace.Slice((int)size + rows * GDim + rows * k + k * ADim, rows * rows);
        backend.Gemm(new GemmShape(rows, rows, GDim, TransB: true), rotated, rotated, outputGram);
        double flat = 0;
        for (int i = 0; i < outputGram.Length; i++) flat += (double)outputGram[i] * inputGram[i];
        return curvedPart + curved.FlatWeight * flat;
    }

    /// <summary>In the Kronecker eigenbasis: <c>δ = Q_G (E ⊘ √(M λ_G λ_Aᵀ + τ)) Q_Aᵀ</c>, E standard normal.</summary>
    private protected override void SamplePerturbationCore(ref SplitMix64 rng, Span<float> delta)
    {
        long size = (long)GDim * ADim;
        var scaled = new float[size];
        for (long i = 0; i < size; i++) scaled[i] = (float)(rng.NextGaussian() * Math.Sqrt(basis.InverseDenominators[i]));
        var left = new float[size];
        backend.Gemm(new GemmShape(GDim, ADim, GDim), basis.QG, scaled, left);
        backend.Gemm(new GemmShape(GDim, ADim, ADim, TransB: true), left, basis.QA, delta);
    }

    /// <summary><c>Q_G ((Q_Gᵀ X Q_A) ⊘ (M λ_G λ_Aᵀ + τ)) Q_Aᵀ</c>: four products, the inverse in the eigenbasis.</summary>
    protected override void SolveCore(ReadOnlySpan<float> x, Span<float> result)
    {
        long size = (long)GDim * ADim;
        var left = new float[size];
        var rotated = new float[size];
        backend.Gemm(new GemmShape(GDim, ADim, GDim, TransA: true), basis.QG, x, left);
        backend.Gemm(new GemmShape(GDim, ADim, ADim), left, basis.QA, rotated);
        System.Numerics.Tensors.TensorPrimitives.Multiply(rotated, basis.InverseDenominators, rotated);
        backend.Gemm(new GemmShape(GDim, ADim, GDim), basis.QG, rotated, left);
        backend.Gemm(new GemmShape(GDim, ADim, ADim, TransB: true), left, basis.QA, result);
    }

    /// <summary><c>Σ_ij log(M λ_G,i λ_A,j + τ)</c> (EK-FAC: <c>M E_ij</c>), in float64 from the eigenvalues.</summary>
    public override double LogDeterminant()
    {
        double sum = 0;
        for (int i = 0; i < GDim; i++)
            for (int j = 0; j < ADim; j++) sum += Math.Log(basis.CurvatureEigenvalue(i, j) + PriorPrecision);
        return sum;
    }

    /// <summary><c>var s_y = Σ_ij Q_G[y,i]² β_j² / (M λ_G,i λ_A,j + τ)</c> with <c>β = Q_Aᵀ ã</c>.</summary>
    protected override void TargetOutputVarianceCore(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        float[] squared = ProjectInputs(backend, basis.QA, inputs, rows, inF);
        for (int r = 0; r < rows; r++)
        {
            if (targets[r] == -100) continue;
            long y = targets[r];
            ReadOnlySpan<float> beta2 = squared.AsSpan(r * ADim, ADim);
            double sum = 0;
            for (int i = 0; i < GDim; i++)
            {
                double q = basis.QG[y * GDim + i];
                sum += q * q * System.Numerics.Tensors.TensorPrimitives.Dot(beta2, basis.InverseDenominators.AsSpan(i * ADim, ADim));
            }
            variance[r] = sum;
        }
    }

    /// <summary>
    /// <c>var s_v = Σ_ij Q_G[v,i]² β_j² / (M λ_G,i λ_A,j + τ)</c> with <c>β = Q_Aᵀ ã</c>, for every output v: for the output
    /// layer the per-token logit variance, without any Jacobian.
    /// </summary>
    public override void OutputVariance(ReadOnlySpan<float> inputs, int rows, Span<float> variance)
    {
        int inF = HasBias ? ADim - 1 : ADim;
        if (inputs.Length != (long)rows * inF || variance.Length != (long)rows * GDim)
            throw FisherKernelsException.Argument($"layer '{Layer}': output variance of {rows} rows needs inputs [{rows} × {inF}] and variance [{rows} × {GDim}]");
        if (rows == 0) return;
        float[] projected = ProjectInputs(backend, basis.QA, inputs, rows, inF);
        // C[r, i] = Σ_j β_rj² / (M λ_G,i λ_A,j + τ), then var[r, v] = Σ_i C[r, i] Q_G[v, i]².
        var weights = new float[(long)rows * GDim];
        backend.Gemm(new GemmShape(rows, GDim, ADim, TransB: true), projected, basis.InverseDenominators, weights);
        var squaredQg = new float[basis.QG.Length];
        for (int i = 0; i < squaredQg.Length; i++) squaredQg[i] = basis.QG[i] * basis.QG[i];
        backend.Gemm(new GemmShape(rows, GDim, GDim, TransB: true), weights, squaredQg, variance);
    }

    /// <summary>
    /// Delta-method variance of <c>p_y = softmax(s)_y</c> for an output layer: <c>uᵀ Cov(s) u</c> with <c>u = p_y (e_y − p)</c>,
    /// <c>Cov(s) = Q_G diag(C_r) Q_Gᵀ</c>. <paramref name="logits"/> <c>[rows × out]</c> are the layer's outputs; rows whose
    /// target is -100 get NaN.
    /// </summary>
    public override void TargetProbabilityVariance(ReadOnlySpan<float> inputs, ReadOnlySpan<float> logits, ReadOnlySpan<long> targets, int rows, Span<double> variance)
    {
        int inF = HasBias ? ADim - 1 : ADim;
        if (inputs.Length != (long)rows * inF || logits.Length != (long)rows * GDim || targets.Length != rows || variance.Length != rows)
            throw FisherKernelsException.Argument($"layer '{Layer}': probability variance of {rows} rows needs inputs [{rows} × {inF}], logits [{rows} × {GDim}], {rows} targets and outputs");
        if (rows == 0) return;
        float[] projected = ProjectInputs(backend, basis.QA, inputs, rows, inF);
        var weights = new float[(long)rows * GDim];
        backend.Gemm(new GemmShape(rows, GDim, ADim, TransB: true), projected, basis.InverseDenominators, weights);
        var u = new float[(long)rows * GDim];
        for (int r = 0; r < rows; r++)
        {
            long y = targets[r];
            if (y == -100) continue;
            if (y < 0 || y >= GDim) throw FisherKernelsException.Argument($"layer '{Layer}': target {y} at row {r} is outside the {GDim} outputs");
            ReadOnlySpan<float> z = logits.Slice(r * GDim, GDim);
            double max = double.NegativeInfinity, total = 0;
            foreach (float v in z) max = Math.Max(max, v);
            foreach (float v in z) total += Math.Exp(v - max);
            double py = Math.Exp(z[(int)y] - max) / total;
            for (int v = 0; v < GDim; v++) u[r * GDim + v] = (float)(py * ((v == y ? 1 : 0) - Math.Exp(z[v] - max) / total));
        }
        var rotated = new float[u.Length]; // (Q_Gᵀ u_r) as rows
        backend.Gemm(new GemmShape(rows, GDim, GDim), u, basis.QG, rotated);
        for (int r = 0; r < rows; r++)
        {
            if (targets[r] == -100) { variance[r] = double.NaN; continue; }
            double sum = 0;
            for (int i = 0; i < GDim; i++) sum += (double)rotated[r * GDim + i] * rotated[r * GDim + i] * weights[r * GDim + i];
            variance[r] = sum;
        }
    }

    /// <summary>The curved subspace of G when rotating only it costs less than the full rotation: k·(2·out + in) below out².</summary>
    static CurvedSubspace? CurvedSubspaceOf(KronEigenbasis basis)
    {
        int g = basis.GDim, a = basis.ADim;
        int[] kept = Enumerable.Range(0, g).Where(i => basis.LambdaG[i] != 0).ToArray();
        int k = kept.Length;
        if (k == g || (long)k * (2L * g + a) >= (long)g * g) return null;
        var q = new float[(long)g * k];
        var weights = new float[(long)k * a];
        for (int c = 0; c < k; c++)
        {
            for (int r = 0; r < g; r++) q[(long)r * k + c] = basis.QG[(long)r * g + kept[c]];
            basis.InverseDenominators.AsSpan(kept[c] * a, a).CopyTo(weights.AsSpan(c * a, a));
        }
        int flat = Array.IndexOf(basis.LambdaG, 0.0);
        return new CurvedSubspace(q, weights, k, basis.InverseDenominators[(long)flat * a]);
    }
}

using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.Linalg;

namespace FisherKernels.Uncertainty;

/// <summary>Options of the Laplace posterior (SPEC §4 and <c>score --method kfac</c>).</summary>
public sealed record PosteriorOptions
{
    /// <summary>τ, <c>--prior-precision</c>.</summary>
    public double PriorPrecision { get; init; } = 1.0;

    /// <summary>r, <c>--rank</c>: eigenvectors kept of a factor too large for a dense eigenbasis.</summary>
    public int Rank { get; init; } = 64;

    /// <summary>Largest dense eigenbasis (bytes) a layer may hold; a layer above it gets the low-rank (Woodbury) form.</summary>
    public long MemoryBudgetBytes { get; init; } = 1L << 30;

    public void Validate()
    {
        if (!double.IsFinite(PriorPrecision) || !(PriorPrecision > 0))
            throw FisherKernelsException.Argument($"--prior-precision must be a positive number, got {PriorPrecision}");
        if (Rank < 1) throw FisherKernelsException.Argument($"--rank must be at least 1, got {Rank}");
        if (MemoryBudgetBytes < 0) throw FisherKernelsException.Argument($"--memory-budget must be non-negative, got {MemoryBudgetBytes}");
    }
}

/// <summary>Smallest and largest eigenvalue of a Kronecker factor.</summary>
public readonly record struct EigenvalueRange(double Min, double Max)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"[{Min:G4}, {Max:G4}]");
}

/// <summary>
/// The K-FAC Laplace posterior (SPEC §4): per layer the covariance <c>Σ = (M·A⊗G + τ·I)⁻¹</c>, block-diagonal over
/// layers, each block decomposed once (float64 eigendecompositions) when the posterior is built.
/// </summary>
public sealed class KfacPosterior
{
    readonly Dictionary<string, LayerPosterior> byLayer = new(StringComparer.Ordinal);

    public KfacPosterior(KfacCurvature curvature, IComputeBackend backend, PosteriorOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(curvature);
        ArgumentNullException.ThrowIfNull(backend);
        Options = options ?? new PosteriorOptions();
        Options.Validate();
        Layers = curvature.Layers.Select((block, i) => new LayerPosterior(block, i, backend, Options)).ToArray();
        foreach (LayerPosterior l in Layers) byLayer.Add(l.Layer, l);
    }

    public PosteriorOptions Options { get; }
    public double PriorPrecision => Options.PriorPrecision;
    public IReadOnlyList<LayerPosterior> Layers { get; }

    public LayerPosterior this[string layer] =>
        byLayer.TryGetValue(layer, out LayerPosterior? l) ? l : throw FisherKernelsException.Argument($"the posterior has no layer '{layer}'");

    /// <summary>
    /// The epistemic scores of one layer for one sequence (SPEC §4): <paramref name="tokenGradients"/> holds
    /// <paramref name="count"/> gradients <c>∇p_t = [∇W | ∇b]</c> (<c>[out × in(+1)]</c> each, one per targeted position).
    /// Adds <c>∇p_tᵀ Σ ∇p_t</c> to <paramref name="tokenEpistemic"/> and returns <c>∇p̄ᵀ Σ ∇p̄</c> for the mean gradient
    /// (cross terms between positions included). Sum both over layers for the block-diagonal posterior.
    /// </summary>
    public double AddEpistemic(string layer, ReadOnlySpan<float> tokenGradients, int count, Span<double> tokenEpistemic)
    {
        LayerPosterior l = this[layer];
        int size = l.GDim * l.ADim;
        if (count < 1 || tokenGradients.Length != (long)count * size || tokenEpistemic.Length != count)
            throw FisherKernelsException.Argument($"layer '{layer}': {count} gradients of [{l.GDim} × {l.ADim}] need {(long)count * size} values and {count} scores, got {tokenGradients.Length} and {tokenEpistemic.Length}");
        var all = new float[(count + 1) * size];
        tokenGradients.CopyTo(all);
        Span<float> mean = all.AsSpan(count * size, size);
        for (int t = 0; t < count; t++)
            for (int i = 0; i < size; i++) mean[i] += tokenGradients[t * size + i];
        for (int i = 0; i < size; i++) mean[i] /= count;
        var quadratic = new float[count + 1];
        l.Quadratic(all, count + 1, quadratic);
        for (int t = 0; t < count; t++) tokenEpistemic[t] += quadratic[t];
        return quadratic[count];
    }

    /// <summary>One line per layer: eigenvalue ranges and the form of its inverse.</summary>
    public IEnumerable<string> Describe() => Layers.Select(l => l.Describe());
}

/// <summary>
/// One layer's posterior covariance <c>Σ = (M·A⊗G + τ·I)⁻¹</c> on <c>vec([W | b])</c>, <c>W</c> as <c>[out, in]</c>.
/// Dense form: both factors' eigenbases (kernel family 2's <see cref="IComputeBackend.KronQuadratic"/>).
/// Low-rank form, for a layer whose dense eigenbases exceed the memory budget: the larger factor F becomes
/// <c>D + U Λ Uᵀ</c>, U its top-r eigenvectors and D the diagonal of the rest (so diag F is kept exactly); in the
/// eigenbasis of the other factor each column then needs <c>(M·λ·(D + UΛUᵀ) + τ·I)⁻¹</c>, a Woodbury solve.
/// </summary>
public sealed class LayerPosterior
{
    readonly IComputeBackend backend;
    readonly int index;
    readonly KronEigenbasis? dense;
    readonly CurvedSubspace? curved;

    /// <summary>
    /// The dense form's G eigenvectors with a non-zero eigenvalue, packed [out × k] (<see cref="Q"/>), and their rows of the
    /// inverse denominators [k × in(+1)]. Along every other G eigenvector Σ is <see cref="FlatWeight"/> = 1/τ, whatever the
    /// A direction, so a gradient needs no rotation there (a curvature fitted on fewer positions than the layer is wide).
    /// </summary>
    sealed record CurvedSubspace(float[] Q, float[] Weights, int K, float FlatWeight);
    readonly LowRankFactor? lowRank;

    /// <summary>The low-rank form: the small factor's eigenbasis, the large factor as diagonal plus low rank.</summary>
    sealed record LowRankFactor(bool LargeIsA, float[] SmallQ, double[] SmallLambda, int SmallDim,
                                float[] U, float[] Lambda, float[] Diagonal, int LargeDim, int Rank);

    internal LayerPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options)
    {
        this.backend = backend;
        this.index = index;
        Layer = block.Layer;
        HasBias = block.HasBias;
        Positions = block.Positions;
        PriorPrecision = options.PriorPrecision;
        ADim = block.ADim;
        GDim = block.GDim;
        DenseBytes = 4L * ((long)ADim * ADim + (long)GDim * GDim + (long)ADim * GDim);
        try
        {
            if (DenseBytes <= options.MemoryBudgetBytes || Math.Max(ADim, GDim) <= options.Rank)
            {
                dense = KronEigenbasis.Create(backend, block.A.Data, ADim, block.G.Data, GDim, Positions, PriorPrecision);
                RangeA = RangeOf(dense.LambdaA);
                RangeG = RangeOf(dense.LambdaG);
                curved = CurvedSubspaceOf(dense);
            }
            else lowRank = BuildLowRank(block, options);
        }
        catch (FisherKernelsException e) when (e.Kind == ErrorKind.InvalidArgument && !e.Message.Contains($"'{Layer}'", StringComparison.Ordinal))
        {
            throw FisherKernelsException.Argument($"layer '{Layer}': {e.Message}");
        }
    }

    public string Layer { get; }
    public bool HasBias { get; }
    public double Positions { get; }
    public double PriorPrecision { get; }
    public int ADim { get; }
    public int GDim { get; }

    /// <summary>Bytes the dense form needs (Q_A, Q_G and the inverse denominators, float32).</summary>
    public long DenseBytes { get; }

    public bool IsLowRank => lowRank is not null;
    public EigenvalueRange RangeA { get; private set; }
    public EigenvalueRange RangeG { get; private set; }

    public string Describe() =>
        $"layer '{Layer}': A [{ADim}]² eigenvalues {RangeA}, G [{GDim}]² eigenvalues {RangeG}, M {Positions.ToString("R", CultureInfo.InvariantCulture)}, " +
        (lowRank is null ? "dense eigenbasis" : $"low rank {lowRank.Rank} on {(lowRank.LargeIsA ? "A" : "G")} (Woodbury)");

    /// <summary>
    /// For each of <paramref name="count"/> matrices X <c>[out × in(+1)]</c> in <paramref name="xs"/>:
    /// <c>vec(X)ᵀ Σ vec(X)</c>.
    /// </summary>
    public void Quadratic(ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        long size = (long)GDim * ADim;
        if (count < 0 || xs.Length != count * size || output.Length != count)
            throw FisherKernelsException.Argument($"layer '{Layer}': {count} matrices of [{GDim} × {ADim}] need {count * size} values and {count} outputs, got {xs.Length} and {output.Length}");
        if (count == 0) return;
        if (dense is not null) backend.KronQuadratic(dense, xs, count, output);
        else WoodburyQuadratic(lowRank!, xs, count, output);
    }

    /// <summary>
    /// The rows of Ã (<c>[rows × in(+1)]</c>, the layer's inputs with the homogeneous 1 when it has a bias) as
    /// <see cref="OuterProductQuadratic"/> takes them: <c>Ã Q_A</c> for the dense form, Ã itself for the low-rank one.
    /// Computed once per sequence and shared by all its positions.
    /// </summary>
    public void ProjectInputRows(ReadOnlySpan<float> homogeneousInputs, int rows, Span<float> projected)
    {
        if (homogeneousInputs.Length != (long)rows * ADim || projected.Length != (long)rows * ADim)
            throw FisherKernelsException.Argument($"layer '{Layer}': {rows} input rows of {ADim} need {(long)rows * ADim} values in and out, got {homogeneousInputs.Length} and {projected.Length}");
        if (rows == 0) return;
        if (dense is not null) backend.Gemm(new GemmShape(rows, ADim, ADim), homogeneousInputs, dense.QA, projected);
        else homogeneousInputs.CopyTo(projected);
    }

    /// <summary>Floats of workspace <see cref="OuterProductQuadratic"/> needs for <paramref name="rows"/> rows.</summary>
    public long OuterProductWorkspace(int rows) => (long)GDim * ADim + (dense is null ? 0 : (long)rows * GDim)
        + (curved is null ? 0 : (long)curved.K * (ADim + rows) + (long)rows * rows);

    /// <summary>Whether <see cref="OuterProductQuadratic"/> uses the Gram <c>Ã Ãᵀ</c> of the rows when given one (only some G directions are curved).</summary>
    public bool UsesInputGram => curved is not null;

    /// <summary>
    /// <c>vec(X)ᵀ Σ vec(X)</c> for a gradient that reaches the layer through its outputs, <c>X = Σ_m g_m ã_mᵀ = Gᵀ Ã</c>:
    /// <paramref name="outputGradients"/> G <c>[rows × out]</c>, <paramref name="projectedInputs"/> the same rows of
    /// <see cref="ProjectInputRows"/>. Dense form: <c>Q_Gᵀ X Q_A = (G Q_G)ᵀ (Ã Q_A)</c>, then the eigenvalue-weighted squares
    /// (SPEC §4), 2·rows·out·(out + in) flops instead of the weight gradient's rotation on both sides. When only k of
    /// G's eigenvalues are non-zero and that is cheaper, the k curved directions are rotated and the rest is the plain
    /// square norm of <c>(G − G Q_k Q_kᵀ)ᵀ (Ã Q_A)</c> times 1/τ: 2·rows·(2·out·k + k·in + out·in) flops, or with
    /// <paramref name="inputGram"/> (<c>Ã Ãᵀ</c> of the same rows, <c>[rows × rows]</c>, when <see cref="UsesInputGram"/>) that
    /// norm as <c>Σ (Ã Ãᵀ) ⊙ (G⊥ G⊥ᵀ)</c>: out·in becomes rows·out.
    /// </summary>
    public double OuterProductQuadratic(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows, Span<float> workspace,
                                        ReadOnlySpan<float> inputGram = default)
    {
        if (!inputGram.IsEmpty && (curved is null || inputGram.Length != (long)rows * rows))
            throw FisherKernelsException.Argument($"layer '{Layer}': an input Gram of [{rows} × {rows}] is for a layer with a curved subspace, got {inputGram.Length} values");
        long size = (long)GDim * ADim;
        if (outputGradients.Length != (long)rows * GDim || projectedInputs.Length != (long)rows * ADim || workspace.Length < OuterProductWorkspace(rows))
            throw FisherKernelsException.Argument($"layer '{Layer}': {rows} rows need output gradients [{rows} × {GDim}], inputs [{rows} × {ADim}] and {OuterProductWorkspace(rows)} floats of workspace");
        if (rows == 0) return 0;
        Span<float> x = workspace[..(int)size];
        if (dense is null)
        {
            backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), outputGradients, projectedInputs, x);
            var single = new float[1];
            WoodburyQuadratic(lowRank!, x, 1, single);
            return single[0];
        }
        Span<float> rotated = workspace.Slice((int)size, rows * GDim);
        if (curved is null)
        {
            backend.Gemm(new GemmShape(rows, GDim, GDim), outputGradients, dense.QG, rotated);
            backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), rotated, projectedInputs, x);
            return WeightedSquares(x, dense.InverseDenominators);
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

    /// <summary>Σ x² w (Σ x² when <paramref name="w"/> is empty), in float blocks summed in double: a million float products summed in float would lose digits. Squares x in place.</summary>
    static double WeightedSquares(Span<float> x, ReadOnlySpan<float> w)
    {
        const int Block = 4096;
        double sum = 0;
        for (int i = 0; i < x.Length; i += Block)
        {
            Span<float> block = x.Slice(i, Math.Min(Block, x.Length - i));
            if (w.IsEmpty) { sum += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(block); continue; }
            System.Numerics.Tensors.TensorPrimitives.Multiply(block, block, block);
            sum += System.Numerics.Tensors.TensorPrimitives.Dot(block, w.Slice(i, block.Length));
        }
        return sum;
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

    /// <summary>
    /// Closed-form variance of every output <c>s_v = (W a + b)_v</c> of this layer under its own posterior, for
    /// <paramref name="rows"/> inputs a (<c>[rows × in]</c>): with <c>β = Q_Aᵀ ã</c>,
    /// <c>var s_v = Σ_ij Q_G[v,i]² β_j² / (M λ_G,i λ_A,j + τ)</c>; written to <paramref name="variance"/> <c>[rows × out]</c>.
    /// For the output layer this is the per-token logit variance, without any Jacobian.
    /// </summary>
    public void OutputVariance(ReadOnlySpan<float> inputs, int rows, Span<float> variance)
    {
        KronEigenbasis basis = RequireDense("the closed-form output variance");
        int inF = HasBias ? ADim - 1 : ADim;
        if (inputs.Length != (long)rows * inF || variance.Length != (long)rows * GDim)
            throw FisherKernelsException.Argument($"layer '{Layer}': output variance of {rows} rows needs inputs [{rows} × {inF}] and variance [{rows} × {GDim}]");
        if (rows == 0) return;
        float[] projected = ProjectInputs(basis.QA, inputs, rows, inF);
        // C[r, i] = Σ_j β_rj² / (M λ_G,i λ_A,j + τ), then var[r, v] = Σ_i C[r, i] Q_G[v, i]².
        var weights = new float[(long)rows * GDim];
        backend.Gemm(new GemmShape(rows, GDim, ADim, TransB: true), projected, basis.InverseDenominators, weights);
        var squaredQg = new float[basis.QG.Length];
        for (int i = 0; i < squaredQg.Length; i++) squaredQg[i] = basis.QG[i] * basis.QG[i];
        backend.Gemm(new GemmShape(rows, GDim, GDim, TransB: true), weights, squaredQg, variance);
    }

    /// <summary>
    /// Closed-form variance of the target output <c>s_y = (W a + b)_y</c> under this layer's posterior (for the output layer,
    /// the variance of the target logit from the last layer alone), in the dense and the low-rank form. Its gradient is the
    /// rank-1 <c>e_y ãᵀ</c>, so <c>var s_y = vec(e_y ãᵀ)ᵀ Σ vec(e_y ãᵀ)</c>; dense: <c>Σ_ij Q_G[y,i]² β_j² / (M λ_G,i λ_A,j + τ)</c>
    /// with <c>β = Q_Aᵀ ã</c>. <paramref name="inputs"/> <c>[rows × in]</c> (without the homogeneous 1); rows whose target is
    /// -100 get NaN.
    /// </summary>
    public void TargetOutputVariance(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, Span<double> variance)
    {
        int inF = HasBias ? ADim - 1 : ADim;
        if (rows < 0 || inputs.Length != (long)rows * inF || targets.Length != rows || variance.Length != rows)
            throw FisherKernelsException.Argument($"layer '{Layer}': target output variance of {rows} rows needs inputs [{rows} × {inF}], {rows} targets and outputs");
        for (int r = 0; r < rows; r++)
            if (targets[r] != -100 && (targets[r] < 0 || targets[r] >= GDim))
                throw FisherKernelsException.Argument($"layer '{Layer}': target {targets[r]} at row {r} is outside the {GDim} outputs");
        variance.Clear();
        if (rows > 0)
        {
            if (dense is not null) DenseTargetVariance(dense, inputs, targets, rows, inF, variance);
            else if (lowRank!.LargeIsA) LowRankTargetVarianceLargeA(lowRank, inputs, targets, rows, inF, variance);
            else LowRankTargetVarianceLargeG(lowRank, inputs, targets, rows, inF, variance);
        }
        for (int r = 0; r < rows; r++)
            if (targets[r] == -100) variance[r] = double.NaN;
    }

    void DenseTargetVariance(KronEigenbasis basis, ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        float[] squared = ProjectInputs(basis.QA, inputs, rows, inF);
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
    /// Low rank with G (the outputs) large, the usual output layer. In A's eigenbasis <c>Y = X Q_A = e_y βᵀ</c>, so
    /// <c>var s_y = Σ_j β_j² [P_j⁻¹]_yy</c>, P_j the Woodbury block of <see cref="WoodburyQuadratic"/>. In the scaled form
    /// <c>V = D_j^-½ U S_j^½</c>, <c>P_j⁻¹ = D_j^-½ (I − V (I + VᵀV)⁻¹ Vᵀ) D_j^-½</c>, so <c>[P_j⁻¹]_yy = (1 − v_yᵀ C⁻¹ v_y) / d_y</c>
    /// with v_y row y of V: one r×r capacitance per j and one small solve per distinct target, nothing of the vocabulary's size
    /// beyond V.
    /// </summary>
    void LowRankTargetVarianceLargeG(LowRankFactor f, ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        float[] squared = ProjectInputs(f.SmallQ, inputs, rows, inF);
        var slots = new Dictionary<long, int>();
        for (int t = 0; t < rows; t++)
            if (targets[t] != -100) slots.TryAdd(targets[t], slots.Count);
        int k = slots.Count;
        if (k == 0) return;
        long[] ys = new long[k];
        foreach (var (y, slot) in slots) ys[slot] = y;

        var v = new float[(long)n * r];
        var sqrtS = new double[r];
        var vtv = new float[r * r];
        var capacitance = new double[r * r];
        var solved = new double[r * k];
        var h = new double[k];
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int c = 0; c < r; c++) sqrtS[c] = Math.Sqrt(scale * f.Lambda[c]);
            for (int i = 0; i < n; i++)
            {
                double invSqrtD = 1 / Math.Sqrt(scale * f.Diagonal[i] + PriorPrecision);
                for (int c = 0; c < r; c++) v[(long)i * r + c] = (float)(f.U[(long)i * r + c] * sqrtS[c] * invSqrtD);
            }
            backend.Gemm(new GemmShape(r, r, n, TransA: true), v, v, vtv);
            for (int a = 0; a < r; a++)
                for (int b = 0; b < r; b++) capacitance[a * r + b] = (a == b ? 1 : 0) + 0.5 * ((double)vtv[a * r + b] + vtv[b * r + a]);
            if (!Cholesky.TryFactor(capacitance, r, useNative: true))
                throw FisherKernelsException.Backend($"layer '{Layer}': the Woodbury capacitance I + VᵀV [{r} × {r}] is not positive definite");
            for (int a = 0; a < r; a++)
                for (int s = 0; s < k; s++) solved[a * k + s] = v[ys[s] * r + a];
            Cholesky.Solve(capacitance, r, solved, k);
            for (int s = 0; s < k; s++)
            {
                double quadratic = 0;
                for (int a = 0; a < r; a++) quadratic += solved[a * k + s] * v[ys[s] * r + a];
                h[s] = (1 - quadratic) / (scale * f.Diagonal[ys[s]] + PriorPrecision);
            }
            for (int t = 0; t < rows; t++)
                if (targets[t] != -100) variance[t] += squared[(long)t * m + j] * h[slots[targets[t]]];
        }
    }

    /// <summary>
    /// Low rank with A (the inputs) large. In G's eigenbasis <c>Y = Xᵀ Q_G = ã (Q_Gᵀ e_y)ᵀ</c>, so
    /// <c>var s_y = Σ_j Q_G[y,j]² ãᵀ P_j⁻¹ ã</c>: one Woodbury solve per j for all rows at once.
    /// </summary>
    void LowRankTargetVarianceLargeA(LowRankFactor f, ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        var columns = new float[(long)n * rows]; // Ã as columns [n × rows]
        for (int t = 0; t < rows; t++)
        {
            for (int i = 0; i < inF; i++) columns[(long)i * rows + t] = inputs[t * inF + i];
            if (HasBias) columns[(long)inF * rows + t] = 1;
        }
        var solved = new float[columns.Length];
        var (d, s) = (new float[n], new float[r]);
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int i = 0; i < n; i++) d[i] = (float)(scale * f.Diagonal[i] + PriorPrecision);
            for (int c = 0; c < r; c++) s[c] = (float)(scale * f.Lambda[c]);
            backend.WoodburyApply(d, f.U, s, n, r, columns, rows, solved);
            for (int t = 0; t < rows; t++)
            {
                if (targets[t] == -100) continue;
                double q = f.SmallQ[targets[t] * m + j], quadratic = 0;
                for (int i = 0; i < n; i++) quadratic += (double)columns[(long)i * rows + t] * solved[(long)i * rows + t];
                variance[t] += q * q * quadratic;
            }
        }
    }

    /// <summary>
    /// Closed-form (delta-method) variance of <c>p_y = softmax(s)_y</c> for an output layer: <c>uᵀ Cov(s) u</c> with
    /// <c>u = p_y (e_y − p)</c>, <c>Cov(s) = Q_G diag(C_r) Q_Gᵀ</c>. <paramref name="logits"/> <c>[rows × out]</c> are the
    /// layer's outputs; rows whose target is -100 get NaN.
    /// </summary>
    public void TargetProbabilityVariance(ReadOnlySpan<float> inputs, ReadOnlySpan<float> logits, ReadOnlySpan<long> targets, int rows, Span<double> variance)
    {
        KronEigenbasis basis = RequireDense("the closed-form probability variance");
        int inF = HasBias ? ADim - 1 : ADim;
        if (inputs.Length != (long)rows * inF || logits.Length != (long)rows * GDim || targets.Length != rows || variance.Length != rows)
            throw FisherKernelsException.Argument($"layer '{Layer}': probability variance of {rows} rows needs inputs [{rows} × {inF}], logits [{rows} × {GDim}], {rows} targets and outputs");
        if (rows == 0) return;
        float[] projected = ProjectInputs(basis.QA, inputs, rows, inF);
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

    /// <summary>
    /// Draws <c>δ = [δW | δb] ~ N(0, Σ)</c> (<c>[out × in(+1)]</c>). Dense form, in the Kronecker eigenbasis:
    /// <c>δ = Q_G (E ⊘ √(M λ_G λ_Aᵀ + τ)) Q_Aᵀ</c>, E standard normal. Low-rank form: see <see cref="SampleLowRank"/>.
    /// A pure function of (seed, sample, layer index), so the k perturbations of linearized sampling can be drawn layer by
    /// layer and propagated by JVPs.
    /// </summary>
    public void SamplePerturbation(long seed, int sample, Span<float> delta)
    {
        long size = (long)GDim * ADim;
        if (delta.Length != size) throw FisherKernelsException.Argument($"layer '{Layer}': a perturbation is [{GDim} × {ADim}], got {delta.Length} values");
        var rng = new SplitMix64(seed, sample, stream: index);
        if (lowRank is not null)
        {
            SampleLowRank(lowRank, ref rng, delta);
            return;
        }
        KronEigenbasis basis = dense!;
        var scaled = new float[size];
        for (long i = 0; i < size; i++) scaled[i] = (float)(rng.NextGaussian() * Math.Sqrt(basis.InverseDenominators[i]));
        var left = new float[size];
        backend.Gemm(new GemmShape(GDim, ADim, GDim), basis.QG, scaled, left);
        backend.Gemm(new GemmShape(GDim, ADim, ADim, TransB: true), left, basis.QA, delta);
    }

    /// <summary>
    /// <c>δ ~ N(0, Σ)</c> in the low-rank form. In the small factor's eigenbasis the precision splits into one block per
    /// eigenvector q_j: <c>P_j = D_j + U S_j Uᵀ</c> with <c>D_j = M μ_j D + τ I</c>, <c>S_j = M μ_j Λ</c>. A draw
    /// <c>b = √D_j e + U √S_j e'</c> (e, e' standard normal) has covariance P_j, so <c>y_j = P_j⁻¹ b</c> (one Woodbury solve)
    /// has covariance <c>P_j⁻¹ P_j P_j⁻¹ = P_j⁻¹</c>, exactly Σ's block, without factoring it. Then, with the y_j as the columns of
    /// Y <c>[n × m]</c>: <c>δ = Y Q_smallᵀ</c> (large factor G) or <c>Q_small Yᵀ</c> (large factor A), as in <see cref="WoodburyQuadratic"/>.
    /// </summary>
    void SampleLowRank(LowRankFactor f, ref SplitMix64 rng, Span<float> delta)
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        var y = new float[(long)n * m];
        var (d, s, b, solved) = (new float[n], new float[r], new float[n], new float[n]);
        var lowRankPart = new double[r];
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int i = 0; i < n; i++)
            {
                d[i] = (float)(scale * f.Diagonal[i] + PriorPrecision);
                b[i] = (float)(Math.Sqrt(d[i]) * rng.NextGaussian());
            }
            for (int k = 0; k < r; k++)
            {
                s[k] = (float)(scale * f.Lambda[k]);
                lowRankPart[k] = Math.Sqrt(s[k]) * rng.NextGaussian();
            }
            for (int i = 0; i < n; i++)
            {
                double sum = b[i];
                for (int k = 0; k < r; k++) sum += f.U[(long)i * r + k] * lowRankPart[k];
                b[i] = (float)sum;
            }
            backend.WoodburyApply(d, f.U, s, n, r, b, 1, solved);
            for (int i = 0; i < n; i++) y[(long)i * m + j] = solved[i];
        }
        GemmShape assemble = f.LargeIsA ? new GemmShape(m, n, m, TransB: true) : new GemmShape(n, m, m, TransB: true);
        if (f.LargeIsA) backend.Gemm(assemble, f.SmallQ, y, delta);
        else backend.Gemm(assemble, y, f.SmallQ, delta);
    }

    KronEigenbasis RequireDense(string what) => dense ?? throw FisherKernelsException.Unsupported(
        $"layer '{Layer}': {what} needs the dense eigenbasis ({DenseBytes} bytes), but the layer uses the low-rank form; raise the memory budget");

    /// <summary>Rows of β² with β = Q_Aᵀ ã (<paramref name="qa"/>: A's eigenvectors as columns): [rows × a].</summary>
    float[] ProjectInputs(float[] qa, ReadOnlySpan<float> inputs, int rows, int inF)
    {
        var homogeneous = new float[(long)rows * ADim];
        for (int r = 0; r < rows; r++)
        {
            inputs.Slice(r * inF, inF).CopyTo(homogeneous.AsSpan(r * ADim, inF));
            if (HasBias) homogeneous[r * ADim + inF] = 1;
        }
        var projected = new float[homogeneous.Length];
        backend.Gemm(new GemmShape(rows, ADim, ADim), homogeneous, qa, projected);
        for (int i = 0; i < projected.Length; i++) projected[i] *= projected[i];
        return projected;
    }

    LowRankFactor BuildLowRank(KroneckerBlock block, PosteriorOptions options)
    {
        bool largeIsA = ADim > GDim;
        NdArray<float> large = largeIsA ? block.A : block.G, small = largeIsA ? block.G : block.A;
        int n = large.Shape[0], m = small.Shape[0], rank = Math.Min(options.Rank, n);
        long smallBytes = 4L * m * m + 4L * n * rank + 8L * n;
        if (smallBytes > options.MemoryBudgetBytes)
            throw FisherKernelsException.Argument($"layer '{Layer}': even the low-rank form needs {smallBytes} bytes (A [{ADim}]², G [{GDim}]², rank {rank}), over the memory budget of {options.MemoryBudgetBytes} bytes: raise --memory-budget or lower --rank");

        var lambda = new float[rank];
        var u = new float[(long)n * rank];
        TopEigen.Compute(backend, large.Data, n, rank, lambda, u);
        var diagonal = new float[n];
        for (int i = 0; i < n; i++)
        {
            double rest = large.Data[(long)i * n + i];
            for (int k = 0; k < rank; k++) rest -= (double)lambda[k] * u[(long)i * rank + k] * u[(long)i * rank + k];
            diagonal[i] = (float)Math.Max(rest, 0);
        }
        for (int k = 0; k < rank; k++) lambda[k] = Math.Max(lambda[k], 0);

        // The small factor's eigenbasis: a Kronecker basis with a 1×1 partner gives it with the usual checks.
        var identity = new float[] { 1 };
        KronEigenbasis smallBasis = KronEigenbasis.Create(backend, small.Data, m, identity, 1, Positions, PriorPrecision);
        EigenvalueRange smallRange = RangeOf(smallBasis.LambdaA);
        var largeRange = new EigenvalueRange(Math.Min(diagonal.Min(), lambda.Min()), lambda.Max());
        (RangeA, RangeG) = largeIsA ? (largeRange, smallRange) : (smallRange, largeRange);
        return new LowRankFactor(largeIsA, smallBasis.QA, smallBasis.LambdaA, m, u, lambda, diagonal, n, rank);
    }

    /// <summary>
    /// Σ_j y_jᵀ (M λ_j (D + UΛUᵀ) + τ I)⁻¹ y_j over the small factor's eigenvectors q_j, with y_j = X q_j (large factor G)
    /// or Xᵀ q_j (large factor A): one Woodbury solve per j for all matrices at once.
    /// </summary>
    void WoodburyQuadratic(LowRankFactor f, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        long size = (long)n * m;
        // Y_c [n × m]: X_c Q_small (X_c is [n × m] when G is large) or X_cᵀ Q_small (X_c is [m × n] when A is large).
        var y = new float[count * size];
        GemmShape project = f.LargeIsA
            ? new GemmShape(n, m, m, TransA: true, BatchCount: count, StrideA: size, StrideB: 0, StrideC: size)
            : new GemmShape(n, m, m, BatchCount: count, StrideA: size, StrideB: 0, StrideC: size);
        backend.Gemm(project, xs, f.SmallQ, y);

        var column = new float[(long)n * count];
        var solved = new float[column.Length];
        var d = new float[n];
        var s = new float[r];
        var sums = new double[count];
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int i = 0; i < n; i++) d[i] = (float)(scale * f.Diagonal[i] + PriorPrecision);
            for (int k = 0; k < r; k++) s[k] = (float)(scale * f.Lambda[k]);
            for (int c = 0; c < count; c++)
                for (int i = 0; i < n; i++) column[(long)i * count + c] = y[c * size + (long)i * m + j];
            backend.WoodburyApply(d, f.U, s, n, r, column, count, solved);
            for (int i = 0; i < column.Length; i++) sums[i % count] += (double)column[i] * solved[i];
        }
        for (int c = 0; c < count; c++) output[c] = (float)sums[c];
    }

    static EigenvalueRange RangeOf(double[] lambda) => new(lambda.Min(), lambda.Max());
}

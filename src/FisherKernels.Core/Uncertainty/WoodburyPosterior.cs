using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.Linalg;

namespace FisherKernels.Uncertainty;

/// <summary>
/// <c>Σ = (M·A⊗G + τ·I)⁻¹</c> for a layer whose dense eigenbases exceed the memory budget: the larger factor F becomes
/// <c>D + U Λ Uᵀ</c>, U its top-r eigenvectors and D the diagonal of the rest (so diag F is kept exactly); in the eigenbasis
/// of the other (small) factor each of its eigenvectors q_j then needs <c>(M·μ_j·(D + UΛUᵀ) + τ·I)⁻¹</c>, a Woodbury solve
/// (kernel family 2's <see cref="IComputeBackend.WoodburyApply"/>). Exact when F has rank ≤ r.
/// </summary>
public sealed class WoodburyPosterior : LayerPosterior
{
    readonly IComputeBackend backend;
    readonly LowRankFactor f;

    /// <summary>The small factor's eigenbasis, the large factor as diagonal plus low rank.</summary>
    sealed record LowRankFactor(bool LargeIsA, float[] SmallQ, double[] SmallLambda, int SmallDim,
                                float[] U, float[] Lambda, float[] Diagonal, int LargeDim, int Rank);

    internal WoodburyPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options)
        : base(block.Layer, block.HasBias, block.ADim, block.GDim, block.Positions, options.PriorPrecisionOf(block.Layer), index)
    {
        this.backend = backend;
        f = BuildLowRank(block, backend, options, out EigenvalueRange rangeA, out EigenvalueRange rangeG);
        (RangeA, RangeG) = (rangeA, rangeG);
    }

    public override bool IsLowRank => true;

    protected override string Form => $"low rank {f.Rank} on {(f.LargeIsA ? "A" : "G")} (Woodbury)";

    protected override void QuadraticCore(ReadOnlySpan<float> xs, int count, Span<float> output) => WoodburyQuadratic(f, xs, count, output);

    public override long OuterProductWorkspace(int rows) => (long)GDim * ADim;

    public override bool UsesInputGram => false;

    /// <summary>X = Gᵀ Ã formed, then its Woodbury quadratic form.</summary>
    protected override double OuterProductQuadraticCore(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows,
                                                        Span<float> workspace, ReadOnlySpan<float> inputGram)
    {
        Span<float> x = workspace[..(GDim * ADim)];
        backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), outputGradients, projectedInputs, x);
        var single = new float[1];
        WoodburyQuadratic(f, x, 1, single);
        return single[0];
    }

    private protected override void SamplePerturbationCore(ref SplitMix64 rng, Span<float> delta) => SampleLowRank(f, ref rng, delta);

    protected override void TargetOutputVarianceCore(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        if (f.LargeIsA) LowRankTargetVarianceLargeA(f, inputs, targets, rows, inF, variance);
        else LowRankTargetVarianceLargeG(f, inputs, targets, rows, inF, variance);
    }

    /// <summary>
    /// <c>Σ_j log det(D_j + U S_j Uᵀ)</c> over the small factor's eigenvectors (<c>D_j = M μ_j D + τ I</c>, <c>S_j = M μ_j Λ</c>),
    /// each by the matrix determinant lemma in the scaled form: <c>Σ_i log d_j,i + log det(I + VᵀV)</c>, <c>V = D_j^-½ U S_j^½</c>,
    /// the r×r capacitance by Cholesky. n·r² work per small eigenvector; no n×n matrix.
    /// </summary>
    public override double LogDeterminant()
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        var v = new float[(long)n * r];
        var vtv = new float[r * r];
        var capacitance = new double[r * r];
        double sum = 0;
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int i = 0; i < n; i++)
            {
                double d = scale * f.Diagonal[i] + PriorPrecision;
                sum += Math.Log(d);
                double invSqrtD = 1 / Math.Sqrt(d);
                for (int c = 0; c < r; c++) v[(long)i * r + c] = (float)(f.U[(long)i * r + c] * Math.Sqrt(scale * f.Lambda[c]) * invSqrtD);
            }
            backend.Gemm(new GemmShape(r, r, n, TransA: true), v, v, vtv);
            for (int a = 0; a < r; a++)
                for (int b = 0; b < r; b++) capacitance[a * r + b] = (a == b ? 1 : 0) + 0.5 * ((double)vtv[a * r + b] + vtv[b * r + a]);
            if (!Cholesky.TryFactor(capacitance, r, useNative: true))
                throw FisherKernelsException.Backend($"layer '{Layer}': the Woodbury capacitance I + VᵀV [{r} × {r}] is not positive definite");
            for (int a = 0; a < r; a++) sum += 2 * Math.Log(capacitance[a * r + a]);
        }
        return sum;
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
        float[] squared = ProjectInputs(backend, f.SmallQ, inputs, rows, inF);
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

    static LowRankFactor BuildLowRank(KroneckerBlock block, IComputeBackend backend, PosteriorOptions options, out EigenvalueRange rangeA, out EigenvalueRange rangeG)
    {
        EnsureOneDenseSide(block);
        // A sketched side is the large one (the fit sketched it for being too large); otherwise the larger dense side.
        bool largeIsA = block.ASketch is not null || (block.GSketch is null && block.ADim > block.GDim);
        FactorSide large = largeIsA ? block.ASide : block.GSide;
        NdArray<float> small = largeIsA ? block.G : block.A;
        int n = large.Size, m = small.Shape[0], rank = Math.Min(options.Rank, n);
        if (large.Sketch is FactorSketch sketch) rank = Math.Min(rank, sketch.K);
        long smallBytes = 4L * m * m + 4L * n * rank + 8L * n;
        if (smallBytes > options.MemoryBudgetBytes)
            throw FisherKernelsException.Argument($"layer '{block.Layer}': even the low-rank form needs {smallBytes} bytes (A [{block.ADim}]², G [{block.GDim}]², rank {rank}), over the memory budget of {options.MemoryBudgetBytes} bytes: raise --memory-budget or lower --rank");

        float[] lambda, u, diagonal;
        if (large.Sketch is FactorSketch s)
        {
            // Nyström (SPEC §3): U diag(s) Uᵀ + diag(d) from Y = F·Ω and diag(F), no [n, n] matrix; exact when F has rank ≤ r.
            LowRankPlusDiagonal nystrom = s.Nystrom(rank);
            rank = nystrom.Rank;
            (lambda, u, diagonal) = (nystrom.S.Select(v => (float)v).ToArray(), nystrom.U, nystrom.D);
        }
        else
        {
            NdArray<float> dense = large.Matrix!;
            lambda = new float[rank];
            u = new float[(long)n * rank];
            TopEigen.Compute(backend, dense.Data, n, rank, lambda, u);
            diagonal = new float[n];
            for (int i = 0; i < n; i++)
            {
                double rest = dense.Data[(long)i * n + i];
                for (int k = 0; k < rank; k++) rest -= (double)lambda[k] * u[(long)i * rank + k] * u[(long)i * rank + k];
                diagonal[i] = (float)Math.Max(rest, 0);
            }
        }
        for (int k = 0; k < rank; k++) lambda[k] = Math.Max(lambda[k], 0);

        // The small factor's eigenbasis: a Kronecker basis with a 1×1 partner gives it with the usual checks.
        var identity = new float[] { 1 };
        KronEigenbasis smallBasis = KronEigenbasis.Create(backend, small.Data, m, identity, 1, block.Positions, options.PriorPrecisionOf(block.Layer));
        EigenvalueRange smallRange = RangeOf(smallBasis.LambdaA);
        var largeRange = new EigenvalueRange(Math.Min(diagonal.Min(), lambda.Min()), lambda.Max());
        (rangeA, rangeG) = largeIsA ? (largeRange, smallRange) : (smallRange, largeRange);
        return new LowRankFactor(largeIsA, smallBasis.QA, smallBasis.LambdaA, m, u, lambda, diagonal, n, rank);
    }

    /// <summary>The Woodbury form needs one side's eigenbasis: a layer with both sides sketched is refused in one line, before any work.</summary>
    internal static void EnsureOneDenseSide(KroneckerBlock block)
    {
        if (block.ASketch is not null && block.GSketch is not null)
            throw FisherKernelsException.Unsupported($"layer '{block.Layer}': both factor sides are low rank (A [{block.ADim}]², G [{block.GDim}]²), and the posterior needs one dense: fit it with a larger --memory-budget, or leave it out with --exclude-layers");
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
}

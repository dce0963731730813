using System.Numerics.Tensors;
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

    /// <summary>M·μ_j of the small factor's eigenvalues, as <see cref="InverseDiagonals"/> takes them.</summary>
    readonly float[] scaledSmallLambda;

    /// <summary>The capacitances' Cholesky factors (<see cref="Capacitances"/>), made on first use.</summary>
    double[]? capacitances;

    /// <summary>The small factor's eigenbasis, the large factor as diagonal plus low rank.</summary>
    sealed record LowRankFactor(bool LargeIsA, float[] SmallQ, double[] SmallLambda, int SmallDim,
                                float[] U, float[] Lambda, float[] Diagonal, int LargeDim, int Rank);

    internal WoodburyPosterior(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options, CachedDecomposition? cached = null)
        : base(block.Layer, block.HasBias, block.ADim, block.GDim, block.Positions, options.PriorPrecisionOf(block.Layer), index)
    {
        this.backend = backend;
        f = cached is null ? BuildLowRank(block, backend, options) : FromCache(block, cached);
        var largeRange = new EigenvalueRange(Math.Min(f.Diagonal.Min(), f.Lambda.Min()), f.Lambda.Max());
        (RangeA, RangeG) = f.LargeIsA ? (largeRange, RangeOf(f.SmallLambda)) : (RangeOf(f.SmallLambda), largeRange);
        scaledSmallLambda = f.SmallLambda.Select(mu => (float)(Positions * mu)).ToArray();
    }

    public override bool IsLowRank => true;

    protected override string Form => $"low rank {f.Rank} on {(f.LargeIsA ? "A" : "G")} (Woodbury)";

    protected override void QuadraticCore(ReadOnlySpan<float> xs, int count, Span<float> output) => WoodburyQuadratic(f, xs, count, output);

    /// <summary>Rows of the large factor's side per block of <see cref="OuterProductQuadraticCore"/> and <see cref="Capacitances"/>.</summary>
    const int Block = 256;

    /// <summary>The large side's rows transposed [n × rows], the small side's rows [rows × m] (large A), two blocks [Block × m] and W [r × m].</summary>
    public override long OuterProductWorkspace(int rows) =>
        (long)f.LargeDim * rows + (f.LargeIsA ? (long)rows * f.SmallDim : 0) + 2L * Block * f.SmallDim + (long)f.Rank * f.SmallDim;

    public override bool UsesInputGram => false;

    /// <summary>With G large, the rows of Ã in A's eigenbasis, Ã Q_A (the small side of <see cref="OuterProductQuadraticCore"/>); with A large, Ã itself.</summary>
    protected override void ProjectInputRowsCore(ReadOnlySpan<float> homogeneousInputs, int rows, Span<float> projected)
    {
        if (f.LargeIsA) homogeneousInputs.CopyTo(projected);
        else backend.Gemm(new GemmShape(rows, f.SmallDim, f.SmallDim), homogeneousInputs, f.SmallQ, projected);
    }

    /// <summary>
    /// <c>vec(X)ᵀ Σ vec(X)</c> for <c>X = Gᵀ Ã</c> without forming X (a vocabulary head's X is 50,257 × 769 per position).
    /// Call L <c>[R × n]</c> the rows on the large factor's side (G when G is large, Ã when A is) and S <c>[R × m]</c> the rows
    /// on the small side rotated into its eigenbasis (Ã Q_A, or G Q_G). In the small eigenbasis X's columns are
    /// <c>y_j = Lᵀ s_j</c>, <c>Y = Lᵀ S</c> <c>[n × m]</c> (for one position, R = 1, the rank-one <c>g βᵀ</c>), and Σ's block along
    /// the small eigenvector j is <c>P_j⁻¹</c>, <c>P_j = M μ_j (D + U Λ Uᵀ) + τ I = D_j + U S_j Uᵀ</c>. Woodbury in the scaled form
    /// (h_j = diag(D_j)⁻¹, <c>C_j = I + S_j^½ Uᵀ diag(h_j) U S_j^½</c>):
    /// <code>
    ///   y_jᵀ P_j⁻¹ y_j = Σ_i h_ij y_ij²  −  w_jᵀ C_j⁻¹ w_j,    w_j = S_j^½ Uᵀ (h_j ⊙ y_j)
    /// </code>
    /// so the quadratic is <c>Σ (H ⊙ Y ⊙ Y) − Σ_j ‖L_j⁻¹ w_j‖²</c> with <c>W = Uᵀ (H ⊙ Y)</c> <c>[r × m]</c> one GEMM over all j and
    /// C_j = L_j L_jᵀ factored once per posterior (<see cref="Capacitances"/>). Y and H = 1/(M μ_j d_i + τ) are made block by
    /// block of n: per call 2·n·m·(R + r) flops and O(n·R + Block·m + r·m) floats, instead of the [n × m] X and one Woodbury
    /// solve per j. The same algebra as <see cref="WoodburyQuadratic"/> (which takes formed X), checked against it and
    /// against the dense posterior in the tests.
    /// </summary>
    protected override double OuterProductQuadraticCore(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows,
                                                        Span<float> workspace, ReadOnlySpan<float> inputGram)
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        Span<float> largeT = workspace[..(n * rows)];
        Span<float> rest = workspace[(n * rows)..];
        ReadOnlySpan<float> large = f.LargeIsA ? projectedInputs : outputGradients;
        ReadOnlySpan<float> small = projectedInputs;
        if (f.LargeIsA)
        {
            Span<float> rotated = rest[..(rows * m)];
            backend.Gemm(new GemmShape(rows, m, m), outputGradients, f.SmallQ, rotated);
            small = rotated;
            rest = rest[(rows * m)..];
        }
        for (int row = 0; row < rows; row++)
            for (int i = 0; i < n; i++) largeT[i * rows + row] = large[row * n + i];
        Span<float> y = rest[..(Block * m)], h = rest.Slice(Block * m, Block * m), w = rest.Slice(2 * Block * m, r * m);
        w.Clear();
        double diagonal = 0;
        for (int start = 0; start < n; start += Block)
        {
            int nb = Math.Min(Block, n - start);
            Span<float> yb = y[..(nb * m)], hb = h[..(nb * m)];
            backend.Gemm(new GemmShape(nb, m, rows), largeT.Slice(start * rows, nb * rows), small, yb);
            InverseDiagonals(start, nb, hb);
            TensorPrimitives.Multiply(yb, hb, hb); // H ⊙ Y
            for (int i = 0; i < nb; i++) diagonal += TensorPrimitives.Dot(hb.Slice(i * m, m), yb.Slice(i * m, m));
            if (r > 0) backend.Gemm(new GemmShape(r, m, nb, TransA: true, Beta: 1), f.U.AsSpan(start * r, nb * r), hb, w);
        }
        double[] factors = Capacitances();
        Span<double> z = stackalloc double[r];
        double lowRank = 0;
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int a = 0; a < r; a++) z[a] = Math.Sqrt(scale * f.Lambda[a]) * w[a * m + j];
            lowRank += ForwardSolvedSquares(factors.AsSpan(j * r * r, r * r), r, z);
        }
        return diagonal - lowRank;
    }

    /// <summary><c>h[i, j] = 1 / (M μ_j d_(start+i) + τ)</c> for <paramref name="count"/> rows of the large side, [count × m].</summary>
    void InverseDiagonals(int start, int count, Span<float> h)
    {
        int m = f.SmallDim;
        for (int i = 0; i < count; i++)
        {
            Span<float> row = h.Slice(i * m, m);
            TensorPrimitives.Multiply(scaledSmallLambda, f.Diagonal[start + i], row);
            TensorPrimitives.Add(row, (float)PriorPrecision, row);
            TensorPrimitives.Reciprocal(row, row);
        }
    }

    /// <summary>‖L⁻¹ z‖² for the lower Cholesky factor L [r × r] (row-major), z overwritten.</summary>
    static double ForwardSolvedSquares(ReadOnlySpan<double> l, int r, Span<double> z)
    {
        double sum = 0;
        for (int i = 0; i < r; i++)
        {
            double v = z[i];
            for (int p = 0; p < i; p++) v -= l[i * r + p] * z[p];
            z[i] = v / l[i * r + i];
            sum += z[i] * z[i];
        }
        return sum;
    }

    /// <summary>
    /// The Cholesky factors of the capacitances <c>C_j = I + S_j^½ Uᵀ diag(h_j) U S_j^½</c> (<c>S_j = M μ_j Λ</c>,
    /// <c>h_ij = 1/(M μ_j d_i + τ)</c>) of every small eigenvector j, [m × r × r] doubles, computed on first use and kept:
    /// <c>Uᵀ diag(h_j) U</c> for all j at once is one GEMM of U's column products <c>U_ia U_ib</c> (a ≤ b) with H, block by
    /// block of n, n·r²·m flops and no n×n matrix. The scores, the target variances and the log-determinant share them.
    /// </summary>
    double[] Capacitances() => LazyInitializer.EnsureInitialized(ref capacitances, () =>
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank, pairs = r * (r + 1) / 2;
        var sums = new float[(long)pairs * m];
        var products = new float[Block * pairs];
        var h = new float[Block * m];
        for (int start = 0; start < n; start += Block)
        {
            int nb = Math.Min(Block, n - start);
            for (int i = 0; i < nb; i++)
            {
                ReadOnlySpan<float> u = f.U.AsSpan((start + i) * r, r);
                int p = i * pairs;
                for (int a = 0; a < r; a++)
                    for (int b = a; b < r; b++) products[p++] = u[a] * u[b];
            }
            InverseDiagonals(start, nb, h.AsSpan(0, nb * m));
            backend.Gemm(new GemmShape(pairs, m, nb, TransA: true, Beta: 1), products.AsSpan(0, nb * pairs), h.AsSpan(0, nb * m), sums);
        }
        var factors = new double[(long)m * r * r];
        Parallel.For(0, m, j =>
        {
            Span<double> c = factors.AsSpan(j * r * r, r * r);
            double scale = Positions * f.SmallLambda[j];
            int p = 0;
            for (int a = 0; a < r; a++)
                for (int b = a; b < r; b++, p++)
                {
                    double v = Math.Sqrt(scale * f.Lambda[a]) * Math.Sqrt(scale * f.Lambda[b]) * sums[(long)p * m + j];
                    c[a * r + b] = c[b * r + a] = v + (a == b ? 1 : 0);
                }
            if (!Cholesky.TryFactor(c, r, useNative: false))
                throw FisherKernelsException.Backend($"layer '{Layer}': the Woodbury capacitance I + VᵀV [{r} × {r}] is not positive definite");
        });
        return factors;
    });

    private protected override void SamplePerturbationCore(ref SplitMix64 rng, Span<float> delta) => SampleLowRank(f, ref rng, delta);

    protected override void TargetOutputVarianceCore(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        if (f.LargeIsA) LowRankTargetVarianceLargeA(f, inputs, targets, rows, inF, variance);
        else LowRankTargetVarianceLargeG(f, inputs, targets, rows, inF, variance);
    }

    /// <summary>
    /// <c>Σ_j log det(D_j + U S_j Uᵀ)</c> over the small factor's eigenvectors (<c>D_j = M μ_j D + τ I</c>, <c>S_j = M μ_j Λ</c>),
    /// each by the matrix determinant lemma in the scaled form: <c>Σ_i log d_j,i + log det C_j</c>, C_j the capacitance of
    /// <see cref="Capacitances"/> (its Cholesky diagonal). No n×n matrix.
    /// </summary>
    public override double LogDeterminant()
    {
        int n = f.LargeDim, m = f.SmallDim, r = f.Rank;
        double[] factors = Capacitances();
        double sum = 0;
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            for (int i = 0; i < n; i++) sum += Math.Log(scale * f.Diagonal[i] + PriorPrecision);
            for (int a = 0; a < r; a++) sum += 2 * Math.Log(factors[(long)j * r * r + a * r + a]);
        }
        return sum;
    }

    /// <summary>
    /// Low rank with G (the outputs) large, the usual output layer. In A's eigenbasis <c>Y = X Q_A = e_y βᵀ</c>, so
    /// <c>var s_y = Σ_j β_j² [P_j⁻¹]_yy</c>, P_j the Woodbury block of <see cref="OuterProductQuadraticCore"/>:
    /// <c>[P_j⁻¹]_yy = h_yj − h_yj² ‖L_j⁻¹ S_j^½ u_y‖²</c> with u_y row y of U and L_j the capacitance's Cholesky factor
    /// (<see cref="Capacitances"/>): r² work per j and distinct target, nothing of the vocabulary's size.
    /// </summary>
    void LowRankTargetVarianceLargeG(LowRankFactor f, ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        int m = f.SmallDim, r = f.Rank;
        float[] squared = ProjectInputs(backend, f.SmallQ, inputs, rows, inF);
        var slots = new Dictionary<long, int>();
        for (int t = 0; t < rows; t++)
            if (targets[t] != -100) slots.TryAdd(targets[t], slots.Count);
        if (slots.Count == 0) return;
        double[] factors = Capacitances();
        var h = new double[slots.Count];
        var z = new double[r];
        for (int j = 0; j < m; j++)
        {
            double scale = Positions * f.SmallLambda[j];
            foreach (var (y, slot) in slots)
            {
                double hy = 1 / (scale * f.Diagonal[y] + PriorPrecision);
                for (int a = 0; a < r; a++) z[a] = Math.Sqrt(scale * f.Lambda[a]) * f.U[y * r + a];
                h[slot] = hy - hy * hy * ForwardSolvedSquares(factors.AsSpan(j * r * r, r * r), r, z);
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

    /// <summary>
    /// The decompositions the posterior cache keeps (SPEC §5), all independent of τ: the small factor's eigenbasis and the
    /// large factor's U, Λ and diagonal.
    /// </summary>
    internal override IEnumerable<(string Name, NdArray Tensor)> Decomposition() =>
    [
        ("small_Q", new NdArray<float>([f.SmallDim, f.SmallDim], f.SmallQ)),
        ("small_lambda", new NdArray<double>([f.SmallDim], f.SmallLambda)),
        ("U", new NdArray<float>([f.LargeDim, f.Rank], f.U)),
        ("lambda", new NdArray<float>([f.Rank], f.Lambda)),
        ("diag", new NdArray<float>([f.LargeDim], f.Diagonal)),
    ];

    /// <summary>The factor as <see cref="Decomposition"/> stored it, every shape checked against the block.</summary>
    static LowRankFactor FromCache(KroneckerBlock block, CachedDecomposition cached)
    {
        EnsureOneDenseSide(block);
        bool largeIsA = LargeIsA(block);
        int n = largeIsA ? block.ADim : block.GDim, m = largeIsA ? block.GDim : block.ADim;
        float[] lambda = cached.Float32("lambda");
        int rank = lambda.Length;
        if (rank < 1 || rank > n) throw FisherKernelsException.Format($"{cached.Describe("lambda")}: rank {rank} for a side of {n}");
        return new LowRankFactor(largeIsA, cached.Float32("small_Q", m, m), cached.Float64("small_lambda", m), m,
                                 cached.Float32("U", n, rank), lambda, cached.Float32("diag", n), n, rank);
    }

    /// <summary>A sketched (low-rank) side is the large one (the fit sketched it for being too large); otherwise the larger dense side.</summary>
    static bool LargeIsA(KroneckerBlock block) => block.ASketch is not null || (block.GSketch is null && block.ADim > block.GDim);

    static LowRankFactor BuildLowRank(KroneckerBlock block, IComputeBackend backend, PosteriorOptions options)
    {
        EnsureOneDenseSide(block);
        bool largeIsA = LargeIsA(block);
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

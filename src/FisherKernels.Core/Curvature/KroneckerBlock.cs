namespace FisherKernels.Curvature;

/// <summary>
/// The K-FAC curvature of one layer (SPEC §3): <c>C = M · (A ⊗ G)</c> with
/// <c>A = (1/M) Σ ã ãᵀ</c> (<c>[in(+1)]²</c>, homogeneous coordinate last when the layer has a bias) and
/// <c>G = (1/M) Σ g gᵀ</c> (<c>[out]²</c>), both full symmetric float32 matrices, row-major.
/// The block takes ownership of A and G (no copy) and never changes them; the constructor checks shapes,
/// finiteness (a non-finite value is an error naming the layer) and symmetry (to float32 rounding).
/// A side too large to hold dense is a <see cref="FactorSketch"/> instead (SPEC §3 <c>lowrank</c>): <see cref="ASketch"/> or
/// <see cref="GSketch"/> is set and <see cref="A"/> or <see cref="G"/> is an error naming the layer.
/// </summary>
public sealed class KroneckerBlock
{
    /// <summary>Asymmetry tolerated relative to the largest entry: float32 accumulation that fills both triangles is symmetric to rounding.</summary>
    const double SymmetryTolerance = 1e-4;

    public KroneckerBlock(string layer, NdArray<float> a, NdArray<float> g, bool hasBias, double positions)
        : this(layer, FactorSide.Dense(a), FactorSide.Dense(g), hasBias, positions) { }

    /// <param name="e">EK-FAC's E (<c>[out, in(+1)]</c>, SPEC §3), or null for K-FAC; only with both sides dense.</param>
    public KroneckerBlock(string layer, FactorSide a, FactorSide g, bool hasBias, double positions, NdArray<float>? e = null)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(g);
        string? problem = Check(layer, a, g, hasBias, positions) ?? CheckCorrection(layer, a, g, e);
        if (problem is not null) throw FisherKernelsException.Argument(problem);
        Layer = layer;
        ASide = a;
        GSide = g;
        HasBias = hasBias;
        Positions = positions;
        E = e;
    }

    /// <summary>The layer id: the weight initializer's name (SPEC §2).</summary>
    public string Layer { get; }

    public FactorSide ASide { get; }
    public FactorSide GSide { get; }

    /// <summary>Input factor, <c>[ADim, ADim]</c>; an error naming the layer when A is low rank.</summary>
    public NdArray<float> A => ASide.Matrix ?? throw LowRank("A");

    /// <summary>Output-gradient factor, <c>[GDim, GDim]</c>; an error naming the layer when G is low rank.</summary>
    public NdArray<float> G => GSide.Matrix ?? throw LowRank("G");

    /// <summary>A's sketch when A is low rank, else null.</summary>
    public FactorSketch? ASketch => ASide.Sketch;

    /// <summary>G's sketch when G is low rank, else null.</summary>
    public FactorSketch? GSketch => GSide.Sketch;

    /// <summary>
    /// EK-FAC's eigenvalue correction (SPEC §3 <c>fit --ekfac</c>), <c>[out, in(+1)]</c>: the Fisher's diagonal in the eigenbases
    /// of G (rows) and A (columns), both in ascending eigenvalue order, <c>E_ij = (1/M) Σ_m (Q_Gᵀ g_m)_i² (Q_Aᵀ ã_m)_j²</c>;
    /// null for plain K-FAC. It belongs to the eigenbases it was computed in, so merging drops it.
    /// </summary>
    public NdArray<float>? E { get; }

    /// <summary>This block without E (K-FAC), sharing the sides.</summary>
    public KroneckerBlock WithoutCorrection() => E is null ? this : new KroneckerBlock(Layer, ASide, GSide, HasBias, Positions);

    /// <summary>This block with <paramref name="e"/> as its EK-FAC correction, sharing the sides.</summary>
    public KroneckerBlock WithCorrection(NdArray<float> e) => new(Layer, ASide, GSide, HasBias, Positions, e ?? throw new ArgumentNullException(nameof(e)));

    /// <summary>Whether both sides are dense.</summary>
    public bool IsDense => ASide.Matrix is not null && GSide.Matrix is not null;

    FisherKernelsException LowRank(string side) => FisherKernelsException.Unsupported(
        $"layer '{Layer}': factor {side} [{(side == "A" ? ADim : GDim)}]² is stored low rank (a sketch, SPEC §3), and this needs it dense: fit with a larger --memory-budget or leave the layer out (--exclude-layers)");

    /// <summary>Whether A carries the homogeneous coordinate for the bias (as its last row and column).</summary>
    public bool HasBias { get; }

    /// <summary>M, the number of positions the means A and G were taken over (a count, or an effective count after EMA).</summary>
    public double Positions { get; }

    public int ADim => ASide.Size;
    public int GDim => GSide.Size;
    public int InFeatures => HasBias ? ADim - 1 : ADim;
    public int OutFeatures => GDim;

    /// <summary>
    /// Adds the information of two blocks of the same layer (SPEC §3): positions add, A and G become the
    /// position-weighted means (computed in float64). Two blocks with zero positions give the plain mean.
    /// </summary>
    public KroneckerBlock Merge(KroneckerBlock other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Layer != Layer)
            throw FisherKernelsException.Argument($"cannot merge curvature of layer '{Layer}' with layer '{other.Layer}'");
        if (other.ADim != ADim || other.GDim != GDim || other.HasBias != HasBias)
            throw FisherKernelsException.Argument($"layer '{Layer}': cannot merge A [{ADim}]² G [{GDim}]² (bias {HasBias}) with A [{other.ADim}]² G [{other.GDim}]² (bias {other.HasBias})");
        double total = Positions + other.Positions;
        double w1 = total > 0 ? Positions / total : 0.5, w2 = total > 0 ? other.Positions / total : 0.5;
        // E is not carried over: it belongs to each block's own eigenbases, and the merged factors have others (SPEC §3).
        return new KroneckerBlock(Layer, ASide.WeightedMean(w1, other.ASide, w2, $"layer '{Layer}' A"),
                                  GSide.WeightedMean(w1, other.GSide, w2, $"layer '{Layer}' G"), HasBias, total);
    }

    /// <summary>
    /// This block with its positions scaled by <paramref name="decay"/> (forgetting, SPEC §3 <c>merge --decay</c>): A and G
    /// are means and stay, so a later merge weighs this block's information by λ·M. The sides (and E, a mean in unchanged
    /// eigenbases) are shared, not copied.
    /// </summary>
    public KroneckerBlock Decayed(double decay)
    {
        if (!double.IsFinite(decay) || decay < 0) throw FisherKernelsException.Argument($"a decay must be a finite number ≥ 0, got {decay}");
        return new KroneckerBlock(Layer, ASide, GSide, HasBias, Positions * decay, E);
    }

    /// <summary>What is wrong with the parts of a block, or null; shared by the constructor and the file loader.</summary>
    internal static string? Check(string layer, FactorSide a, FactorSide g, bool hasBias, double positions)
    {
        if (string.IsNullOrEmpty(layer)) return "a curvature block needs a layer name";
        if (!double.IsFinite(positions) || positions < 0) return $"layer '{layer}': positions must be finite and non-negative, got {positions}";
        return a.Check(layer, "A", hasBias ? 2 : 1) ?? g.Check(layer, "G", 1);
    }

    /// <summary>What is wrong with an EK-FAC correction of a block with sides <paramref name="a"/> and <paramref name="g"/>, or null.</summary>
    internal static string? CheckCorrection(string layer, FactorSide a, FactorSide g, NdArray<float>? e)
    {
        if (e is null) return null;
        if (a.Matrix is null || g.Matrix is null)
            return $"layer '{layer}': EK-FAC's E needs both factor sides dense, but {(a.Matrix is null ? "A" : "G")} is low rank (such a layer keeps K-FAC, SPEC §3)";
        if (e.Rank != 2 || e.Shape[0] != g.Size || e.Shape[1] != a.Size)
            return $"layer '{layer}': E must be [{g.Size}, {a.Size}] ([out, in(+1)]), got [{ShapeUtil.Format(e.Shape)}]";
        float[] d = e.Data;
        for (long i = 0; i < d.LongLength; i++)
            if (!float.IsFinite(d[i]) || d[i] < 0) return $"layer '{layer}': E must be finite and non-negative (a mean of squares), got {d[i]} at [{i / a.Size}, {i % a.Size}]";
        return null;
    }

    internal static string? Check(string layer, NdArray<float> a, NdArray<float> g, bool hasBias, double positions) =>
        Check(layer, FactorSide.Dense(a), FactorSide.Dense(g), hasBias, positions);

    internal static string? CheckDense(string layer, string name, NdArray<float> m, int minDim)
    {
        if (m.Rank != 2 || m.Shape[0] != m.Shape[1])
            return $"layer '{layer}': factor {name} must be a square matrix, got shape [{ShapeUtil.Format(m.Shape)}]";
        int n = m.Shape[0];
        if (n < minDim) return $"layer '{layer}': factor {name} must be at least {minDim}x{minDim}, got {n}x{n}";
        float[] d = m.Data;
        double maxAbs = 0;
        for (long i = 0; i < d.LongLength; i++)
        {
            if (!float.IsFinite(d[i])) return $"layer '{layer}': factor {name} has a non-finite value {d[i]} at [{i / n}, {i % n}]";
            maxAbs = Math.Max(maxAbs, Math.Abs(d[i]));
        }
        double tolerance = SymmetryTolerance * maxAbs;
        for (long i = 0; i < n; i++)
            for (long j = i + 1; j < n; j++)
                if (Math.Abs((double)d[i * n + j] - d[j * n + i]) > tolerance)
                    return $"layer '{layer}': factor {name} is not symmetric ([{i}, {j}] = {d[i * n + j]}, [{j}, {i}] = {d[j * n + i]})";
        return null;
    }
}

/// <summary>One factor side of a layer: a dense symmetric matrix or a <see cref="FactorSketch"/> (SPEC §3 factor forms).</summary>
public sealed class FactorSide
{
    FactorSide(NdArray<float>? matrix, FactorSketch? sketch)
    {
        Matrix = matrix;
        Sketch = sketch;
    }

    public static FactorSide Dense(NdArray<float> matrix) => new(matrix ?? throw new ArgumentNullException(nameof(matrix)), null);
    public static FactorSide LowRank(FactorSketch sketch) => new(null, sketch ?? throw new ArgumentNullException(nameof(sketch)));

    /// <summary>The dense <c>[n, n]</c> matrix, or null when low rank.</summary>
    public NdArray<float>? Matrix { get; }

    /// <summary>The sketch, or null when dense.</summary>
    public FactorSketch? Sketch { get; }

    /// <summary>"dense" or "lowrank" (SPEC §3).</summary>
    public string Form => Matrix is not null ? "dense" : "lowrank";

    /// <summary>n: the side's dimension.</summary>
    public int Size => Matrix is not null ? Matrix.Shape[0] : Sketch!.N;

    internal string? Check(string layer, string name, int minDim)
    {
        if (Matrix is not null) return KroneckerBlock.CheckDense(layer, name, Matrix, minDim);
        if (Sketch!.N < minDim) return $"layer '{layer}': factor {name} must be at least {minDim}x{minDim}, got {Sketch.N}x{Sketch.N}";
        return Sketch.Check(layer, name);
    }

    /// <summary>
    /// <c>w₁·this + w₂·other</c> in float64: dense with dense stays dense; a dense side meeting a sketch is sketched first
    /// with the other's Ω (exact: the sketch is linear), so the result is low rank.
    /// </summary>
    internal FactorSide WeightedMean(double w1, FactorSide other, double w2, string what)
    {
        if (Matrix is not null && other.Matrix is not null)
        {
            var r = new NdArray<float>((int[])Matrix.Shape.Clone());
            float[] xd = Matrix.Data, yd = other.Matrix.Data, rd = r.Data;
            for (long i = 0; i < rd.LongLength; i++) rd[i] = (float)(w1 * xd[i] + w2 * yd[i]);
            return Dense(r);
        }
        FactorSketch x = Sketch ?? FactorSketch.FromDense(Matrix!.Data, Size, other.Sketch!.K, other.Sketch.Seed);
        FactorSketch y = other.Sketch ?? FactorSketch.FromDense(other.Matrix!.Data, other.Size, x.K, x.Seed);
        return LowRank(x.WeightedSum(w1, y, w2, what));
    }
}

namespace FisherKernels.Curvature;

/// <summary>
/// The K-FAC curvature of one layer (SPEC §3): <c>C = M · (A ⊗ G)</c> with
/// <c>A = (1/M) Σ ã ãᵀ</c> (<c>[in(+1)]²</c>, homogeneous coordinate last when the layer has a bias) and
/// <c>G = (1/M) Σ g gᵀ</c> (<c>[out]²</c>), both full symmetric float32 matrices, row-major.
/// The block takes ownership of A and G (no copy) and never changes them; the constructor checks shapes,
/// finiteness (a non-finite value is an error naming the layer) and symmetry (to float32 rounding).
/// </summary>
public sealed class KroneckerBlock
{
    /// <summary>Asymmetry tolerated relative to the largest entry: float32 accumulation that fills both triangles is symmetric to rounding.</summary>
    const double SymmetryTolerance = 1e-4;

    public KroneckerBlock(string layer, NdArray<float> a, NdArray<float> g, bool hasBias, double positions)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(g);
        string? problem = Check(layer, a, g, hasBias, positions);
        if (problem is not null) throw FisherKernelsException.Argument(problem);
        Layer = layer;
        A = a;
        G = g;
        HasBias = hasBias;
        Positions = positions;
    }

    /// <summary>The layer id: the weight initializer's name (SPEC §2).</summary>
    public string Layer { get; }

    /// <summary>Input factor, <c>[ADim, ADim]</c>.</summary>
    public NdArray<float> A { get; }

    /// <summary>Output-gradient factor, <c>[GDim, GDim]</c>.</summary>
    public NdArray<float> G { get; }

    /// <summary>Whether A carries the homogeneous coordinate for the bias (as its last row and column).</summary>
    public bool HasBias { get; }

    /// <summary>M, the number of positions the means A and G were taken over (a count, or an effective count after EMA).</summary>
    public double Positions { get; }

    public int ADim => A.Shape[0];
    public int GDim => G.Shape[0];
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
        return new KroneckerBlock(Layer, WeightedMean(A, w1, other.A, w2), WeightedMean(G, w1, other.G, w2), HasBias, total);
    }

    static NdArray<float> WeightedMean(NdArray<float> x, double wx, NdArray<float> y, double wy)
    {
        var r = new NdArray<float>((int[])x.Shape.Clone());
        float[] xd = x.Data, yd = y.Data, rd = r.Data;
        for (int i = 0; i < rd.Length; i++) rd[i] = (float)(wx * xd[i] + wy * yd[i]);
        return r;
    }

    /// <summary>What is wrong with the parts of a block, or null; shared by the constructor and the file loader.</summary>
    internal static string? Check(string layer, NdArray<float> a, NdArray<float> g, bool hasBias, double positions)
    {
        if (string.IsNullOrEmpty(layer)) return "a curvature block needs a layer name";
        if (!double.IsFinite(positions) || positions < 0) return $"layer '{layer}': positions must be finite and non-negative, got {positions}";
        return CheckFactor(layer, "A", a, hasBias ? 2 : 1) ?? CheckFactor(layer, "G", g, 1);
    }

    static string? CheckFactor(string layer, string name, NdArray<float> m, int minDim)
    {
        if (m.Rank != 2 || m.Shape[0] != m.Shape[1])
            return $"layer '{layer}': factor {name} must be a square matrix, got shape [{ShapeUtil.Format(m.Shape)}]";
        int n = m.Shape[0];
        if (n < minDim) return $"layer '{layer}': factor {name} must be at least {minDim}x{minDim}, got {n}x{n}";
        float[] d = m.Data;
        double maxAbs = 0;
        for (int i = 0; i < d.Length; i++)
        {
            if (!float.IsFinite(d[i])) return $"layer '{layer}': factor {name} has a non-finite value {d[i]} at [{i / n}, {i % n}]";
            maxAbs = Math.Max(maxAbs, Math.Abs(d[i]));
        }
        double tolerance = SymmetryTolerance * maxAbs;
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                if (Math.Abs((double)d[i * n + j] - d[j * n + i]) > tolerance)
                    return $"layer '{layer}': factor {name} is not symmetric ([{i}, {j}] = {d[i * n + j]}, [{j}, {i}] = {d[j * n + i]})";
        return null;
    }
}

using FisherKernels.Linalg;

namespace FisherKernels.Curvature;

/// <summary>
/// A factor side too large to hold dense (SPEC §3 "lowrank"): the linear sketch <c>Y = F·Ω</c> (<c>[n, k]</c>) and
/// <c>diag(F)</c> (<c>[n]</c>) of a symmetric positive semi-definite <c>F</c> (<c>[n, n]</c>), Ω a standard Gaussian
/// <c>[n, k]</c> drawn from <see cref="Seed"/> by <see cref="Generator"/>. Both parts are linear in F, so the running
/// mean, EMA, merges, <c>--init</c> and checkpoints act on them exactly as on F itself, and no <c>[n, n]</c> matrix is
/// ever formed: memory O(n·k).
/// <para>
/// The generator (<see cref="Generator"/> = <c>splitmix64-box-muller/1</c>): row i of Ω is the stream
/// <c>SplitMix64(seed, i, 0x4F4D4547)</c> (see <c>SplitMix64</c> in KfacAccumulator.cs: state =
/// mix(mix(mix(seed) ⊕ i) ⊕ stream)); its k entries, in column order, are each one Box–Muller draw
/// <c>√(−2 ln(1 − u₁))·cos(2π u₂)</c> from two consecutive 53-bit uniforms, rounded to float32. A fit's sides use the seed
/// <see cref="DefaultSeed"/> of their layer and side, so every fit of one model sketches with the same Ω and merges.
/// </para>
/// </summary>
public sealed class FactorSketch
{
    public const string Generator = "splitmix64-box-muller/1";

    /// <summary>The columns of Ω beyond the rank (SPEC §3: k = rank + 8).</summary>
    public const int Oversampling = 8;

    const long OmegaStream = 0x4F4D4547;

    public FactorSketch(NdArray<float> y, NdArray<float> diagonal, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(diagonal);
        if (y.Rank != 2 || diagonal.Rank != 1 || diagonal.Shape[0] != y.Shape[0] || y.Shape[1] < 1)
            throw FisherKernelsException.Argument($"a factor sketch needs Y [n, k] and diag [n], got [{ShapeUtil.Format(y.Shape)}] and [{ShapeUtil.Format(diagonal.Shape)}]");
        Y = y;
        Diagonal = diagonal;
        Seed = seed;
    }

    /// <summary><c>F·Ω</c>, <c>[n, k]</c>, row-major.</summary>
    public NdArray<float> Y { get; }

    /// <summary><c>diag(F)</c>, <c>[n]</c>.</summary>
    public NdArray<float> Diagonal { get; }

    public ulong Seed { get; }
    public int N => Y.Shape[0];
    public int K => Y.Shape[1];

    /// <summary>The rank a sketch of <paramref name="columns"/> columns recovers (<c>k − 8</c>, at least 1).</summary>
    public static int RankOf(int columns) => Math.Max(1, columns - Oversampling);

    /// <summary>The seed of a layer's side (<c>'A'</c> or <c>'G'</c>): FNV-1a 64 of the UTF-8 bytes of <c>&lt;layer&gt;.&lt;side&gt;</c>.</summary>
    public static ulong DefaultSeed(string layer, char side)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (byte b in System.Text.Encoding.UTF8.GetBytes(layer + "." + side))
            h = (h ^ b) * 0x100000001B3UL;
        return h;
    }

    /// <summary>Ω <c>[n, k]</c> of <paramref name="seed"/>, row-major (see the class comment for the generator).</summary>
    public static float[] Omega(int n, int k, ulong seed)
    {
        var omega = new float[(long)n * k];
        Parallel.For(0, n, i =>
        {
            var rng = new SplitMix64((long)seed, i, OmegaStream);
            Span<float> row = omega.AsSpan((int)((long)i * k), k);
            for (int j = 0; j < k; j++) row[j] = (float)rng.NextGaussian();
        });
        return omega;
    }

    /// <summary>The sketch of a dense symmetric <paramref name="f"/> <c>[n, n]</c> (products in float64): converts a dense side for a merge, and is the tests' reference.</summary>
    public static FactorSketch FromDense(ReadOnlySpan<float> f, int n, int k, ulong seed)
    {
        if (f.Length != (long)n * n) throw FisherKernelsException.Argument($"a dense factor [{n}, {n}] needs {(long)n * n} values, got {f.Length}");
        float[] omega = Omega(n, k, seed);
        var y = new float[(long)n * k];
        var d = new float[n];
        var sums = new double[k];
        for (int i = 0; i < n; i++)
        {
            Array.Clear(sums);
            ReadOnlySpan<float> row = f.Slice((int)((long)i * n), n);
            for (int j = 0; j < n; j++)
            {
                double fij = row[j];
                if (fij == 0) continue;
                for (int c = 0; c < k; c++) sums[c] += fij * omega[(long)j * k + c];
            }
            for (int c = 0; c < k; c++) y[(long)i * k + c] = (float)sums[c];
            d[i] = row[i];
        }
        return new FactorSketch(new NdArray<float>([n, k], y), new NdArray<float>([n], d), seed);
    }

    /// <summary><c>w₁·this + w₂·other</c> (float64 sums): the position-weighted mean of two sketches with the same Ω.</summary>
    public FactorSketch WeightedSum(double w1, FactorSketch other, double w2, string what)
    {
        if (other.N != N || other.K != K || other.Seed != Seed)
            throw FisherKernelsException.Argument($"{what}: cannot combine sketches of [{N}, {K}] seed {Seed} and [{other.N}, {other.K}] seed {other.Seed}: fit both with the same --rank");
        var y = new float[Y.Data.LongLength];
        var d = new float[N];
        for (long i = 0; i < y.LongLength; i++) y[i] = (float)(w1 * Y.Data[i] + w2 * other.Y.Data[i]);
        for (int i = 0; i < N; i++) d[i] = (float)(w1 * Diagonal.Data[i] + w2 * other.Diagonal.Data[i]);
        return new FactorSketch(new NdArray<float>([N, K], y), new NdArray<float>([N], d), Seed);
    }

    /// <summary>What is wrong with the sketch's values (a non-finite entry or a negative diagonal), or null.</summary>
    internal string? Check(string layer, string side)
    {
        float[] y = Y.Data;
        for (long i = 0; i < y.LongLength; i++)
            if (!float.IsFinite(y[i])) return $"layer '{layer}': sketch {side}.Y has a non-finite value {y[i]} at [{i / K}, {i % K}]";
        for (int i = 0; i < N; i++)
            if (!float.IsFinite(Diagonal.Data[i]) || Diagonal.Data[i] < 0)
                return $"layer '{layer}': sketch {side}.diag has {Diagonal.Data[i]} at [{i}] (must be finite and non-negative)";
        return null;
    }

    /// <summary>
    /// The Nyström approximation <c>F ≈ U diag(s) Uᵀ + diag(d)</c> (SPEC §3): U, s the top <paramref name="rank"/> eigenpairs of
    /// <c>Y (ΩᵀY)⁺ Yᵀ</c>, <c>d = max(0, diag(F) − diag(U S Uᵀ))</c>. Computed in float64 without any <c>[n, n]</c> matrix:
    /// <c>ΩᵀY = Q Λ Qᵀ</c>, <c>B = Y Q Λ^{-1/2}</c> over the eigenvalues above 1e-10·λ_max (the pseudo-inverse), so
    /// <c>Y (ΩᵀY)⁺ Yᵀ = B Bᵀ</c>, whose eigenpairs come from <c>BᵀB = V Σ² Vᵀ</c>: <c>U = B V Σ⁻¹</c>, <c>s = Σ²</c>.
    /// Exact (to float32 rounding of Y) when F has rank ≤ <paramref name="rank"/>. Cost O(n·k²).
    /// </summary>
    public LowRankPlusDiagonal Nystrom(int rank)
    {
        if (rank < 1 || rank > K) throw FisherKernelsException.Argument($"Nyström rank must be in [1, {K}], got {rank}");
        int n = N, k = K;
        float[] omega = Omega(n, k, Seed), y = Y.Data;
        // W = ΩᵀY [k × k] and its eigenpairs.
        var w = new double[k * k];
        for (int i = 0; i < n; i++)
            for (int a = 0; a < k; a++)
            {
                double o = omega[(long)i * k + a];
                for (int b = 0; b < k; b++) w[a * k + b] += o * y[(long)i * k + b];
            }
        var lambda = new double[k];
        var q = new double[k * k];
        SymmetricEigensolver.Decompose(w, k, lambda, q, useNative: true);
        double top = lambda[k - 1];
        var kept = new List<int>();
        for (int j = 0; j < k; j++) if (top > 0 && lambda[j] > 1e-10 * top) kept.Add(j);
        int m = kept.Count;
        // B = Y Q Λ^{-1/2} [n × m], in float64.
        var bmat = new double[(long)n * m];
        Parallel.For(0, n, i =>
        {
            for (int c = 0; c < m; c++)
            {
                int j = kept[c];
                double s = 0;
                for (int a = 0; a < k; a++) s += y[(long)i * k + a] * q[a * k + j];
                bmat[(long)i * m + c] = s / Math.Sqrt(lambda[j]);
            }
        });
        // BᵀB = V Σ² Vᵀ.
        var btb = new double[m * m];
        for (int i = 0; i < n; i++)
            for (int a = 0; a < m; a++)
            {
                double x = bmat[(long)i * m + a];
                if (x == 0) continue;
                for (int b = 0; b < m; b++) btb[a * m + b] += x * bmat[(long)i * m + b];
            }
        var sigma2 = new double[m];
        var v = new double[m * m];
        if (m > 0) SymmetricEigensolver.Decompose(btb, m, sigma2, v, useNative: true);
        int r = Math.Min(rank, m);
        var u = new float[(long)n * r];
        var s2 = new double[r];
        // The top r, in descending order: column c of U is B v_j / σ_j for j = m−1−c.
        var columns = new double[r * m];
        for (int c = 0; c < r; c++)
        {
            int j = m - 1 - c;
            s2[c] = Math.Max(0, sigma2[j]);
            double inv = s2[c] > 0 ? 1 / Math.Sqrt(s2[c]) : 0;
            for (int a = 0; a < m; a++) columns[c * m + a] = v[a * m + j] * inv;
        }
        var d = new float[n];
        Parallel.For(0, n, i =>
        {
            double explained = 0;
            for (int c = 0; c < r; c++)
            {
                double s = 0;
                for (int a = 0; a < m; a++) s += bmat[(long)i * m + a] * columns[c * m + a];
                u[(long)i * r + c] = (float)s;
                explained += s2[c] * s * s;
            }
            d[i] = (float)Math.Max(0, Diagonal.Data[i] - explained);
        });
        return new LowRankPlusDiagonal(n, r, u, s2, d);
    }
}

/// <summary><c>U diag(S) Uᵀ + diag(D)</c>: U <c>[N, Rank]</c> row-major with orthonormal columns, S descending, D non-negative.</summary>
public sealed record LowRankPlusDiagonal(int N, int Rank, float[] U, double[] S, float[] D);

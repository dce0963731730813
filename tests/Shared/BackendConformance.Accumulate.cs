namespace FisherKernels.Tests;

/// <summary>Kernel families 1 (Kronecker-factor accumulation) and 3 (linear-layer JVP).</summary>
public abstract partial class BackendConformance
{
    public enum Mask { Absent, AllKept, Random, NoneKept }

    /// <summary>rows, cols, appendOne, mask: shapes 1, odd sizes, rows &lt; cols, several row blocks.</summary>
    public static TheoryData<int, int, bool, Mask> AccumulateShapes => new()
    {
        { 1, 1, false, Mask.Absent }, { 1, 1, true, Mask.Absent }, { 4, 0, true, Mask.Random },
        { 3, 5, true, Mask.AllKept }, { 7, 2, false, Mask.Random }, { 13, 47, true, Mask.Absent },
        { 5, 49, false, Mask.Random }, { 9, 96, true, Mask.Random }, { 40, 23, true, Mask.NoneKept },
        { 100, 97, false, Mask.AllKept }, { 600, 50, true, Mask.Random }, { 257, 140, false, Mask.Absent },
        // Several row blocks split across threads, columns packed 48 at a time and then one by one.
        { 700, 211, true, Mask.Random }, { 520, 100, false, Mask.Absent },
    };

    [Theory, MemberData(nameof(AccumulateShapes))]
    public void Accumulate_matches_float64_reference(int rows, int cols, bool appendOne, Mask mask)
    {
        var rng = new Random(rows * 7919 + cols * 31 + (appendOne ? 1 : 0) + (int)mask * 5);
        rows = Math.Min(rows, MaxAccumulateRows);
        int n = cols + (appendOne ? 1 : 0);
        var x = RandomArray(rng, rows * cols, scale: 3f);
        var rowMask = MakeMask(rng, rows, mask);
        foreach (var (alpha, beta) in new[] { (1f, 0f), (0.5f, 1f), (-0.25f, 0.7f) })
        {
            var factor = RandomSymmetricFactor(rng, n);
            var expected = Reference.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, factor, rowMask);
            Backend.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, factor, rowMask);
            AssertClose(expected, factor, rows, $"accumulate {rows}x{cols} appendOne={appendOne} mask={mask} α={alpha} β={beta}");
        }
    }

    [Theory, MemberData(nameof(AccumulateShapes))]
    public void Accumulate_upper_only_matches_reference_and_never_reads_the_lower_triangle(int rows, int cols, bool appendOne, Mask mask)
    {
        var rng = new Random(rows * 7919 + cols * 31 + (appendOne ? 1 : 0) + (int)mask * 5 + 1);
        rows = Math.Min(rows, MaxAccumulateRows);
        int n = cols + (appendOne ? 1 : 0);
        var x = RandomArray(rng, rows * cols, scale: 3f);
        var rowMask = MakeMask(rng, rows, mask);
        foreach (var (alpha, beta) in new[] { (1f, 0f), (-0.25f, 0.7f) })
        {
            var symmetric = RandomSymmetricFactor(rng, n);
            var expected = Reference.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, symmetric, rowMask);
            var factor = (float[])symmetric.Clone();
            for (int i = 0; i < n; i++)
                for (int j = 0; j < i; j++) factor[i * n + j] = float.NaN;
            Backend.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, factor, rowMask, upperOnly: true);
            for (int i = 0; i < n; i++)
                for (int j = 0; j < i; j++) factor[i * n + j] = factor[j * n + i];
            AssertClose(expected, factor, rows, $"upper-only accumulate {rows}x{cols} appendOne={appendOne} mask={mask} α={alpha} β={beta}");
        }
    }

    [Fact]
    public void Accumulate_large_block_matches_reference()
    {
        int rows = LargeDim + 43, cols = LargeDim;
        var rng = new Random(3);
        var x = RandomArray(rng, rows * cols);
        var rowMask = MakeMask(rng, rows, Mask.Random);
        var factor = RandomSymmetricFactor(rng, cols + 1);
        var expected = Reference.AccumulateFactor(x, rows, cols, true, 0.125, 0.5, factor, rowMask);
        Backend.AccumulateFactor(x, rows, cols, true, 0.125f, 0.5f, factor, rowMask);
        AssertClose(expected, factor, rows, $"accumulate {rows}x{cols}");
    }

    [Fact]
    public void Accumulate_running_mean_and_ema_forms_match_reference()
    {
        const int cols = 33;
        var rng = new Random(5);
        var batches = new[] { RandomArray(rng, 17 * cols), RandomArray(rng, 40 * cols), RandomArray(rng, 9 * cols) };
        var mean = new float[(cols + 1) * (cols + 1)];
        var ema = new float[(cols + 1) * (cols + 1)];
        var expectedMean = new double[mean.Length];
        var expectedEma = new double[ema.Length];
        const float lambda = 0.9f;
        int seen = 0;
        foreach (var batch in batches)
        {
            int m = batch.Length / cols;
            // Running mean weighted by positions: F ← (seen/(seen+m))·F + (1/(seen+m))·X̃ᵀX̃.
            Backend.AccumulateFactor(batch, m, cols, true, 1f / (seen + m), (float)seen / (seen + m), mean);
            // EMA: F ← λ·F + (1-λ)/m·X̃ᵀX̃ (the first batch starts from zero).
            Backend.AccumulateFactor(batch, m, cols, true, (1 - lambda) / m, lambda, ema);
            var batchFactor = Reference.AccumulateFactor(batch, m, cols, true, 1, 0, new float[mean.Length], default);
            for (int i = 0; i < expectedMean.Length; i++)
            {
                expectedMean[i] = (expectedMean[i] * seen + batchFactor[i]) / (seen + m);
                expectedEma[i] = lambda * expectedEma[i] + (1 - lambda) / m * batchFactor[i];
            }
            seen += m;
        }
        AssertClose(expectedMean, mean, seen, "running mean");
        AssertClose(expectedEma, ema, seen, "EMA");
    }

    [Fact]
    public void Accumulate_with_zero_beta_ignores_the_old_factor_and_writes_both_triangles()
    {
        const int rows = 30, cols = 61;
        var rng = new Random(9);
        var x = RandomArray(rng, rows * cols);
        var factor = new float[(cols + 1) * (cols + 1)];
        Array.Fill(factor, float.NaN);
        Backend.AccumulateFactor(x, rows, cols, true, 1f, 0f, factor);
        var expected = Reference.AccumulateFactor(x, rows, cols, true, 1, 0, factor, default);
        AssertClose(expected, factor, rows, "β = 0 over NaN");
        for (int i = 0; i <= cols; i++)
            for (int j = 0; j < i; j++)
                Assert.Equal(factor[j * (cols + 1) + i], factor[i * (cols + 1) + j]);
    }

    [Fact]
    public void Accumulate_rejects_mismatched_buffers()
    {
        var error = Assert.Throws<FisherKernelsException>(() => Backend.AccumulateFactor(new float[6], 2, 3, true, 1, 0, new float[9]));
        Assert.Contains("factor needs 16", error.Message);
        error = Assert.Throws<FisherKernelsException>(() => Backend.AccumulateFactor(new float[6], 2, 3, false, 1, 0, new float[9], new byte[3]));
        Assert.Contains("row mask", error.Message);
        error = Assert.Throws<FisherKernelsException>(() => Backend.AccumulateFactor(new float[5], 2, 3, false, 1, 0, new float[9]));
        Assert.Contains("X needs 6", error.Message);
    }

    /// <summary>rows, in, out, bias.</summary>
    public static TheoryData<int, int, int, bool> LinearJvpShapes => new()
    {
        { 1, 1, 1, true }, { 1, 1, 1, false }, { 5, 3, 7, true }, { 3, 9, 2, false },
        { 33, 17, 65, true }, { 2, 70, 130, false }, { 64, 48, 96, true },
    };

    [Theory, MemberData(nameof(LinearJvpShapes))]
    public void LinearJvp_matches_float64_reference(int rows, int inFeatures, int outFeatures, bool bias)
    {
        var rng = new Random(rows * 131 + inFeatures * 17 + outFeatures);
        var x = RandomArray(rng, rows * inFeatures); var dx = RandomArray(rng, rows * inFeatures);
        var w = RandomArray(rng, outFeatures * inFeatures); var dw = RandomArray(rng, outFeatures * inFeatures);
        var db = bias ? RandomArray(rng, outFeatures) : [];
        var dy = RandomArray(rng, rows * outFeatures); // garbage the JVP must overwrite
        var expected = Reference.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures);
        Backend.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, dy);
        AssertClose(expected, dy, 2 * inFeatures + 1, $"JVP rows={rows} in={inFeatures} out={outFeatures} bias={bias}");
    }

    [Fact]
    public void LinearJvp_large_matches_reference()
    {
        int rows = LargeDim, inFeatures = LargeDim - 64, outFeatures = LargeDim + 31;
        var rng = new Random(13);
        var x = RandomArray(rng, rows * inFeatures); var dx = RandomArray(rng, rows * inFeatures);
        var w = RandomArray(rng, outFeatures * inFeatures); var dw = RandomArray(rng, outFeatures * inFeatures);
        var db = RandomArray(rng, outFeatures);
        var dy = new float[rows * outFeatures];
        var expected = Reference.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures);
        Backend.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, dy);
        AssertClose(expected, dy, 2 * inFeatures + 1, $"JVP {rows}x{inFeatures}->{outFeatures}");
    }

    [Fact]
    public void LinearJvp_rejects_a_bias_of_the_wrong_length()
    {
        var error = Assert.Throws<FisherKernelsException>(() =>
            Backend.LinearJvp(new float[6], new float[6], new float[12], new float[12], new float[3], 2, 3, 4, new float[8]));
        Assert.Contains("db has 3", error.Message);
    }

    private static byte[] MakeMask(Random rng, int rows, Mask mask) => mask switch
    {
        Mask.Absent => [],
        Mask.AllKept => Enumerable.Repeat((byte)1, rows).ToArray(),
        Mask.NoneKept => new byte[rows],
        _ => Enumerable.Range(0, rows).Select(_ => (byte)(rng.Next(3) == 0 ? 0 : rng.Next(1, 256))).ToArray(),
    };

    private static float[] RandomSymmetricFactor(Random rng, int n)
    {
        var f = RandomArray(rng, n * n, scale: 10f);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++)
                f[i * n + j] = f[j * n + i];
        return f;
    }
}

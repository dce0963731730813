using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>
/// The posterior of a layer whose G the fit sketched (SPEC §3, §4): the Woodbury form with U, s, d from the Nyström
/// method, against the dense Kronecker posterior of the same factors (float64 eigendecompositions).
/// </summary>
public sealed class NystromPosteriorTests
{
    const int In = 8, Vocab = 600;

    static float[] Outer(IEnumerable<double[]> rows, int n)
    {
        var f = new double[n * n];
        int count = 0;
        foreach (double[] r in rows)
        {
            count++;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) f[i * n + j] += r[i] * r[j];
        }
        return f.Select(v => (float)(v / count)).ToArray();
    }

    /// <summary>
    /// A, G as a head layer sees them: ã = [a; 1], g = p − e_y for a softmax p over <paramref name="vocab"/> words and a drawn
    /// y. G is the float32 GEMM of the rows (both posteriors take the same G).
    /// </summary>
    static (float[] A, float[] G, List<double[]> Inputs, List<double[]> Gradients) HeadFactors(int positions, int seed, int vocab = Vocab)
    {
        var rng = new Random(seed);
        var inputs = new List<double[]>();
        var gradients = new List<double[]>();
        var rows = new float[(long)positions * vocab];
        for (int m = 0; m < positions; m++)
        {
            inputs.Add([.. Enumerable.Range(0, In).Select(_ => rng.NextDouble() * 2 - 1), 1.0]);
            var z = Enumerable.Range(0, vocab).Select(_ => (float)(3 * (rng.NextDouble() - 0.5))).ToArray();
            double[] p = Reference.Softmax(z);
            int y = rng.Next(vocab);
            gradients.Add(p.Select((v, i) => v - (i == y ? 1.0 : 0.0)).ToArray());
            for (int i = 0; i < vocab; i++) rows[(long)m * vocab + i] = (float)gradients[m][i];
        }
        var g = new float[vocab * vocab];
        using var backend = new CpuBackend(threads: 2);
        backend.Gemm(new GemmShape(vocab, vocab, positions, TransA: true, Alpha: 1f / positions), rows, rows, g);
        return (Outer(inputs, In + 1), g, inputs, gradients);
    }

    static (LayerPosterior Exact, LayerPosterior Approx) Posteriors(float[] a, float[] g, int rank, int vocab)
    {
        var backend = new CpuBackend(threads: 2);
        var options = new PosteriorOptions { Rank = rank };
        var dense = new KroneckerBlock("head", new NdArray<float>([In + 1, In + 1], a), new NdArray<float>([vocab, vocab], g), true, 500);
        var sketched = new KroneckerBlock("head", FactorSide.Dense(new NdArray<float>([In + 1, In + 1], a)),
                                          FactorSide.LowRank(FactorSketch.FromDense(g, vocab, rank + FactorSketch.Oversampling, 17)), true, 500);
        LayerPosterior exact = LayerPosterior.Build(dense, 0, backend, options), approx = LayerPosterior.Build(sketched, 0, backend, options);
        Assert.False(exact.IsLowRank);
        Assert.True(approx.IsLowRank);
        return (exact, approx);
    }

    static (float[] Dense, float[] Sketched) Scores(float[] a, float[] g, int rank, IEnumerable<float[]> xs)
    {
        var (exact, approx) = Posteriors(a, g, rank, Vocab);
        float[] all = xs.SelectMany(x => x).ToArray();
        int count = all.Length / (Vocab * (In + 1));
        var d = new float[count];
        var s = new float[count];
        exact.Quadratic(all, count, d);
        approx.Quadratic(all, count, s);
        return (d, s);
    }

    /// <summary>
    /// The scorer's path (<see cref="LayerPosterior.OuterProductQuadratic"/>, no gradient formed): each of the first
    /// <paramref name="count"/> positions alone (one row: g_t ã_tᵀ, the head's per-token gradient), then all of them as one
    /// pass (rows g_t, ã_t: the gradient of their sum, as the per-sequence score's pass gives it), the last entry.
    /// </summary>
    static double[] OuterProductScores(LayerPosterior layer, List<double[]> inputs, List<double[]> gradients, int count)
    {
        int vocab = layer.GDim, a = layer.ADim;
        float[] g = gradients.Take(count).SelectMany(x => x.Select(v => (float)v)).ToArray();
        float[] homogeneous = inputs.Take(count).SelectMany(x => x.Select(v => (float)v)).ToArray();
        var projected = new float[homogeneous.Length];
        layer.ProjectInputRows(homogeneous, count, projected);
        var workspace = new float[layer.OuterProductWorkspace(count)];
        var scores = new double[count + 1];
        for (int t = 0; t < count; t++)
            scores[t] = layer.OuterProductQuadratic(g.AsSpan(t * vocab, vocab), projected.AsSpan(t * a, a), 1, workspace);
        scores[count] = layer.OuterProductQuadratic(g, projected, count, workspace);
        return scores;
    }

    /// <summary>Per-token gradients of p_t: (p − e_y) ãᵀ scaled by p_y, as the score's backward pass gives them for the head.</summary>
    static IEnumerable<float[]> TokenGradients(List<double[]> inputs, List<double[]> gradients, int count) =>
        Enumerable.Range(0, count).Select(t =>
        {
            var x = new float[Vocab * (In + 1)];
            for (int i = 0; i < Vocab; i++)
                for (int j = 0; j <= In; j++) x[i * (In + 1) + j] = (float)(gradients[t][i] * inputs[t][j]);
            return x;
        });

    [Fact]
    public void ExactWhenGsRankIsAtMostR()
    {
        var (a, g, inputs, gradients) = HeadFactors(positions: 24, seed: 1); // G has rank ≤ 24
        var (dense, sketched) = Scores(a, g, rank: 32, TokenGradients(inputs, gradients, 10));
        for (int t = 0; t < dense.Length; t++) Assert.True(Math.Abs(sketched[t] - dense[t]) <= 2e-3 * dense[t], $"token {t}: {sketched[t]} vs {dense[t]}");

        // The scorer's path, per token and for all ten positions in one pass, against the dense posterior's same path.
        var (exact, approx) = Posteriors(a, g, rank: 32, Vocab);
        double[] denseOuter = OuterProductScores(exact, inputs, gradients, 10), sketchedOuter = OuterProductScores(approx, inputs, gradients, 10);
        for (int t = 0; t <= 10; t++)
        {
            Assert.True(Math.Abs(sketchedOuter[t] - denseOuter[t]) <= 2e-3 * denseOuter[t], $"outer product {t}: {sketchedOuter[t]} vs {denseOuter[t]}");
            if (t < 10) Assert.True(Math.Abs(sketchedOuter[t] - dense[t]) <= 2e-3 * dense[t], $"outer product {t} against the formed gradient: {sketchedOuter[t]} vs {dense[t]}");
        }
    }

    /// <summary>
    /// A mid-size vocabulary (2,048 words, 3,000 positions: G full rank) at rank 64, through the scorer's path: every
    /// per-token score and the all-positions pass within 2% of the dense posterior's (measured: at most 0.56%), and the
    /// ranking of the 48 per-token scores kept (Spearman's ρ above 0.99; measured 1: no pair swapped).
    /// </summary>
    [Fact]
    public void MidSizeVocabularyStaysCloseAndKeepsTheRanking()
    {
        const int vocab = 2048, tokens = 48;
        var (a, g, inputs, gradients) = HeadFactors(positions: 3000, seed: 3, vocab);
        var (exact, approx) = Posteriors(a, g, rank: 64, vocab);
        double[] dense = OuterProductScores(exact, inputs, gradients, tokens), sketched = OuterProductScores(approx, inputs, gradients, tokens);
        double worst = dense.Select((d, t) => Math.Abs(sketched[t] - d) / d).Max();
        double rho = Spearman(dense[..tokens].Select(v => (float)v).ToArray(), sketched[..tokens].Select(v => (float)v).ToArray());
        Assert.True(worst < 0.02, $"largest relative error {worst}");
        Assert.True(rho > 0.99, $"Spearman rank correlation {rho}");
    }

    /// <summary>
    /// A full-rank G (2,000 positions over 600 words) at rank 64: every token's score within 6% of the dense posterior's
    /// (measured: at most 2.9%), and the ranking of the 40 tokens by score kept (Spearman's ρ above 0.995; measured 0.9991:
    /// only near-ties swap).
    /// </summary>
    [Fact]
    public void FullRankGStaysCloseAndKeepsTheRanking()
    {
        var (a, g, inputs, gradients) = HeadFactors(positions: 2000, seed: 2);
        var (dense, sketched) = Scores(a, g, rank: 64, TokenGradients(inputs, gradients, 40));
        double worst = dense.Select((d, t) => Math.Abs(sketched[t] - d) / d).Max();
        Assert.True(worst < 0.06, $"largest relative error {worst}");
        double rho = Spearman(dense, sketched);
        Assert.True(rho > 0.995, $"Spearman rank correlation {rho}");
    }

    static double Spearman(float[] x, float[] y)
    {
        double[] Ranks(float[] v)
        {
            var r = new double[v.Length];
            int[] order = Enumerable.Range(0, v.Length).OrderBy(i => v[i]).ToArray();
            for (int k = 0; k < order.Length; k++) r[order[k]] = k;
            return r;
        }
        double[] rx = Ranks(x), ry = Ranks(y);
        double n = x.Length, d2 = rx.Select((r, i) => (r - ry[i]) * (r - ry[i])).Sum();
        return 1 - 6 * d2 / (n * (n * n - 1));
    }

    [Fact]
    public void BothSidesLowRankIsRefusedBeforeAnyWork()
    {
        var sketch = FactorSketch.FromDense(new float[100 * 100], 100, 9, 1);
        var block = new KroneckerBlock("both", FactorSide.LowRank(sketch), FactorSide.LowRank(sketch), false, 1);
        var curvature = new KfacCurvature([block], "sampled", new string('a', 64), "t");
        var e = Assert.Throws<FisherKernelsException>(() => new KfacPosterior(curvature, new CpuBackend(threads: 1)));
        Assert.Contains("layer 'both': both factor sides are low rank", e.Message);
    }
}

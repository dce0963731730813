using System.Text.Json;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Tests.Curvature;
using FisherKernels.Uncertainty;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Uncertainty;

public class KfacPosteriorTests
{
    const string Hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    public static TheoryData<string> Backends => ["float64", "cpu"];

    static IComputeBackend Make(string name) => name == "cpu" ? new CpuBackend(threads: 2) : new Float64Backend();

    /// <summary>Float64 reference: vec(X)ᵀ (M·A⊗G + τI)⁻¹ vec(X) by a dense solve (vec stacks the columns of X [g × a]).</summary>
    internal static double DenseQuadratic(double[] a, int aDim, double[] g, int gDim, double positions, double tau, ReadOnlySpan<float> x)
    {
        int n = aDim * gDim;
        var precision = new double[n * n];
        for (int j = 0; j < aDim; j++)
            for (int i = 0; i < gDim; i++)
                for (int l = 0; l < aDim; l++)
                    for (int k = 0; k < gDim; k++)
                        precision[(j * gDim + i) * n + l * gDim + k] = positions * a[j * aDim + l] * g[i * gDim + k] + (j == l && i == k ? tau : 0);
        var v = new double[n];
        for (int i = 0; i < gDim; i++)
            for (int j = 0; j < aDim; j++) v[j * gDim + i] = x[i * aDim + j];
        double[] z = Float64Backend.DenseSolve(precision, n, v, 1);
        return v.Select((e, i) => e * z[i]).Sum();
    }

    static double[] ToDouble(NdArray<float> m) => m.Data.Select(v => (double)v).ToArray();

    /// <summary>A block from random rows; the gradient factor from <paramref name="gradientRows"/> rows when given (a low-rank G).</summary>
    static KroneckerBlock RandomBlock(Random rng, string layer, int inDim, int outDim, bool bias, int rows, int gradientRows = 0) =>
        new(layer, ToFloat(MeanOuter(RandomRows(rng, rows, inDim, 1.5), bias)),
            ToFloat(MeanOuter(RandomRows(rng, gradientRows > 0 ? gradientRows : rows, outDim, 0.3), false)), bias, rows);

    static float[] RandomMatrices(Random rng, int count, int size) => Enumerable.Range(0, count * size).Select(_ => (float)(2 * rng.NextDouble() - 1)).ToArray();

    static void AssertRelative(double expected, double actual, double tolerance, string what) =>
        Assert.True(Math.Abs(actual - expected) <= tolerance * Math.Abs(expected), $"{what}: expected {expected}, got {actual}");

    [Theory]
    [MemberData(nameof(Backends))]
    public void DenseQuadraticMatchesTheDenseSolve(string backendName)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(1);
        KroneckerBlock block = RandomBlock(rng, "w", 4, 5, true, 30);
        var curvature = new KfacCurvature([block], "sampled", Hash, "t");
        foreach (double tau in new[] { 1.0, 1e-3 })
        {
            var posterior = new KfacPosterior(curvature, backend, new PosteriorOptions { PriorPrecision = tau });
            float[] xs = RandomMatrices(rng, 3, 25);
            var output = new float[3];
            posterior["w"].Quadratic(xs, 3, output);
            for (int c = 0; c < 3; c++)
                AssertRelative(DenseQuadratic(ToDouble(block.A), 5, ToDouble(block.G), 5, 30, tau, xs.AsSpan(c * 25, 25)), output[c], 1e-3, $"τ {tau}, matrix {c}");
        }
    }

    /// <summary>The fixtures' torch K-FAC factors and loss gradients against numpy's dense solve (make_references.py).</summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    public void FixtureQuadraticFormsMatchTheNumpyDenseSolve(string model)
    {
        using IComputeBackend backend = new CpuBackend(threads: 2);
        FixtureFiles.FixtureLayer[] layers = FixtureFiles.Layers(model);
        KfacCurvature curvature = KfacCurvature.Load(FixtureFiles.PathOf(model + ".kfac.safetensors"), layers.Select(l => l.Shape).ToArray());
        SafetensorsFile grads = SafetensorsFile.Read(FixtureFiles.PathOf(model + ".grads.safetensors"));
        JsonElement reference = JsonDocument.Parse(File.ReadAllText(CalibrationTests.ReferencePath("kfac_quadratic_references.json"))).RootElement;
        double[] taus = reference.GetProperty("taus").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        for (int t = 0; t < taus.Length; t++)
        {
            var posterior = new KfacPosterior(curvature, backend, new PosteriorOptions { PriorPrecision = taus[t] });
            foreach (FixtureFiles.FixtureLayer layer in layers)
            {
                float[] x = GradientMatrix(grads, layer);
                var output = new float[1];
                posterior[layer.Shape.Layer].Quadratic(x, 1, output);
                double expected = reference.GetProperty("models").GetProperty(model).GetProperty(layer.Shape.Layer)[t].GetDouble();
                AssertRelative(expected, output[0], 1e-3, $"{model} {layer.Shape.Layer} τ {taus[t]}");
            }
        }
    }

    /// <summary>X = [∇W | ∇b] as [out × in(+1)] from the stored gradient (transposed when the weight is stored [in, out]).</summary>
    internal static float[] GradientMatrix(SafetensorsFile grads, FixtureFiles.FixtureLayer layer)
    {
        int inF = layer.Shape.InFeatures, outF = layer.Shape.OutFeatures, aDim = inF + (layer.Bias is null ? 0 : 1);
        float[] w = grads.GetFloat32(layer.Shape.Layer).Data;
        var x = new float[outF * aDim];
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++) x[o * aDim + i] = layer.StoredInOut ? w[i * outF + o] : w[o * inF + i];
        if (layer.Bias is not null)
        {
            float[] b = grads.GetFloat32(layer.Bias).Data;
            for (int o = 0; o < outF; o++) x[o * aDim + inF] = b[o];
        }
        return x;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SequenceEpistemicIsTheQuadraticFormOfTheMeanGradient(string backendName)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(2);
        KroneckerBlock block = RandomBlock(rng, "w", 3, 4, false, 20);
        var posterior = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend);
        float[] xs = RandomMatrices(rng, 3, 12);
        var tokens = new double[] { 10, 20, 30 };
        double sequence = posterior.AddEpistemic("w", xs, 3, tokens);
        float[] mean = Enumerable.Range(0, 12).Select(i => (xs[i] + xs[12 + i] + xs[24 + i]) / 3).ToArray();
        AssertRelative(DenseQuadratic(ToDouble(block.A), 3, ToDouble(block.G), 4, 20, 1, mean), sequence, 1e-3, "sequence");
        for (int t = 0; t < 3; t++)
            AssertRelative(10 * (t + 1) + DenseQuadratic(ToDouble(block.A), 3, ToDouble(block.G), 4, 20, 1, xs.AsSpan(t * 12, 12)), tokens[t], 1e-6, $"token {t}");
    }

    /// <summary>
    /// The Woodbury form against a dense solve of the precision it stands for: when the large factor's rank is at most r
    /// it is the exact posterior; otherwise it is the posterior of D + UΛUᵀ, checked against that matrix built densely.
    /// </summary>
    [Theory]
    [InlineData("cpu", false)]
    [InlineData("cpu", true)]
    [InlineData("float64", false)]
    public void LowRankFormMatchesTheDenseSolve(string backendName, bool largeIsA)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(largeIsA ? 3 : 4);
        int big = 12, small = 4, rank = 3;
        // The large factor has rank 3 (from 3 rows): r = 3 captures it exactly.
        KroneckerBlock exactBlock = largeIsA
            ? new KroneckerBlock("w", ToFloat(MeanOuter(RandomRows(rng, 3, big, 1), false)), ToFloat(MeanOuter(RandomRows(rng, 40, small, 0.5), false)), false, 40)
            : RandomBlock(rng, "w", small, big, false, 40, gradientRows: 3);
        var curvature = new KfacCurvature([exactBlock], "sampled", Hash, "t");
        // Dense: 4·(12² + 4² + 12·4) = 832 bytes; low rank: 4·(4² + 12·3) + 8·12 = 304 bytes.
        var options = new PosteriorOptions { Rank = rank, MemoryBudgetBytes = 500, PriorPrecision = 0.5 };
        var posterior = new KfacPosterior(curvature, backend, options);
        Assert.True(posterior["w"].IsLowRank);
        Assert.Contains("low rank 3", posterior["w"].Describe());
        float[] xs = RandomMatrices(rng, 2, big * small);
        var output = new float[2];
        posterior["w"].Quadratic(xs, 2, output);
        int aDim = exactBlock.ADim, gDim = exactBlock.GDim;
        for (int c = 0; c < 2; c++)
            AssertRelative(DenseQuadratic(ToDouble(exactBlock.A), aDim, ToDouble(exactBlock.G), gDim, 40, 0.5, xs.AsSpan(c * big * small, big * small)), output[c], 2e-3, $"exact rank, matrix {c}");
        foreach (int rows in new[] { 1, 5 })
            AssertOuterProductQuadratic(posterior["w"], rng, rows, x => DenseQuadratic(ToDouble(exactBlock.A), aDim, ToDouble(exactBlock.G), gDim, 40, 0.5, x), 2e-3, $"exact rank, {rows} rows");

        // Full-rank large factor: compare with the dense solve of the diagonal-plus-low-rank approximation.
        KroneckerBlock full = RandomBlock(rng, "w", largeIsA ? big : small, largeIsA ? small : big, false, 40);
        posterior = new KfacPosterior(new KfacCurvature([full], "sampled", Hash, "t"), backend, options);
        double[] large = ToDouble(largeIsA ? full.A : full.G);
        double[] approximation = DiagonalPlusLowRank(large, big, rank);
        posterior["w"].Quadratic(xs, 2, output);
        for (int c = 0; c < 2; c++)
        {
            double expected = largeIsA
                ? DenseQuadratic(approximation, big, ToDouble(full.G), small, 40, 0.5, xs.AsSpan(c * big * small, big * small))
                : DenseQuadratic(ToDouble(full.A), small, approximation, big, 40, 0.5, xs.AsSpan(c * big * small, big * small));
            AssertRelative(expected, output[c], 2e-3, $"approximation, matrix {c}");
        }
        foreach (int rows in new[] { 1, 5 })
            AssertOuterProductQuadratic(posterior["w"], rng, rows, x => largeIsA
                ? DenseQuadratic(approximation, big, ToDouble(full.G), small, 40, 0.5, x)
                : DenseQuadratic(ToDouble(full.A), small, approximation, big, 40, 0.5, x), 2e-3, $"approximation, {rows} rows");
    }

    /// <summary>
    /// <see cref="LayerPosterior.OuterProductQuadratic"/> of random output gradients G <c>[rows × out]</c> and inputs Ã
    /// <c>[rows × in(+1)]</c> (the path the scorer takes, X never formed) against <paramref name="expected"/> of the formed
    /// X = Gᵀ Ã, and against the layer's own <see cref="LayerPosterior.Quadratic"/> of that X to float32 rounding.
    /// </summary>
    internal static void AssertOuterProductQuadratic(LayerPosterior layer, Random rng, int rows, Func<float[], double> expected, double tolerance, string what)
    {
        float[] g = RandomMatrices(rng, rows, layer.GDim), inputs = RandomMatrices(rng, rows, layer.ADim);
        var x = new float[layer.GDim * layer.ADim];
        for (int o = 0; o < layer.GDim; o++)
            for (int i = 0; i < layer.ADim; i++)
            {
                double sum = 0;
                for (int r = 0; r < rows; r++) sum += (double)g[r * layer.GDim + o] * inputs[r * layer.ADim + i];
                x[o * layer.ADim + i] = (float)sum;
            }
        var projected = new float[inputs.Length];
        layer.ProjectInputRows(inputs, rows, projected);
        double actual = layer.OuterProductQuadratic(g, projected, rows, new float[layer.OuterProductWorkspace(rows)]);
        AssertRelative(expected(x), actual, tolerance, $"{what}: outer product against the float64 reference");
        var formed = new float[1];
        layer.Quadratic(x, 1, formed);
        AssertRelative(formed[0], actual, 1e-4, $"{what}: outer product against the formed gradient's quadratic");
    }

    /// <summary>D + UΛUᵀ: U, Λ the top-r eigenpairs (float64 Jacobi), D = diag of the remainder.</summary>
    internal static double[] DiagonalPlusLowRank(double[] f, int n, int r)
    {
        var values = new double[n];
        var vectors = new double[n * n];
        new Float64Backend().SymmetricEigen(f, n, values, vectors);
        var result = new double[n * n];
        for (int k = n - r; k < n; k++)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) result[i * n + j] += values[k] * vectors[i * n + k] * vectors[j * n + k];
        for (int i = 0; i < n; i++) result[i * n + i] = f[i * n + i];
        return result;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void ClosedFormOutputAndProbabilityVariancesMatchTheQuadraticForms(string backendName)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(5);
        const int inF = 4, vocab = 6, rows = 3;
        KroneckerBlock block = RandomBlock(rng, "head", inF, vocab, true, 25);
        var posterior = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend, new PosteriorOptions { PriorPrecision = 0.7 });
        float[] inputs = RandomMatrices(rng, rows, inF);
        float[] logits = RandomMatrices(rng, rows, vocab).Select(v => 3 * v).ToArray();
        long[] targets = [2, -100, 5];
        var variance = new float[rows * vocab];
        posterior["head"].OutputVariance(inputs, rows, variance);
        var pVariance = new double[rows];
        posterior["head"].TargetProbabilityVariance(inputs, logits, targets, rows, pVariance);

        double[] a = ToDouble(block.A), g = ToDouble(block.G);
        for (int r = 0; r < rows; r++)
        {
            float[] homogeneous = [.. inputs.AsSpan(r * inF, inF), 1f];
            for (int v = 0; v < vocab; v++)
            {
                var x = new float[vocab * (inF + 1)]; // ∂s_v/∂[W | b] = e_v ãᵀ
                homogeneous.CopyTo(x, v * (inF + 1));
                AssertRelative(DenseQuadratic(a, inF + 1, g, vocab, 25, 0.7, x), variance[r * vocab + v], 1e-3, $"row {r}, output {v}");
            }
            if (targets[r] == -100) { Assert.True(double.IsNaN(pVariance[r])); continue; }
            double[] p = Reference.Softmax(logits.AsSpan(r * vocab, vocab));
            int y = (int)targets[r];
            var gradient = new float[vocab * (inF + 1)]; // ∂p_y/∂[W | b] = p_y (e_y − p) ãᵀ
            for (int v = 0; v < vocab; v++)
                for (int j = 0; j <= inF; j++) gradient[v * (inF + 1) + j] = (float)(p[y] * ((v == y ? 1 : 0) - p[v]) * homogeneous[j]);
            AssertRelative(DenseQuadratic(a, inF + 1, g, vocab, 25, 0.7, gradient), pVariance[r], 1e-3, $"p variance, row {r}");
        }
    }

    [Fact]
    public void SampledPerturbationsHaveThePosteriorCovariance()
    {
        using IComputeBackend backend = new CpuBackend(threads: 2);
        var rng = new Random(6);
        KroneckerBlock block = RandomBlock(rng, "w", 3, 4, true, 15);
        var posterior = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend, new PosteriorOptions { PriorPrecision = 2 });
        AssertSampleCovariance(posterior["w"], RandomMatrices(rng, 2, 16), probe => DenseQuadratic(ToDouble(block.A), 4, ToDouble(block.G), 4, 15, 2, probe));
    }

    /// <summary>
    /// Sampling in the Woodbury form against the dense Σ: with the large factor of rank 3 ≤ r the low-rank form is the exact
    /// posterior, so the draws must have the covariance of the dense solve of <c>M·A⊗G + τI</c>; with a full-rank large factor,
    /// that of the diagonal-plus-low-rank precision it stands for.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LowRankSampledPerturbationsHaveThePosteriorCovariance(bool largeIsA)
    {
        using IComputeBackend backend = new CpuBackend(threads: 2);
        var rng = new Random(largeIsA ? 7 : 8);
        int big = 10, small = 3, rank = 3, size = big * small;
        var options = new PosteriorOptions { Rank = rank, MemoryBudgetBytes = 400, PriorPrecision = 0.5 };
        KroneckerBlock exact = largeIsA
            ? new KroneckerBlock("w", ToFloat(MeanOuter(RandomRows(rng, 3, big, 1), false)), ToFloat(MeanOuter(RandomRows(rng, 30, small, 0.5), false)), false, 30)
            : RandomBlock(rng, "w", small, big, false, 30, gradientRows: 3);
        var posterior = new KfacPosterior(new KfacCurvature([exact], "sampled", Hash, "t"), backend, options);
        Assert.True(posterior["w"].IsLowRank);
        AssertSampleCovariance(posterior["w"], RandomMatrices(rng, 2, size),
                               probe => DenseQuadratic(ToDouble(exact.A), exact.ADim, ToDouble(exact.G), exact.GDim, 30, 0.5, probe));

        KroneckerBlock full = RandomBlock(rng, "w", largeIsA ? big : small, largeIsA ? small : big, false, 30);
        posterior = new KfacPosterior(new KfacCurvature([full], "sampled", Hash, "t"), backend, options);
        Assert.True(posterior["w"].IsLowRank);
        double[] approximation = DiagonalPlusLowRank(ToDouble(largeIsA ? full.A : full.G), big, rank);
        AssertSampleCovariance(posterior["w"], RandomMatrices(rng, 2, size), probe => largeIsA
            ? DenseQuadratic(approximation, big, ToDouble(full.G), small, 30, 0.5, probe)
            : DenseQuadratic(ToDouble(full.A), small, approximation, big, 30, 0.5, probe));
    }

    /// <summary>
    /// 4000 draws of δ (seed 11): for each probe X, and for the sum of the first two (the cross-covariance), the sample variance of
    /// ⟨X, δ⟩ must be <c>vec(X)ᵀ Σ vec(X)</c> and its mean zero; a draw is a pure function of (seed, sample).
    /// </summary>
    static void AssertSampleCovariance(LayerPosterior layer, float[] probes, Func<float[], double> expectedVariance)
    {
        int size = layer.GDim * layer.ADim;
        float[][] directions = [probes[..size], probes[size..(2 * size)], probes[..size].Zip(probes[size..(2 * size)], (x, y) => x + y).ToArray()];
        const int samples = 4000;
        var projections = new double[directions.Length, samples];
        var delta = new float[size];
        for (int s = 0; s < samples; s++)
        {
            layer.SamplePerturbation(seed: 11, s, delta);
            for (int c = 0; c < directions.Length; c++)
                for (int i = 0; i < size; i++) projections[c, s] += delta[i] * directions[c][i];
        }
        var again = new float[size];
        layer.SamplePerturbation(seed: 11, samples - 1, again);
        Assert.Equal(delta, again);
        for (int c = 0; c < directions.Length; c++)
        {
            double mean = 0, square = 0;
            for (int s = 0; s < samples; s++) { mean += projections[c, s] / samples; square += projections[c, s] * projections[c, s] / samples; }
            double expected = expectedVariance(directions[c]);
            // Sample variance of 4000 Gaussian draws: relative standard error √(2/4000) ≈ 2.2%; allow 5 of them.
            AssertRelative(expected, square - mean * mean, 0.11, $"probe {c}");
            Assert.True(Math.Abs(mean) < 5 * Math.Sqrt(expected / samples), $"probe {c}: mean {mean}");
        }
    }

    [Fact]
    public void BadCurvatureIsRefusedNamingTheLayerAndRangesAreReported()
    {
        using IComputeBackend backend = new Float64Backend();
        var notPsd = new NdArray<float>([2, 2], [1, 0, 0, -1]);
        var block = new KroneckerBlock("bad.weight", notPsd, KroneckerBlockTests.ToFloat([1.0]), false, 4);
        var e = Assert.Throws<FisherKernelsException>(() => new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend));
        Assert.Contains("'bad.weight'", e.Message);

        var good = new KroneckerBlock("good.weight", new NdArray<float>([2, 2], [4, 0, 0, 0.5f]), KroneckerBlockTests.ToFloat([2.0]), false, 4);
        var posterior = new KfacPosterior(new KfacCurvature([good], "sampled", Hash, "t"), backend);
        Assert.Equal(new EigenvalueRange(0.5, 4), posterior["good.weight"].RangeA);
        Assert.Contains("'good.weight'", posterior.Describe().Single());
        Assert.Contains("[0.5, 4]", posterior.Describe().Single());
        Assert.Contains("--prior-precision", Assert.Throws<FisherKernelsException>(() => new KfacPosterior(new KfacCurvature([good], "sampled", Hash, "t"), backend, new PosteriorOptions { PriorPrecision = 0 })).Message);
    }

    /// <summary>Float64 reference: log det(M·A⊗G + τI) of the dense precision, by Cholesky.</summary>
    internal static double DenseLogDeterminant(double[] a, int aDim, double[] g, int gDim, double positions, double tau)
    {
        int n = aDim * gDim;
        var l = new double[n * n];
        for (int j = 0; j < aDim; j++)
            for (int i = 0; i < gDim; i++)
                for (int jj = 0; jj < aDim; jj++)
                    for (int ii = 0; ii < gDim; ii++)
                        l[(j * gDim + i) * n + jj * gDim + ii] = positions * a[j * aDim + jj] * g[i * gDim + ii] + (j == jj && i == ii ? tau : 0);
        double sum = 0;
        for (int c = 0; c < n; c++)
        {
            double d = l[c * n + c];
            for (int k = 0; k < c; k++) d -= l[c * n + k] * l[c * n + k];
            Assert.True(d > 0, "the reference precision is positive definite");
            d = Math.Sqrt(d);
            l[c * n + c] = d;
            sum += 2 * Math.Log(d);
            for (int r = c + 1; r < n; r++)
            {
                double v = l[r * n + c];
                for (int k = 0; k < c; k++) v -= l[r * n + k] * l[c * n + k];
                l[r * n + c] = v / d;
            }
        }
        return sum;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void DenseLogDeterminantMatchesTheFloat64Cholesky(string backendName)
    {
        using IComputeBackend backend = Make(backendName);
        var rng = new Random(31);
        KroneckerBlock block = RandomBlock(rng, "w", 4, 5, true, 30);
        foreach (double tau in new[] { 1.0, 1e-2 })
        {
            var posterior = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend, new PosteriorOptions { PriorPrecision = tau });
            double expected = DenseLogDeterminant(ToDouble(block.A), block.ADim, ToDouble(block.G), block.GDim, 30, tau);
            Assert.False(posterior["w"].IsLowRank);
            Assert.True(Math.Abs(posterior["w"].LogDeterminant() - expected) <= 1e-4 * Math.Abs(expected), $"τ {tau}: {posterior["w"].LogDeterminant()} against {expected}");
        }
    }

    /// <summary>
    /// The Woodbury form's log-determinant (matrix determinant lemma, no n×n matrix) against the float64 Cholesky of the
    /// matrix it represents: the exact factors when the large one has rank ≤ r, else D + UΛUᵀ built densely.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WoodburyLogDeterminantMatchesTheFloat64Cholesky(bool largeIsA)
    {
        using IComputeBackend backend = Make("cpu");
        var rng = new Random(largeIsA ? 33 : 34);
        int big = 12, small = 4, rank = 3;
        var options = new PosteriorOptions { Rank = rank, MemoryBudgetBytes = 500, PriorPrecision = 0.5 };
        KroneckerBlock exact = largeIsA
            ? new KroneckerBlock("w", ToFloat(MeanOuter(RandomRows(rng, 3, big, 1), false)), ToFloat(MeanOuter(RandomRows(rng, 40, small, 0.5), false)), false, 40)
            : RandomBlock(rng, "w", small, big, false, 40, gradientRows: 3);
        KroneckerBlock full = RandomBlock(rng, "w", largeIsA ? big : small, largeIsA ? small : big, false, 40);
        foreach (var (block, approximate) in new[] { (exact, false), (full, true) })
        {
            LayerPosterior layer = new KfacPosterior(new KfacCurvature([block], "sampled", Hash, "t"), backend, options)["w"];
            Assert.True(layer.IsLowRank);
            double[] a = ToDouble(block.A), g = ToDouble(block.G);
            if (approximate && largeIsA) a = DiagonalPlusLowRank(a, big, rank);
            if (approximate && !largeIsA) g = DiagonalPlusLowRank(g, big, rank);
            double expected = DenseLogDeterminant(a, block.ADim, g, block.GDim, 40, 0.5);
            Assert.True(Math.Abs(layer.LogDeterminant() - expected) <= 1e-3 * Math.Abs(expected), $"approximate {approximate}: {layer.LogDeterminant()} against {expected}");
        }
    }

    /// <summary>Σ = I: every quadratic form is a squared norm, computed here in float64 from the same numbers.</summary>
    [Fact]
    public void IsotropicPosteriorIsTheSquaredNorm()
    {
        using IComputeBackend backend = Make("cpu");
        var rng = new Random(35);
        int inF = 6, outF = 5, rows = 4, a = inF + 1;
        var layer = new IsotropicLayerPosterior("w", inF, outF, withBias: true, backend);
        float[] xs = RandomMatrices(rng, 2, outF * a);
        var output = new float[2];
        layer.Quadratic(xs, 2, output);
        for (int c = 0; c < 2; c++)
            AssertRelative(xs.Skip(c * outF * a).Take(outF * a).Sum(v => (double)v * v), output[c], 1e-6, $"quadratic {c}");

        float[] inputs = RandomMatrices(rng, rows, inF), g = RandomMatrices(rng, rows, outF);
        var homogeneous = new float[rows * a];
        for (int r = 0; r < rows; r++) { inputs.AsSpan(r * inF, inF).CopyTo(homogeneous.AsSpan(r * a)); homogeneous[r * a + inF] = 1; }
        double expected = 0; // ‖Gᵀ Ã‖²
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < a; i++)
            {
                double x = 0;
                for (int r = 0; r < rows; r++) x += (double)g[r * outF + o] * homogeneous[r * a + i];
                expected += x * x;
            }
        var projected = new float[rows * a];
        layer.ProjectInputRows(homogeneous, rows, projected);
        Assert.Equal(homogeneous, projected);
        var workspace = new float[layer.OuterProductWorkspace(rows)];
        AssertRelative(expected, layer.OuterProductQuadratic(g, projected, rows, workspace), 1e-5, "outer product without the Gram");
        var gram = new float[rows * rows];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < rows; j++)
                for (int k = 0; k < a; k++) gram[i * rows + j] += homogeneous[i * a + k] * homogeneous[j * a + k];
        // G Gᵀ's upper triangle only (ssyrk): what the workspace held below it must not be read.
        Array.Fill(workspace, float.NaN);
        AssertRelative(expected, layer.OuterProductQuadratic(g, projected, rows, workspace, gram), 1e-5, "outer product with the Gram");

        var variance = new double[rows];
        layer.TargetOutputVariance(inputs, [0, -100, 4, 2], rows, variance);
        for (int r = 0; r < rows; r++)
            if (r == 1) Assert.True(double.IsNaN(variance[r]));
            else AssertRelative(1 + inputs.Skip(r * inF).Take(inF).Sum(v => (double)v * v), variance[r], 1e-6, $"target output variance {r}");
        Assert.Equal(0, layer.LogDeterminant());
    }
}

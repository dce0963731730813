using FisherKernels.Backends;
using FisherKernels.Curvature;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Curvature;

/// <summary>
/// Low-rank factor sides (SPEC §3): the streamed sketch against the sketch of the float64 dense factor, its linearity
/// (merge, EMA, resume), the file keys, the Nyström recovery against the factor it sketches, and the memory plan on the
/// real GPT-2-small shapes (planned, never allocated).
/// </summary>
public sealed class FactorSketchTests : IDisposable
{
    const string Hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    // "head": a vocabulary-like G (60) next to a small A; "wide": a large A with the bias coordinate, small G.
    static readonly LayerShape[] Shapes = [new("head", 6, 60, true), new("wide", 50, 3, true)];
    const int Rank = 4;
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    /// <summary>A budget under which each layer's larger side (and only it) must be low rank.</summary>
    static long LargerSideBudget()
    {
        FactorPlan dense = FactorPlan.Create(Shapes, long.MaxValue, Rank);
        return dense.Layers.Min(l => l.BudgetBytes) - 1;
    }

    static KfacFitOptions Options(long budget, double? ema = null, double samplePositions = 1.0) =>
        new() { MemoryBudgetBytes = budget, Rank = Rank, Samples = 2, Seed = 5, Ema = ema, SamplePositions = samplePositions };

    static IComputeBackend Backend(string name) => name == "cpu" ? new Backends.Cpu.CpuBackend(threads: 2) : new Float64Backend();

    public static TheoryData<string> BackendNames => ["float64", "cpu"];

    /// <summary>Random batches: per layer inputs [m × in] and two draws of gradients [m × out], of mixed scales.</summary>
    static List<(int M, float[][] Inputs, float[][][] Draws)> RandomBatches(int seed, int[] sizes)
    {
        var rng = new Random(seed);
        return sizes.Select(m => (m,
            Shapes.Select(s => Flat(RandomRows(rng, m, s.InFeatures, 2.0))).ToArray(),
            Shapes.Select(s => Enumerable.Range(0, 2).Select(_ => Flat(RandomRows(rng, m, s.OutFeatures, 0.05))).ToArray()).ToArray())).ToList();
    }

    static float[] Flat(double[][] rows) => rows.SelectMany(r => r.Select(v => (float)v)).ToArray();

    static void Feed(KfacAccumulator acc, IEnumerable<(int M, float[][] Inputs, float[][][] Draws)> batches)
    {
        foreach (var (m, inputs, draws) in batches)
        {
            acc.BeginBatch(m);
            acc.AddInputs(Shapes.Select((s, l) => (s.Layer, inputs[l])).ToList());
            for (int d = 0; d < 2; d++) acc.AddOutputGradients(Shapes.Select((s, l) => (s.Layer, draws[l][d])).ToList(), 0.5);
            acc.EndBatch();
        }
    }

    static double RelativeError(float[] reference, float[] actual)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Length; i++) { diff += Math.Pow((double)actual[i] - reference[i], 2); norm += (double)reference[i] * reference[i]; }
        return Math.Sqrt(diff / norm);
    }

    /// <summary>The sketch the low-rank side must equal: the float64 dense fit of the same data, sketched in float64.</summary>
    static void AssertSketchOfDense(FactorSide dense, FactorSide sketched)
    {
        FactorSketch s = Assert.IsType<FactorSketch>(sketched.Sketch);
        Assert.Equal(Rank + 8, s.K);
        FactorSketch expected = FactorSketch.FromDense(dense.Matrix!.Data, dense.Size, s.K, s.Seed);
        Assert.True(RelativeError(expected.Y.Data, s.Y.Data) < 1e-5, $"Y error {RelativeError(expected.Y.Data, s.Y.Data)}");
        Assert.True(RelativeError(expected.Diagonal.Data, s.Diagonal.Data) < 1e-6);
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void StreamedSketchEqualsTheSketchOfTheDenseFactor(string backend)
    {
        var batches = RandomBatches(1, [7, 13, 1, 9]);
        var dense = new KfacAccumulator(new Float64Backend(), Shapes, Options(long.MaxValue, samplePositions: 0.7), Hash);
        var lowRank = new KfacAccumulator(Backend(backend), Shapes, Options(LargerSideBudget(), samplePositions: 0.7), Hash);
        Assert.Equal(FactorForm.Dense, lowRank.Plan.Layers[0].A.Form);
        Assert.Equal(FactorForm.LowRank, lowRank.Plan.Layers[0].G.Form);
        Assert.Equal(FactorForm.LowRank, lowRank.Plan.Layers[1].A.Form);
        Assert.Equal(FactorForm.Dense, lowRank.Plan.Layers[1].G.Form);
        Feed(dense, batches);
        Feed(lowRank, batches);
        KfacCurvature d = dense.ToCurvature("t"), s = lowRank.ToCurvature("t");
        AssertSketchOfDense(d["head"].GSide, s["head"].GSide);
        AssertSketchOfDense(d["wide"].ASide, s["wide"].ASide); // the bias coordinate: x̃ = [x; 1]
        Assert.True(RelativeError(d["head"].A.Data, s["head"].A.Data) < 1e-5);
        Assert.Equal(d["head"].Positions, s["head"].Positions);
        // A dense-only use of a sketched side is one clear error naming the layer.
        var e = Assert.Throws<FisherKernelsException>(() => s["head"].G);
        Assert.Contains("layer 'head': factor G [60]² is stored low rank", e.Message);
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void SketchesMergeEmaAndResumeExactly(string backend)
    {
        var batches = RandomBatches(2, [8, 5, 8, 3]);
        long budget = LargerSideBudget();
        // Merge: the halves' sketches, saved and loaded, merge into the sketch of the whole (and a dense half merges too).
        var whole = new KfacAccumulator(Backend(backend), Shapes, Options(budget), Hash);
        var first = new KfacAccumulator(Backend(backend), Shapes, Options(budget), Hash);
        var second = new KfacAccumulator(Backend(backend), Shapes, Options(long.MaxValue), Hash);
        Feed(whole, batches);
        Feed(first, batches[..2]);
        Feed(second, batches[2..]);
        first.ToCurvature("a").Save(Path.Combine(dir, "1.safetensors"));
        second.ToCurvature("b").Save(Path.Combine(dir, "2.safetensors"));
        KfacCurvature loaded = KfacCurvature.Load(Path.Combine(dir, "1.safetensors"));
        Assert.NotNull(loaded["head"].GSketch);
        KfacCurvature merged = loaded.Merge(KfacCurvature.Load(Path.Combine(dir, "2.safetensors")));
        KfacCurvature expected = whole.ToCurvature("w");
        foreach (var (layer, side) in new[] { ("head", 'G'), ("wide", 'A') })
        {
            FactorSketch m = (side == 'G' ? merged[layer].GSketch : merged[layer].ASketch)!, w = (side == 'G' ? expected[layer].GSketch : expected[layer].ASketch)!;
            Assert.True(RelativeError(w.Y.Data, m.Y.Data) < 1e-5);
            Assert.True(RelativeError(w.Diagonal.Data, m.Diagonal.Data) < 1e-5);
        }
        // EMA and a resume from a checkpoint: bit-identical files.
        var ema = new KfacAccumulator(Backend(backend), Shapes, Options(budget, ema: 0.8, samplePositions: 0.6), Hash);
        Feed(ema, batches);
        ema.ToCurvature("t").Save(Path.Combine(dir, "ema.safetensors"));
        var interrupted = new KfacAccumulator(Backend(backend), Shapes, Options(budget, ema: 0.8, samplePositions: 0.6), Hash);
        Feed(interrupted, batches[..3]);
        interrupted.SaveCheckpoint(Path.Combine(dir, "c.checkpoint"), "run");
        var resumed = KfacAccumulator.Resume(Path.Combine(dir, "c.checkpoint"), Backend(backend), Shapes, Options(budget, ema: 0.8, samplePositions: 0.6), Hash, "run");
        Feed(resumed, batches[3..]);
        resumed.ToCurvature("t").Save(Path.Combine(dir, "resumed.safetensors"));
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "ema.safetensors")), File.ReadAllBytes(Path.Combine(dir, "resumed.safetensors")));
        // Another rank is another Ω: the checkpoint is refused, naming the option.
        var e = Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(Path.Combine(dir, "c.checkpoint"), Backend(backend), Shapes,
            Options(budget, ema: 0.8, samplePositions: 0.6) with { Rank = 5 }, Hash, "run"));
        Assert.Contains("rank = 4", e.Message);
    }

    [Fact]
    public void FileKeysAndMetadataFollowTheSpec()
    {
        var acc = new KfacAccumulator(new Float64Backend(), Shapes, Options(LargerSideBudget()), Hash);
        Feed(acc, RandomBatches(3, [4]));
        string path = Path.Combine(dir, "c.safetensors");
        acc.ToCurvature("t").Save(path);
        var file = FisherKernels.IO.SafetensorsFile.Read(path);
        Assert.Equal(["head.A", "head.G.Y", "head.G.diag", "wide.A.Y", "wide.A.diag", "wide.G"], file.Names.OrderBy(n => n, StringComparer.Ordinal));
        Assert.Equal([60, 12], file.Tensors["head.G.Y"].Shape);
        Assert.Equal(FactorSketch.Generator, file.Metadata["sketch_generator"]);
        Assert.Equal(FactorSketch.DefaultSeed("head", 'G').ToString(), file.Metadata["head.G.sketch_seed"]);
        // The generator is a pure function of the seed: the first entries never change (a change breaks every stored sketch).
        float[] omega = FactorSketch.Omega(2, 3, 42);
        Assert.Equal(omega, FactorSketch.Omega(2, 3, 42));
        Assert.NotEqual(omega, FactorSketch.Omega(2, 3, 43));
        double mean = FactorSketch.Omega(4000, 10, 7).Average(v => (double)v), variance = FactorSketch.Omega(4000, 10, 7).Average(v => (double)v * v);
        Assert.InRange(mean, -0.03, 0.03);
        Assert.InRange(variance, 0.95, 1.05);
    }

    /// <summary>A factor of rank ≤ r is recovered exactly (float32 rounding) by the Nyström method, with d ≈ 0.</summary>
    [Theory]
    [InlineData(3, 6)]
    [InlineData(6, 6)]
    public void NystromIsExactWhenTheRankIsAtMostR(int trueRank, int rank)
    {
        const int n = 80;
        var rng = new Random(trueRank);
        double[][] rows = RandomRows(rng, trueRank, n, 1.0);
        double[] f = MeanOuter(rows, false);
        float[] f32 = f.Select(v => (float)v).ToArray();
        FactorSketch sketch = FactorSketch.FromDense(f32, n, rank + 8, 9);
        LowRankPlusDiagonal approx = sketch.Nystrom(rank);
        float[] rebuilt = Rebuild(approx);
        Assert.True(RelativeError(f32, rebuilt) < 1e-4, $"error {RelativeError(f32, rebuilt)}");
        Assert.True(approx.D.Max() < 1e-4 * f32.Max());
        // U's columns are orthonormal.
        for (int a = 0; a < approx.Rank; a++)
            for (int b = 0; b < approx.Rank; b++)
            {
                double dot = 0;
                for (int i = 0; i < n; i++) dot += (double)approx.U[i * approx.Rank + a] * approx.U[i * approx.Rank + b];
                if (approx.S[a] > 1e-8 * approx.S[0] && approx.S[b] > 1e-8 * approx.S[0]) Assert.Equal(a == b ? 1.0 : 0.0, dot, 1e-4);
            }
    }

    /// <summary>A full-rank factor with a decaying spectrum: the top eigenvalues come out close, and the diagonal is kept exactly.</summary>
    [Fact]
    public void NystromKeepsTheTopEigenvaluesAndTheDiagonalOfAFullRankFactor()
    {
        const int n = 70;
        var rng = new Random(4);
        // F = Q diag(λ) Qᵀ with λ_i = 2^-i and a random orthogonal Q (from the float64 eigensolver of a random symmetric matrix).
        double[][] rows = RandomRows(rng, n, n, 1.0);
        double[] sym = MeanOuter(rows, false);
        var lambda = new double[n];
        var q = new double[n * n];
        FisherKernels.Linalg.SymmetricEigensolver.Decompose(sym, n, lambda, q, useNative: false);
        var f = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int c = 0; c < n; c++) s += q[i * n + c] * Math.Pow(2, -c) * q[j * n + c];
                f[i * n + j] = (float)s;
            }
        LowRankPlusDiagonal approx = FactorSketch.FromDense(f, n, 18, 3).Nystrom(10);
        for (int c = 0; c < 5; c++) Assert.Equal(Math.Pow(2, -c), approx.S[c], 1e-3 * Math.Pow(2, -c) + 1e-6);
        float[] rebuilt = Rebuild(approx);
        for (int i = 0; i < n; i++) Assert.Equal(f[i * n + i], rebuilt[i * n + i], 1e-5);
        Assert.True(RelativeError(f, rebuilt) < 2e-3, $"error {RelativeError(f, rebuilt)}");
    }

    static float[] Rebuild(LowRankPlusDiagonal x)
    {
        var r = new float[x.N * x.N];
        for (int i = 0; i < x.N; i++)
            for (int j = 0; j < x.N; j++)
            {
                double s = i == j ? x.D[i] : 0;
                for (int c = 0; c < x.Rank; c++) s += x.S[c] * x.U[i * x.Rank + c] * x.U[j * x.Rank + c];
                r[i * x.N + j] = (float)s;
            }
        return r;
    }

    /// <summary>
    /// The plan of the real GPT-2-small shapes under the default budget, computed without allocating: the output layer's
    /// G (50,257², 10 GB dense, past 2³¹ entries) is low rank, every other side dense; sizes are 64-bit.
    /// </summary>
    [Fact]
    public void Gpt2SmallPlansTheVocabularySideLowRankWithoutOverflow()
    {
        var shapes = new List<LayerShape> { new("lm_head", 768, 50257, false) };
        for (int i = 0; i < 12; i++)
            shapes.AddRange([new($"h{i}.attn", 768, 2304, true), new($"h{i}.proj", 768, 768, true), new($"h{i}.fc", 768, 3072, true), new($"h{i}.fc_proj", 3072, 768, true)]);
        FactorPlan plan = FactorPlan.Create(shapes);
        LayerPlan head = plan.Layers[0];
        Assert.Equal(FactorForm.Dense, head.A.Form);
        Assert.Equal(FactorForm.LowRank, head.G.Form);
        Assert.Equal(4L * 50257 * 73, head.G.FactorBytes);
        Assert.True(FactorPlan.Create(shapes.Take(1).ToList(), long.MaxValue).Layers[0].G.FactorBytes > 4L * int.MaxValue);
        Assert.All(plan.Layers.Skip(1), l => Assert.True(l.A.Form == FactorForm.Dense && l.G.Form == FactorForm.Dense));
        Assert.InRange(plan.FactorBytes, 1L << 30, 2L << 30); // 48 dense layers (1.2 GB) and a 15 MB sketch, not 10 GB
        // A budget too small even for the low-rank forms: one line naming the layer and what to change.
        var e = Assert.Throws<FisherKernelsException>(() => FactorPlan.Create(shapes, 1L << 20));
        Assert.Contains("layer 'lm_head'", e.Message);
        Assert.Contains("--memory-budget", e.Message);
        Assert.Contains("--exclude-layers", e.Message);
    }
}

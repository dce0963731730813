using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Curvature;

public sealed class KfacAccumulatorTests : IDisposable
{
    const string Hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static readonly LayerShape[] Shapes = [new("up.weight", 5, 7, true), new("onnx::MatMul_3", 7, 4, false)];
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    /// <summary>Random per-layer data for a stream of batches: inputs [M × in] and blocks of gradients [blocks·M × out].</summary>
    sealed record Batch(int Positions, double[][][] Inputs, double[][][][] Gradients);

    static Batch[] RandomBatches(Random rng, int[] sizes, int blocks) =>
        sizes.Select(m => new Batch(m,
            Shapes.Select(s => RandomRows(rng, m, s.InFeatures, 2.0)).ToArray(),
            Shapes.Select(s => Enumerable.Range(0, blocks).Select(_ => RandomRows(rng, m, s.OutFeatures, 0.05)).ToArray()).ToArray())).ToArray();

    static float[] Flat(double[][] rows) => rows.SelectMany(r => r.Select(v => (float)v)).ToArray();

    static void Feed(KfacAccumulator acc, IEnumerable<Batch> batches, List<byte[]>? masks = null)
    {
        foreach (Batch b in batches)
        {
            byte[] mask = acc.BeginBatch(b.Positions).ToArray();
            masks?.Add(mask);
            for (int l = 0; l < Shapes.Length; l++)
            {
                acc.AddInputs(Shapes[l].Layer, Flat(b.Inputs[l]));
                foreach (double[][] draw in b.Gradients[l]) acc.AddOutputGradients(Shapes[l].Layer, Flat(draw), 1.0 / b.Gradients[l].Length);
            }
            acc.EndBatch();
        }
    }

    static double RelativeError(double[] reference, float[] actual)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Length; i++) { diff += Math.Pow(actual[i] - reference[i], 2); norm += reference[i] * reference[i]; }
        return Math.Sqrt(diff / norm);
    }

    /// <summary>Reference G: the mean over positions of the mean over blocks of g gᵀ.</summary>
    static double[] MeanOverBlocks(double[][][] blocks)
    {
        double[] sum = new double[blocks[0][0].Length * blocks[0][0].Length];
        foreach (double[][] block in blocks)
        {
            double[] mean = MeanOuter(block, false);
            for (int i = 0; i < sum.Length; i++) sum[i] += mean[i] / blocks.Length;
        }
        return sum;
    }

    static IComputeBackend Backend(string name = "float64") => name == "cpu" ? new Backends.Cpu.CpuBackend(threads: 2) : new Float64Backend();

    public static TheoryData<string> BackendNames => ["float64", "cpu"];

    /// <summary>
    /// The list forms of AddInputs/AddOutputGradients run the layers side by side on a multi-threaded CPU backend (one
    /// layer a thread); the factors must be bit for bit those of the one-layer calls, here with factors large enough for
    /// the tiled kernel to split across threads (300², 301²), a middle one and a small one (OpenBLAS ssyrk).
    /// </summary>
    [Fact]
    public void LayersSideBySideGiveTheFactorsOfOneLayerAtATime()
    {
        LayerShape[] shapes = [new("big", 300, 300, true), new("mid", 90, 120, false), new("small", 7, 5, true)];
        var rng = new Random(11);
        var batches = Enumerable.Range(0, 2).Select(_ => shapes.Select(s => (Inputs: Flat(RandomRows(rng, 64, s.InFeatures, 2.0)),
            Draws: Enumerable.Range(0, 2).Select(_ => Flat(RandomRows(rng, 64, s.OutFeatures, 0.05))).ToArray())).ToArray()).ToArray();
        var options = new KfacFitOptions { Samples = 2 };
        var oneByOne = new KfacAccumulator(new Backends.Cpu.CpuBackend(threads: 2), shapes, options, Hash);
        var sideBySide = new KfacAccumulator(new Backends.Cpu.CpuBackend(threads: 2), shapes, options, Hash);
        foreach (var layers in batches)
        {
            oneByOne.BeginBatch(64);
            for (int l = 0; l < shapes.Length; l++)
            {
                oneByOne.AddInputs(shapes[l].Layer, layers[l].Inputs);
                foreach (float[] draw in layers[l].Draws) oneByOne.AddOutputGradients(shapes[l].Layer, draw, 0.5);
            }
            oneByOne.EndBatch();
            sideBySide.BeginBatch(64);
            sideBySide.AddInputs(shapes.Select((s, l) => (s.Layer, layers[l].Inputs)).ToList());
            for (int d = 0; d < 2; d++) sideBySide.AddOutputGradients(shapes.Select((s, l) => (s.Layer, layers[l].Draws[d])).ToList(), 0.5);
            sideBySide.EndBatch();
        }
        var expected = oneByOne.ToCurvature("test").Layers;
        var actual = sideBySide.ToCurvature("test").Layers;
        for (int l = 0; l < shapes.Length; l++)
        {
            Assert.Equal(expected[l].A.Data, actual[l].A.Data);
            Assert.Equal(expected[l].G.Data, actual[l].G.Data);
        }
    }

    [Theory]
    [InlineData(1, "float64")]
    [InlineData(3, "float64")]
    [InlineData(1, "cpu")]
    [InlineData(3, "cpu")]
    public void StreamedFitEqualsTheFloat64MeanOverAllPositions(int blocks, string backend)
    {
        var rng = new Random(10 + blocks);
        Batch[] batches = RandomBatches(rng, [3, 17, 1, 9], blocks);
        var acc = new KfacAccumulator(Backend(backend), Shapes, new KfacFitOptions { Fisher = FisherType.Sampled, Samples = blocks }, Hash);
        Feed(acc, batches);
        KfacCurvature c = acc.ToCurvature("test");

        for (int l = 0; l < Shapes.Length; l++)
        {
            double[][] allInputs = batches.SelectMany(b => b.Inputs[l]).ToArray();
            double[][][] allBlocks = Enumerable.Range(0, blocks).Select(k => batches.SelectMany(b => b.Gradients[l][k]).ToArray()).ToArray();
            KroneckerBlock block = c[Shapes[l].Layer];
            Assert.Equal(30, block.Positions);
            Assert.Equal(Shapes[l].HasBias, block.HasBias);
            Assert.True(RelativeError(MeanOuter(allInputs, Shapes[l].HasBias), block.A.Data) < 1e-5);
            Assert.True(RelativeError(MeanOverBlocks(allBlocks), block.G.Data) < 1e-5);
        }
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void MergedFitsOfTwoHalvesEqualTheFitOfTheWhole(string backend)
    {
        var rng = new Random(20);
        Batch[] batches = RandomBatches(rng, [8, 8, 5, 8, 8, 3], 1);
        var first = new KfacAccumulator(Backend(backend), Shapes, new KfacFitOptions { Fisher = FisherType.Empirical }, Hash);
        var second = new KfacAccumulator(Backend(backend), Shapes, new KfacFitOptions { Fisher = FisherType.Empirical }, Hash);
        Feed(first, batches[..3]);
        Feed(second, batches[3..]);
        first.ToCurvature("a").Save(Path.Combine(dir, "1.safetensors"));
        second.ToCurvature("b").Save(Path.Combine(dir, "2.safetensors"));
        KfacCurvature merged = KfacCurvature.Load(Path.Combine(dir, "1.safetensors")).Merge(KfacCurvature.Load(Path.Combine(dir, "2.safetensors")));

        for (int l = 0; l < Shapes.Length; l++)
        {
            KroneckerBlock block = merged[Shapes[l].Layer];
            Assert.Equal(40, block.Positions);
            Assert.True(RelativeError(MeanOuter(batches.SelectMany(b => b.Inputs[l]).ToArray(), Shapes[l].HasBias), block.A.Data) < 1e-5);
            Assert.True(RelativeError(MeanOuter(batches.SelectMany(b => b.Gradients[l][0]).ToArray(), false), block.G.Data) < 1e-5);
        }
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void EmaFollowsTheRecurrenceAndCountsEffectivePositions(string backend)
    {
        var rng = new Random(30);
        Batch[] batches = RandomBatches(rng, [4, 6, 5], 1);
        const double lambda = 0.75;
        var acc = new KfacAccumulator(Backend(backend), Shapes, new KfacFitOptions { Ema = lambda }, Hash);
        Feed(acc, batches);
        KroneckerBlock block = acc.ToCurvature("t")[Shapes[0].Layer];

        double[] expected = MeanOuter(batches[0].Inputs[0], true);
        foreach (Batch b in batches[1..])
        {
            double[] batchMean = MeanOuter(b.Inputs[0], true);
            for (int i = 0; i < expected.Length; i++) expected[i] = lambda * expected[i] + (1 - lambda) * batchMean[i];
        }
        Assert.True(RelativeError(expected, block.A.Data) < 1e-5);
        Assert.Equal(lambda * (lambda * 4 + 6) + 5, block.Positions, 12);
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void PositionSubsamplingIsSeededAndAveragesTheKeptPositions(string backend)
    {
        var rng = new Random(40);
        Batch[] batches = RandomBatches(rng, [50, 70], 2);
        var options = new KfacFitOptions { SamplePositions = 0.3, Seed = 7, Samples = 2 };
        var masks = new List<byte[]>();
        var acc = new KfacAccumulator(Backend(backend), Shapes, options, Hash);
        Feed(acc, batches, masks);

        var again = new List<byte[]>();
        Feed(new KfacAccumulator(Backend(backend), Shapes, options, Hash), batches, again);
        Assert.Equal(masks, again);
        var otherSeed = new List<byte[]>();
        Feed(new KfacAccumulator(Backend(backend), Shapes, options with { Seed = 8 }, Hash), batches, otherSeed);
        Assert.NotEqual(masks, otherSeed);

        int kept = masks.Sum(m => m.Count(v => v != 0));
        Assert.InRange(kept, 20, 60); // 120 positions kept with p = 0.3: mean 36, sd 5
        KroneckerBlock block = acc.ToCurvature("t")[Shapes[1].Layer];
        Assert.Equal(kept, block.Positions);
        double[][] keptInputs = batches.SelectMany((b, i) => b.Inputs[1].Where((_, m) => masks[i][m] != 0)).ToArray();
        double[][][] keptBlocks = Enumerable.Range(0, 2).Select(k => batches.SelectMany((b, i) => b.Gradients[1][k].Where((_, m) => masks[i][m] != 0)).ToArray()).ToArray();
        Assert.True(RelativeError(MeanOuter(keptInputs, false), block.A.Data) < 1e-5);
        Assert.True(RelativeError(MeanOverBlocks(keptBlocks), block.G.Data) < 1e-5);
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void ALayerAppliedTwiceCountsBothApplicationsUnderTheSameMask(string backend)
    {
        var rng = new Random(45);
        LayerShape shape = new("tied.weight", 3, 2, false);
        double[][] first = RandomRows(rng, 40, 3, 1), second = RandomRows(rng, 40, 3, 1), g = RandomRows(rng, 80, 2, 0.1);
        var acc = new KfacAccumulator(Backend(backend), [shape], new KfacFitOptions { SamplePositions = 0.5, Seed = 9 }, Hash);
        byte[] mask = acc.BeginBatch(40).ToArray();
        acc.AddInputs(shape.Layer, Flat([.. first, .. second]));
        acc.AddOutputGradients(shape.Layer, Flat(g));
        acc.EndBatch();
        KroneckerBlock block = acc.ToCurvature("t")[shape.Layer];

        double[][] kept = [.. first.Where((_, m) => mask[m] != 0), .. second.Where((_, m) => mask[m] != 0)];
        double[][] keptG = g.Where((_, r) => mask[r % 40] != 0).ToArray();
        Assert.Equal(kept.Length, block.Positions);
        Assert.Equal(2 * mask.Count(v => v != 0), kept.Length);
        Assert.True(RelativeError(MeanOuter(kept, false), block.A.Data) < 1e-5);
        Assert.True(RelativeError(MeanOuter(keptG, false), block.G.Data) < 1e-5);
    }

    [Theory]
    [MemberData(nameof(BackendNames))]
    public void ResumedFitIsBitIdenticalToAnUninterruptedOne(string backend)
    {
        var rng = new Random(50);
        Batch[] batches = RandomBatches(rng, [9, 12, 7, 12, 3], 2);
        var options = new KfacFitOptions { SamplePositions = 0.6, Seed = 3, Ema = 0.9, Samples = 2 };
        var whole = new KfacAccumulator(Backend(backend), Shapes, options, Hash);
        Feed(whole, batches);
        whole.ToCurvature("t").Save(Path.Combine(dir, "whole.safetensors"));

        var interrupted = new KfacAccumulator(Backend(backend), Shapes, options, Hash);
        Feed(interrupted, batches[..2]);
        string checkpoint = Path.Combine(dir, "fit.checkpoint");
        interrupted.SaveCheckpoint(checkpoint, "tokens sha 42, batch 12");
        var resumed = KfacAccumulator.Resume(checkpoint, Backend(backend), Shapes, options, Hash, "tokens sha 42, batch 12");
        Assert.Equal(2, resumed.BatchesDone);
        Feed(resumed, batches[2..]);
        resumed.ToCurvature("t").Save(Path.Combine(dir, "resumed.safetensors"));

        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "whole.safetensors")), File.ReadAllBytes(Path.Combine(dir, "resumed.safetensors")));
    }

    [Fact]
    public void ResumeRefusesAnotherRunNamingTheDifference()
    {
        var options = new KfacFitOptions { Seed = 3 };
        var acc = new KfacAccumulator(Backend(), Shapes, options, Hash);
        Feed(acc, RandomBatches(new Random(60), [4], 1));
        string checkpoint = Path.Combine(dir, "fit.checkpoint");
        acc.SaveCheckpoint(checkpoint, "run A");

        Assert.Contains("seed", Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(checkpoint, Backend(), Shapes, options with { Seed = 4 }, Hash, "run A")).Message);
        Assert.Contains("run B", Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(checkpoint, Backend(), Shapes, options, Hash, "run B")).Message);
        Assert.Contains("model_sha256", Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(checkpoint, Backend(), Shapes, options, new string('f', 64), "run A")).Message);
        LayerShape[] reshaped = [Shapes[0] with { HasBias = false }, Shapes[1]];
        Assert.Contains("up.weight", Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(checkpoint, Backend(), reshaped, options, Hash, "run A")).Message);
        File.WriteAllBytes(checkpoint, File.ReadAllBytes(checkpoint)[..40]);
        Assert.Throws<FisherKernelsException>(() => KfacAccumulator.Resume(checkpoint, Backend(), Shapes, options, Hash, "run A"));
    }

    [Fact]
    public void CurvatureCarriesTheSpecMetadata()
    {
        var acc = new KfacAccumulator(Backend(), Shapes, new KfacFitOptions { Fisher = FisherType.Exact }, Hash);
        Feed(acc, RandomBatches(new Random(70), [6, 5], 1));
        string path = Path.Combine(dir, "c.safetensors");
        acc.ToCurvature("fisherkernels 0.1 test").Save(path);
        var meta = SafetensorsFile.Read(path).Metadata;
        Assert.Equal("fisherkernels/1", meta["format"]);
        Assert.Equal("exact", meta["fisher"]);
        Assert.Equal("11", meta["positions"]);
        Assert.Equal(Hash, meta["model_sha256"]);
        Assert.Equal("fisherkernels 0.1 test", meta["created_by"]);
        Assert.Equal("true", meta["up.weight.has_bias"]);
        Assert.Equal("false", meta["onnx::MatMul_3.has_bias"]);
    }

    [Fact]
    public void BadInputIsRefusedNamingTheLayerOrOption()
    {
        var acc = new KfacAccumulator(Backend(), Shapes, new KfacFitOptions(), Hash);
        acc.BeginBatch(3);
        Assert.Contains("'nope'", Assert.Throws<FisherKernelsException>(() => acc.AddInputs("nope", new float[15])).Message);
        Assert.Contains("'up.weight'", Assert.Throws<FisherKernelsException>(() => acc.AddInputs("up.weight", new float[14])).Message);
        Assert.Contains("'up.weight'", Assert.Throws<FisherKernelsException>(() => acc.AddOutputGradients("up.weight", new float[21])).Message);
        acc.AddInputs("up.weight", new float[15]);
        Assert.Contains("'up.weight'", Assert.Throws<FisherKernelsException>(() => acc.AddInputs("up.weight", new float[15])).Message);
        Assert.Contains("'up.weight'", Assert.Throws<FisherKernelsException>(() => acc.AddOutputGradients("up.weight", new float[20])).Message);
        acc.AddOutputGradients("up.weight", new float[21]);
        Assert.Contains("'onnx::MatMul_3'", Assert.Throws<FisherKernelsException>(() => acc.EndBatch()).Message);
        Assert.Contains("--ema", Assert.Throws<FisherKernelsException>(() => new KfacAccumulator(Backend(), Shapes, new KfacFitOptions { Ema = 1 }, Hash)).Message);
        Assert.Contains("--sample-positions", Assert.Throws<FisherKernelsException>(() => new KfacAccumulator(Backend(), Shapes, new KfacFitOptions { SamplePositions = 0 }, Hash)).Message);
        Assert.Contains("--fisher", Assert.Throws<FisherKernelsException>(() => new KfacAccumulator(Backend(), Shapes, new KfacFitOptions { Fisher = (FisherType)99 }, Hash)).Message);
        var empty = new KfacAccumulator(Backend(), Shapes, new KfacFitOptions(), Hash);
        Assert.Contains("saw no positions", Assert.Throws<FisherKernelsException>(() => empty.ToCurvature("t")).Message);
    }

    [Fact]
    public void MemoryEstimateCountsFactorsAndEigenbases()
    {
        LayerMemory m = KfacAccumulator.EstimateMemory(new LayerShape("w", 767, 3072, true));
        Assert.Equal(4L * (768 * 768 + 3072 * 3072), m.FactorBytes);
        Assert.Equal(4L * (768 * 768 + 3072 * 3072) + 8L * (768 + 3072) + 4L * 768 * 3072, m.EigenbasisBytes);
    }

    /// <summary>
    /// The sampled Fisher converges to the exact one: for a softmax output layer z = W a, g = softmax(z) − e_y, so
    /// the exact G is the mean over positions of diag(p) − p pᵀ. With k draws the error shrinks like 1/√k.
    /// </summary>
    [Fact]
    public void SampledFisherConvergesToTheExactFisher()
    {
        const int positions = 6, vocab = 5;
        var rng = new Random(80);
        float[] logits = Enumerable.Range(0, positions * vocab).Select(_ => (float)(3 * rng.NextDouble() - 1.5)).ToArray();
        long[] targets = [1, -100, 3, 0, 4, 2];
        LayerShape head = new("head", 1, vocab, false);

        double[] exact = new double[vocab * vocab];
        for (int m = 0; m < positions; m++)
        {
            if (targets[m] == -100) continue;
            double[] p = Reference.Softmax(logits.AsSpan(m * vocab, vocab));
            for (int i = 0; i < vocab; i++)
                for (int j = 0; j < vocab; j++) exact[i * vocab + j] += ((i == j ? p[i] : 0) - p[i] * p[j]) / positions;
        }

        double ErrorWith(int draws)
        {
            var acc = new KfacAccumulator(Backend(), [head], new KfacFitOptions { Samples = draws, Seed = 5 }, Hash);
            acc.BeginBatch(positions);
            var gradients = new float[draws * positions * vocab]; // one block [positions × vocab] per draw
            var labels = new long[positions];
            for (int d = 0; d < draws; d++)
            {
                acc.SampleLabels(logits, positions, vocab, targets, d, labels);
                for (int m = 0; m < positions; m++)
                {
                    if (labels[m] == -100) { Assert.Equal(-100, targets[m]); continue; }
                    double[] p = Reference.Softmax(logits.AsSpan(m * vocab, vocab));
                    for (int v = 0; v < vocab; v++) gradients[(d * positions + m) * vocab + v] = (float)(p[v] - (v == labels[m] ? 1 : 0));
                }
            }
            acc.AddInputs("head", new float[positions]);
            for (int d = 0; d < draws; d++) acc.AddOutputGradients("head", gradients.AsSpan(d * positions * vocab, positions * vocab), 1.0 / draws);
            acc.EndBatch();
            return RelativeError(exact, acc.ToCurvature("t")["head"].G.Data);
        }

        double few = ErrorWith(4), many = ErrorWith(4096);
        Assert.True(many < 0.05, $"relative error with 4096 draws {many}");
        Assert.True(many < few / 8, $"error with 4 draws {few}, with 4096 draws {many}: expected a ~32x reduction");
    }
}

public sealed class KfacCurvatureFixtureTests : IDisposable
{
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    [Theory]
    [InlineData("gpt2_tiny", "kfac")]
    [InlineData("llama_tiny", "kfac_targets")]
    [InlineData("bert_tiny", "kfac_exact")]
    public void TorchGoldensLoadWithTheBiasFlagsOfTheModel(string model, string kind)
    {
        string path = FixtureFiles.PathOf($"{model}.{kind}.safetensors");
        LayerShape[] shapes = FixtureFiles.Layers(model).Select(l => l.Shape).ToArray();
        Assert.Contains("has_bias", Assert.Throws<FisherKernelsException>(() => KfacCurvature.Load(path)).Message);

        KfacCurvature c = KfacCurvature.Load(path, shapes);
        c.EnsureMatches(FixtureFiles.Sha256(model + ".onnx"), shapes);
        Assert.Equal(24, c.Positions);
        Assert.Equal(kind == "kfac_exact" ? "exact" : "empirical", c.Fisher);
        foreach (LayerShape s in shapes) Assert.Equal(s.HasBias, c[s.Layer].HasBias);

        // A model whose layer disagrees with the factor's size is named in the error.
        LayerShape[] wrong = shapes.Select((s, i) => i == 0 ? s with { HasBias = !s.HasBias } : s).ToArray();
        Assert.Contains($"'{shapes[0].Layer}'", Assert.Throws<FisherKernelsException>(() => KfacCurvature.Load(path, wrong)).Message);
    }

    [Fact]
    public void OwnFilesStillNeedHasBiasAndCalibrationBetaRoundTrips()
    {
        LayerShape[] shapes = FixtureFiles.Layers("gpt2_tiny").Select(l => l.Shape).ToArray();
        KfacCurvature c = KfacCurvature.Load(FixtureFiles.PathOf("gpt2_tiny.kfac.safetensors"), shapes);
        Assert.Null(c.CalibrationBeta);
        string path = Path.Combine(dir, "c.safetensors");
        c.WithCalibrationBeta(2.5).Save(path);
        KfacCurvature back = KfacCurvature.Load(path);
        Assert.Equal(2.5, back.CalibrationBeta);
        Assert.Equal(c.Layers[0].A.Data, back.Layers[0].A.Data);
        Assert.Null(back.Merge(back).CalibrationBeta); // a merge changes the curvature: its calibration no longer holds

        Assert.Equal("2.5", SafetensorsFile.Read(path).Metadata["calibration_beta"]);

        // A file that states has_bias for some layers must state it for all, even when the model is known.
        var metadata = SafetensorsFile.Read(path).Metadata.Where(kv => kv.Key != shapes[1].Layer + ".has_bias").ToDictionary();
        var tensors = back.Layers.SelectMany(b => new[] { new KeyValuePair<string, NdArray>(b.Layer + ".A", b.A), new(b.Layer + ".G", b.G) });
        SafetensorsFile.Write(path, tensors, metadata);
        Assert.Contains($"'{shapes[1].Layer}.has_bias'", Assert.Throws<FisherKernelsException>(() => KfacCurvature.Load(path, shapes)).Message);
    }
}

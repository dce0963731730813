using FisherKernels.Curvature;
using FisherKernels.IO;
using static FisherKernels.Tests.Curvature.KroneckerBlockTests;

namespace FisherKernels.Tests.Curvature;

public sealed class KfacCurvatureTests : IDisposable
{
    const string Hash = "3f2a9c0e8b7d6f5e4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918f7e6d5c";
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    static KfacCurvature Make(Random rng, string hash = Hash, string fisher = "sampled", int positions = 0)
    {
        KroneckerBlock Block(string layer, int inDim, int outDim, bool bias)
        {
            int m = positions > 0 ? positions : rng.Next(1, 50);
            return FromRows(layer, RandomRows(rng, m, inDim, 2), RandomRows(rng, m, outDim, 0.1), bias);
        }
        return new KfacCurvature(
            [Block("model.layers.0.mlp.up_proj.weight", 5, 7, true), Block("onnx::MatMul_12", 7, 5, false), Block("lm_head.weight", 5, 11, false)],
            fisher, hash, "fisherkernels test");
    }

    string PathOf(string name) => Path.Combine(dir, name);

    /// <summary>EK-FAC's E (SPEC §3, §5): saved as <c>&lt;layer&gt;.E</c> and read back exactly; decay keeps it, a merge drops it; a misshaped or negative E is one error naming the layer.</summary>
    [Fact]
    public void EkfacCorrectionIsSavedDecayedKeptAndDroppedByMerge()
    {
        var rng = new Random(5);
        KfacCurvature plain = Make(rng);
        KfacCurvature c = plain.WithLayers(plain.Layers.Select((b, i) => i == 1 ? b : b.WithCorrection(
            new NdArray<float>([b.GDim, b.ADim], Enumerable.Range(0, b.GDim * b.ADim).Select(_ => (float)rng.NextDouble()).ToArray()))));
        Assert.True(c.IsEkfac);
        string path = PathOf("e.safetensors");
        c.Save(path);
        KfacCurvature back = KfacCurvature.Load(path);
        Assert.Null(back.Layers[1].E);
        Assert.Equal(c.Layers[0].E!.Data, back.Layers[0].E!.Data);
        Assert.Equal(c.Layers[2].E!.Data, back.Layers[2].E!.Data);
        Assert.Same(c.Layers[0].E, c.Decayed(0.5).Layers[0].E);
        Assert.False(c.Merge(c).IsEkfac);

        KroneckerBlock b0 = plain.Layers[0];
        var wrong = Assert.Throws<FisherKernelsException>(() => b0.WithCorrection(new NdArray<float>([b0.ADim, b0.GDim])));
        Assert.Contains($"layer '{b0.Layer}': E must be [{b0.GDim}, {b0.ADim}]", wrong.Message);
        var negative = new NdArray<float>([b0.GDim, b0.ADim]);
        negative.Data[3] = -1;
        Assert.Contains("non-negative", Assert.Throws<FisherKernelsException>(() => b0.WithCorrection(negative)).Message);
    }

    [Fact]
    public void SaveLoadRoundTripIsExact()
    {
        var rng = new Random(1);
        KfacCurvature c = Make(rng);
        string path = PathOf("c.safetensors");
        c.Save(path);
        KfacCurvature back = KfacCurvature.Load(path);

        Assert.Equal(c.Layers.Select(l => l.Layer), back.Layers.Select(l => l.Layer));
        for (int i = 0; i < c.Layers.Count; i++)
        {
            KroneckerBlock x = c.Layers[i], y = back.Layers[i];
            Assert.Equal(x.A.Data, y.A.Data);
            Assert.Equal(x.A.Shape, y.A.Shape);
            Assert.Equal(x.G.Data, y.G.Data);
            Assert.Equal(x.HasBias, y.HasBias);
            Assert.Equal(x.Positions, y.Positions);
        }
        Assert.Equal(c.Fisher, back.Fisher);
        Assert.Equal(c.ModelSha256, back.ModelSha256);
        Assert.Equal(c.CreatedBy, back.CreatedBy);
        Assert.Equal(path, back.Source);

        // The file is what SPEC §5 says: F32 factors and the required metadata.
        SafetensorsFile raw = SafetensorsFile.Read(path);
        Assert.Equal(ElementType.Float32, raw.Tensors["lm_head.weight.A"].ElementType);
        Assert.Equal([6, 6], raw.Tensors["model.layers.0.mlp.up_proj.weight.A"].Shape);
        Assert.Equal([11, 11], raw.Tensors["lm_head.weight.G"].Shape);
        Assert.Equal("fisherkernels/1", raw.Metadata["format"]);
        Assert.Equal("sampled", raw.Metadata["fisher"]);
        Assert.Equal(Hash, raw.Metadata["model_sha256"]);
        Assert.Equal("fisherkernels test", raw.Metadata["created_by"]);
        Assert.Equal(c.Positions, double.Parse(raw.Metadata["positions"], System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal("true", raw.Metadata["model.layers.0.mlp.up_proj.weight.has_bias"]);
    }

    [Fact]
    public void SharedPositionsAreWrittenOnceAndFractionalPositionsSurvive()
    {
        KfacCurvature c = Make(new Random(2), positions: 64);
        c.Save(PathOf("c.safetensors"));
        var meta = SafetensorsFile.Read(PathOf("c.safetensors")).Metadata;
        Assert.Equal("64", meta["positions"]);
        Assert.DoesNotContain(meta.Keys, k => k.EndsWith(".positions", StringComparison.Ordinal));

        var block = c.Layers[0];
        var odd = new KfacCurvature([new KroneckerBlock(block.Layer, block.A, block.G, block.HasBias, 1.0 / 3), c.Layers[1]], "empirical", Hash, "");
        odd.Save(PathOf("odd.safetensors"));
        var back = KfacCurvature.Load(PathOf("odd.safetensors"));
        Assert.Equal(1.0 / 3, back.Layers[0].Positions);
        Assert.Equal(64, back.Layers[1].Positions);
    }

    [Fact]
    public void MergeOfSavedCurvaturesEqualsTheCurvatureOfAllRows()
    {
        var rng = new Random(3);
        double[][] x = RandomRows(rng, 90, 6, 1.5), g = RandomRows(rng, 90, 4, 0.01);
        var first = new KfacCurvature([FromRows("w", x[..30], g[..30], true)], "sampled", Hash, "a");
        var second = new KfacCurvature([FromRows("w", x[30..], g[30..], true)], "sampled", Hash.ToUpperInvariant(), "b");
        first.Save(PathOf("1.safetensors"));
        second.Save(PathOf("2.safetensors"));
        KfacCurvature merged = KfacCurvature.Load(PathOf("1.safetensors")).Merge(KfacCurvature.Load(PathOf("2.safetensors")), "merge");

        Assert.Equal(90, merged.Positions);
        Assert.Equal("merge", merged.CreatedBy);
        double[] refA = MeanOuter(x, true), refG = MeanOuter(g, false);
        for (int i = 0; i < refA.Length; i++) Assert.Equal(refA[i], merged["w"].A.Data[i], 1e-6 * 3);
        for (int i = 0; i < refG.Length; i++) Assert.Equal(refG[i], merged["w"].G.Data[i], 1e-10);
    }

    [Fact]
    public void DecayedMergeWeighsEachCurvatureByLambdaTimesItsPositions()
    {
        // Reference in float64 from the rows: A = (λ1·Σ_1 ããᵀ + λ2·Σ_2 ããᵀ + λ3·Σ_3 ããᵀ) / (λ1 M1 + λ2 M2 + λ3 M3), likewise G.
        var rng = new Random(4);
        double[][] x = RandomRows(rng, 60, 5, 1.0), g = RandomRows(rng, 60, 3, 0.1);
        int[] cut = [0, 10, 35, 60];
        double[] decay = [0.25, 0.5, 1.0];
        var parts = Enumerable.Range(0, 3).Select(k => new KfacCurvature([FromRows("w", x[cut[k]..cut[k + 1]], g[cut[k]..cut[k + 1]], true)], "sampled", Hash, "t")).ToArray();
        KfacCurvature merged = KfacCurvature.MergeAll(parts, decay, "merge");

        double total = 0;
        var refA = new double[36];
        var refG = new double[9];
        for (int k = 0; k < 3; k++)
        {
            int m = cut[k + 1] - cut[k];
            total += decay[k] * m;
            double[] a = MeanOuter(x[cut[k]..cut[k + 1]], true), gg = MeanOuter(g[cut[k]..cut[k + 1]], false);
            for (int i = 0; i < a.Length; i++) refA[i] += decay[k] * m * a[i];
            for (int i = 0; i < gg.Length; i++) refG[i] += decay[k] * m * gg[i];
        }
        Assert.Equal(total, merged.Positions, 12);
        for (int i = 0; i < refA.Length; i++) Assert.Equal(refA[i] / total, merged["w"].A.Data[i], 1e-5);
        for (int i = 0; i < refG.Length; i++) Assert.Equal(refG[i] / total, merged["w"].G.Data[i], 1e-7);

        var error = Assert.Throws<FisherKernelsException>(() => KfacCurvature.MergeAll(parts, [1.0, 1.0], "merge"));
        Assert.Contains("--decay has 2 values for 3", error.Message);
        error = Assert.Throws<FisherKernelsException>(() => KfacCurvature.MergeAll(parts, [1.0, -1.0, 1.0], "merge"));
        Assert.Contains("decay", error.Message);
    }

    [Fact]
    public void MergeRefusalsSayWhatDiffers()
    {
        var rng = new Random(4);
        KfacCurvature c = Make(rng);
        string other = new('0', 64);
        var e = Assert.Throws<FisherKernelsException>(() => c.Merge(Make(rng, hash: other)));
        Assert.Contains(Hash, e.Message);
        Assert.Contains(other, e.Message);
        Assert.Contains("empirical", Assert.Throws<FisherKernelsException>(() => c.Merge(Make(rng, fisher: "empirical"))).Message);

        var fewer = new KfacCurvature(c.Layers.Take(2), "sampled", Hash, "");
        Assert.Contains("'lm_head.weight'", Assert.Throws<FisherKernelsException>(() => c.Merge(fewer)).Message);
        Assert.Contains("'lm_head.weight'", Assert.Throws<FisherKernelsException>(() => fewer.Merge(c)).Message);

        var reshaped = new KfacCurvature([c.Layers[0], c.Layers[1], new KroneckerBlock("lm_head.weight", Identity(5), Identity(12), false, 3)], "sampled", Hash, "");
        Assert.Contains("lm_head.weight", Assert.Throws<FisherKernelsException>(() => c.Merge(reshaped)).Message);
    }

    [Fact]
    public void EnsureMatchesNamesTheHashOrLayer()
    {
        KfacCurvature c = Make(new Random(5));
        c.Save(PathOf("c.safetensors"));
        c = KfacCurvature.Load(PathOf("c.safetensors"));
        LayerShape[] model =
        [
            new("model.layers.0.mlp.up_proj.weight", 5, 7, true),
            new("onnx::MatMul_12", 7, 5, false),
            new("lm_head.weight", 5, 11, false),
        ];
        c.EnsureMatches(Hash.ToUpperInvariant(), model);

        var e = Assert.Throws<FisherKernelsException>(() => c.EnsureMatches("abc", model));
        Assert.Contains("abc", e.Message);
        Assert.Contains(PathOf("c.safetensors"), e.Message);
        Assert.Contains("'lm_head.weight'", Assert.Throws<FisherKernelsException>(() => c.EnsureMatches(Hash, model[..2])).Message);
        Assert.Contains("'extra'", Assert.Throws<FisherKernelsException>(() => c.EnsureMatches(Hash, [.. model, new("extra", 1, 1, false)])).Message);
        e = Assert.Throws<FisherKernelsException>(() => c.EnsureMatches(Hash, [model[0] with { HasBias = false }, model[1], model[2]]));
        Assert.Contains("'model.layers.0.mlp.up_proj.weight'", e.Message);
        Assert.Contains("'onnx::MatMul_12'", Assert.Throws<FisherKernelsException>(() => c.EnsureMatches(Hash, [model[0], model[1] with { OutFeatures = 6 }, model[2]])).Message);
    }

    /// <summary>Writes a curvature-like file with the given tensors and metadata, bypassing the curvature writer.</summary>
    string Raw(Dictionary<string, NdArray> tensors, Dictionary<string, string> metadata)
    {
        string path = PathOf($"raw{Guid.NewGuid():N}.safetensors");
        SafetensorsFile.Write(path, tensors, metadata);
        return path;
    }

    static Dictionary<string, string> GoodMeta() => new()
    {
        ["format"] = "fisherkernels/1", ["fisher"] = "exact", ["positions"] = "10",
        ["model_sha256"] = Hash, ["created_by"] = "t", ["w.has_bias"] = "false",
    };

    static Dictionary<string, NdArray> GoodTensors() => new() { ["w.A"] = Identity(3), ["w.G"] = Identity(2) };

    void LoadRefuses(Dictionary<string, NdArray> tensors, Dictionary<string, string> metadata, string part, ErrorKind kind = ErrorKind.Format)
    {
        string path = Raw(tensors, metadata);
        var e = Assert.Throws<FisherKernelsException>(() => KfacCurvature.Load(path));
        Assert.Equal(kind, e.Kind);
        Assert.Contains(path, e.Message);
        Assert.Contains(part, e.Message);
    }

    [Fact]
    public void LoadValidatesEverything()
    {
        Assert.Equal(10, KfacCurvature.Load(Raw(GoodTensors(), GoodMeta())).Positions);

        var meta = GoodMeta(); meta.Remove("format");
        LoadRefuses(GoodTensors(), meta, "'format'");
        meta = GoodMeta(); meta["format"] = "fisherkernels/2";
        LoadRefuses(GoodTensors(), meta, "fisherkernels/2", ErrorKind.Unsupported);
        foreach (string key in new[] { "model_sha256", "fisher", "positions", "w.has_bias" })
        {
            meta = GoodMeta(); meta.Remove(key);
            LoadRefuses(GoodTensors(), meta, $"'{key}'");
        }
        meta = GoodMeta(); meta["fisher"] = "diagonal";
        LoadRefuses(GoodTensors(), meta, "diagonal");
        meta = GoodMeta(); meta["positions"] = "-3";
        LoadRefuses(GoodTensors(), meta, "'positions'");
        meta = GoodMeta(); meta["w.positions"] = "NaN";
        LoadRefuses(GoodTensors(), meta, "'w.positions'");
        meta = GoodMeta(); meta["w.has_bias"] = "yes";
        LoadRefuses(GoodTensors(), meta, "'w.has_bias'");

        var tensors = GoodTensors(); tensors.Remove("w.G");
        LoadRefuses(tensors, GoodMeta(), "'w' has A but no G");
        tensors = GoodTensors(); tensors.Remove("w.A");
        LoadRefuses(tensors, GoodMeta(), "'w' has G but no A");
        tensors = GoodTensors(); tensors["w.bias"] = Identity(1);
        LoadRefuses(tensors, GoodMeta(), "'w.bias'");
        LoadRefuses([], GoodMeta(), "no layers");

        var nan = Identity(3); nan.Data[8] = float.NaN;
        tensors = GoodTensors(); tensors["w.A"] = nan;
        LoadRefuses(tensors, GoodMeta(), "layer 'w': factor A has a non-finite value");
        tensors = GoodTensors(); tensors["w.G"] = new NdArray<float>(2, 3);
        LoadRefuses(tensors, GoodMeta(), "layer 'w': factor G must be a square matrix");
        tensors = GoodTensors(); tensors["w.A"] = new NdArray<int>(3, 3);
        LoadRefuses(tensors, GoodMeta(), "'w.A'");
        meta = GoodMeta(); meta["w.has_bias"] = "true";
        tensors = GoodTensors(); tensors["w.A"] = Identity(1);
        LoadRefuses(tensors, meta, "at least 2x2");

        var e = Assert.Throws<FisherKernelsException>(() => KfacCurvature.Load(PathOf("missing.safetensors")));
        Assert.Equal(ErrorKind.Io, e.Kind);
    }

    [Fact]
    public void ConstructorRefusesBadInputs()
    {
        var w = new KroneckerBlock("w", Identity(2), Identity(2), false, 1);
        Assert.Throws<FisherKernelsException>(() => new KfacCurvature([], "sampled", Hash, ""));
        Assert.Contains("'w'", Assert.Throws<FisherKernelsException>(() => new KfacCurvature([w, w], "sampled", Hash, "")).Message);
        Assert.Throws<FisherKernelsException>(() => new KfacCurvature([w], "kfac", Hash, ""));
        Assert.Throws<FisherKernelsException>(() => new KfacCurvature([w], "sampled", " ", ""));
        Assert.Contains("'v'", Assert.Throws<FisherKernelsException>(() => new KfacCurvature([w], "sampled", Hash, "")["v"]).Message);
    }
}

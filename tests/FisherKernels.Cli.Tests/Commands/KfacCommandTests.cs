using System.Text.Json;
using FisherKernels.Cli.Commands;
using FisherKernels.Curvature;
using FisherKernels.IO;

namespace FisherKernels.Tests.Commands;

/// <summary>fit / score --method kfac / merge / calibrate as a user runs them, against the torch float64 goldens (SPEC §7).</summary>
public class KfacCommandTests
{
    internal static double RelativeError(float[] actual, float[] reference)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Length; i++) { diff += Math.Pow(actual[i] - reference[i], 2); norm += (double)reference[i] * reference[i]; }
        return Math.Sqrt(diff / norm);
    }

    internal static void AssertFactorsMatch(string expectedPath, string actualPath, double tolerance)
    {
        SafetensorsFile expected = SafetensorsFile.Read(expectedPath), actual = SafetensorsFile.Read(actualPath);
        Assert.Equal(expected.Names.Order(), actual.Names.Order());
        foreach (string name in expected.Names)
        {
            double error = RelativeError(actual.GetFloat32(name).Data, expected.GetFloat32(name).Data);
            Assert.True(error <= tolerance, $"{actualPath}: {name} relative error {error}");
        }
    }

    [Theory]
    [InlineData("gpt2_tiny", "empirical", true, "1")]
    [InlineData("llama_tiny", "empirical", false, "2")]
    [InlineData("bert_tiny", "exact", false, "2")]
    [InlineData("llama_gqa_tiny", "empirical", true, "2")]  // keys and values repeated by Loops over sequences
    [InlineData("llama_gqa_tiny", "exact", false, "1")]
    public void FitMatchesTheTorchGoldens(string model, string fisher, bool withTargets, string batchSize)
    {
        using var temp = new TempFolder();
        string output = temp.File("c.safetensors");
        string[] args = ["fit", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
                         "--fisher", fisher, "--batch-size", batchSize, "--out", output];
        if (withTargets) args = [.. args, "--targets", Fixtures.Path(model + ".targets.npy")];
        var (code, stdout, stderr) = CliRunner.Run(args);
        Assert.True(code == 0, stderr);
        Assert.Contains("24 positions", stdout);
        string golden = Fixtures.Path($"{model}.{(fisher == "exact" ? "kfac_exact" : withTargets ? "kfac_targets" : "kfac")}.safetensors");
        AssertFactorsMatch(golden, output, 1e-3);
        var meta = SafetensorsFile.Read(output).Metadata;
        Assert.Equal(fisher, meta["fisher"]);
        Assert.Equal("24", meta["positions"]);
        Assert.Equal(SafetensorsFile.Read(golden).Metadata["model_sha256"], meta["model_sha256"]);
        Assert.False(File.Exists(output + ".checkpoint"));
    }

    [Theory]
    [InlineData("gpt2_tiny", false)]
    [InlineData("llama_tiny", true)]
    [InlineData("bert_tiny", false)]
    [InlineData("bert_tiny", true)]
    [InlineData("llama_gqa_tiny", false)]
    public void KfacScoresMatchTheTorchGoldens(string model, bool withTargets)
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        string suffix = withTargets ? "_targets" : "";
        string[] args = ["score", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
                         "--method", "kfac", "--curvature", Fixtures.Path($"{model}.kfac{suffix}.safetensors"), "--prior-precision", "1", "--out", output];
        if (withTargets) args = [.. args, "--targets", Fixtures.Path(model + ".targets.npy")];
        var (code, _, stderr) = CliRunner.Run(args);
        Assert.True(code == 0, stderr);
        Assert.Contains("eigenvalues", stderr); // each layer's eigenvalue range is reported
        AssertKfacScoresMatchTheGolden(Fixtures.Path($"{model}.scores{suffix}.json"), output);
    }

    /// <summary>
    /// A KV-cache export and a merged decoder of gpt2_tiny's weights (SPEC §1: empty past, use_cache_branch false) fit the
    /// same curvature and score the same as gpt2_tiny: its torch goldens hold for them.
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny_past")]
    [InlineData("gpt2_tiny_merged")]
    public void KvCacheExportsFitAndScoreAsThePlainModel(string model)
    {
        using var temp = new TempFolder();
        string curvature = temp.File("c.safetensors"), scores = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run("fit", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                              "--fisher", "empirical", "--out", curvature);
        Assert.True(code == 0, stderr);
        AssertFactorsMatch(Fixtures.Path("gpt2_tiny.kfac.safetensors"), curvature, 1e-3);
        (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                          "--method", "kfac", "--curvature", curvature, "--prior-precision", "1", "--out", scores);
        Assert.True(code == 0, stderr);
        AssertKfacScoresMatchTheGolden(Fixtures.Path("gpt2_tiny.scores.json"), scores);
    }

    /// <summary>p within 1e-4, token and sequence epistemic scores within SPEC §7's 1e-3 relative error of the torch golden.</summary>
    internal static void AssertKfacScoresMatchTheGolden(string goldenPath, string output, string method = "kfac")
    {
        using var expected = JsonDocument.Parse(File.ReadAllText(goldenPath));
        using var actual = JsonDocument.Parse(File.ReadAllText(output));
        JsonElement reference = expected.RootElement.GetProperty(method);
        Assert.Equal(method, actual.RootElement.GetProperty("method").GetString());
        var (tokenRef, tokenGot, sequenceRef, sequenceGot) = (new List<float>(), new List<float>(), new List<float>(), new List<float>());
        foreach (var (r, g) in reference.GetProperty("sequences").EnumerateArray().Zip(actual.RootElement.GetProperty("sequences").EnumerateArray()))
        {
            sequenceRef.Add((float)r.GetProperty("epistemic").GetDouble());
            sequenceGot.Add((float)g.GetProperty("epistemic").GetDouble());
            Assert.Equal(r.GetProperty("tokens").GetArrayLength(), g.GetProperty("tokens").GetArrayLength());
            foreach (var (rt, gt) in r.GetProperty("tokens").EnumerateArray().Zip(g.GetProperty("tokens").EnumerateArray()))
            {
                Assert.Equal(rt.GetProperty("position").GetInt32(), gt.GetProperty("position").GetInt32());
                Assert.Equal(rt.GetProperty("p").GetDouble(), gt.GetProperty("p").GetDouble(), 1e-4);
                tokenRef.Add((float)rt.GetProperty("epistemic").GetDouble());
                tokenGot.Add((float)gt.GetProperty("epistemic").GetDouble());
            }
        }
        Assert.True(RelativeError([.. tokenGot], [.. tokenRef]) <= 1e-3, $"token epistemic relative error {RelativeError([.. tokenGot], [.. tokenRef])}");
        Assert.True(RelativeError([.. sequenceGot], [.. sequenceRef]) <= 1e-3, $"sequence epistemic relative error {RelativeError([.. sequenceGot], [.. sequenceRef])}");
    }

    /// <summary>
    /// The fit of <paramref name="args"/> stopped after its first batch leaves a checkpoint and no output, and rerun resumes
    /// to the bytes of an uninterrupted fit; then it is stopped again, leaving a checkpoint at the returned output path.
    /// </summary>
    internal static string AssertResumesToTheSameBytes(TempFolder temp, Func<string, string[]> args)
    {
        var (code, _, stderr) = CliRunner.Run(args(temp.File("whole.safetensors")));
        Assert.True(code == 0, stderr);
        string resumed = temp.File("resumed.safetensors");
        Assert.Equal(130, KfacCommands.Fit(args(resumed), TextWriter.Null, stopAfterBatch: batch => batch == 0));
        Assert.True(File.Exists(resumed + ".checkpoint"));
        Assert.False(File.Exists(resumed));
        (code, _, stderr) = CliRunner.Run(args(resumed));
        Assert.True(code == 0, stderr);
        Assert.False(File.Exists(resumed + ".checkpoint"));
        Assert.Equal(File.ReadAllBytes(temp.File("whole.safetensors")), File.ReadAllBytes(resumed));
        // Stopped again: a checkpoint for the caller's refusal checks.
        Assert.Equal(130, KfacCommands.Fit(args(resumed), TextWriter.Null, stopAfterBatch: batch => batch == 0));
        return resumed;
    }

    [Fact]
    public void InterruptedFitResumesToTheSameFile()
    {
        using var temp = new TempFolder();
        string[] Args(string output, string batchSize = "1") => ["fit", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                         "--samples", "2", "--seed", "4", "--sample-positions", "0.7", "--batch-size", batchSize, "--out", output];
        // A checkpoint of other arguments is refused, naming itself; nothing is written.
        string resumed = AssertResumesToTheSameBytes(temp, output => Args(output));
        File.Delete(resumed);
        var (code, _, stderr) = CliRunner.Run(Args(resumed, batchSize: "2"));
        Assert.NotEqual(0, code);
        Assert.Contains(resumed + ".checkpoint", stderr);
        Assert.False(File.Exists(resumed));
    }

    static string[] FitArgs(TempFolder temp, string input, string output) =>
        ["fit", "--model", Fixtures.Path("llama_tiny.onnx"), "--tokens", temp.File(input), "--fisher", "empirical", "--out", temp.File(output)];

    /// <summary>Splits llama_tiny's two sequences into a.npy and b.npy and fits each (empirical) to the two outputs.</summary>
    static void FitHalves(TempFolder temp, string first, string second)
    {
        var tokens = (NdArray<long>)NpyFile.Read(Fixtures.Path("llama_tiny.tokens.npy"));
        int seq = tokens.Shape[1];
        NpyFile.Write(temp.File("a.npy"), new NdArray<long>([1, seq], tokens.Data[..seq]));
        NpyFile.Write(temp.File("b.npy"), new NdArray<long>([1, seq], tokens.Data[seq..]));
        foreach (var (input, output) in new[] { ("a.npy", first), ("b.npy", second) })
        {
            var (code, _, stderr) = CliRunner.Run(FitArgs(temp, input, output));
            Assert.True(code == 0, stderr);
        }
    }

    [Fact]
    public void MergedFitsOfTwoHalvesEqualTheFitOfTheWhole()
    {
        using var temp = new TempFolder();
        FitHalves(temp, "a.safetensors", "b.safetensors");
        var (code, stdout, stderr) = CliRunner.Run("merge", temp.File("a.safetensors"), temp.File("b.safetensors"), "--out", temp.File("merged.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Contains("24 positions", stdout);
        AssertFactorsMatch(Fixtures.Path("llama_tiny.kfac.safetensors"), temp.File("merged.safetensors"), 1e-5);

        (code, _, stderr) = CliRunner.Run("merge", temp.File("a.safetensors"), "--out", temp.File("m.safetensors"));
        Assert.NotEqual(0, code);
        Assert.Contains("at least two", stderr);
        (code, _, stderr) = CliRunner.Run("merge", temp.File("a.safetensors"), Fixtures.Path("gpt2_tiny.kfac.safetensors"), "--out", temp.File("m.safetensors"));
        Assert.NotEqual(0, code);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(File.Exists(temp.File("m.safetensors")));
    }

    [Fact]
    public void FitOntoAnInitialCurvatureEqualsMergingItWithAFitOfTheNewData()
    {
        // SPEC §3: fit --init C0 --decay λ on new data = merge C0 (new fit) --decay λ,1, bit for bit.
        using var temp = new TempFolder();
        FitHalves(temp, "c0.safetensors", "b.safetensors");
        string[] Fit(string input, string output) => FitArgs(temp, input, output);
        var (code, stdout, stderr) = CliRunner.Run([.. Fit("b.npy", "onto.safetensors"), "--init", temp.File("c0.safetensors"), "--decay", "0.5"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("18 positions", stdout); // 0.5·12 + 12
        (code, _, stderr) = CliRunner.Run("merge", temp.File("c0.safetensors"), temp.File("b.safetensors"), "--decay", "0.5,1", "--out", temp.File("merged.safetensors"));
        Assert.True(code == 0, stderr);
        SafetensorsFile onto = SafetensorsFile.Read(temp.File("onto.safetensors")), merged = SafetensorsFile.Read(temp.File("merged.safetensors"));
        Assert.Equal(merged.Names, onto.Names);
        foreach (string name in merged.Names) Assert.Equal(merged.GetFloat32(name).Data, onto.GetFloat32(name).Data);
        Assert.Equal("18", onto.Metadata["positions"]);

        // Without decay the merge is the fit of the whole file (the torch golden).
        (code, _, stderr) = CliRunner.Run([.. Fit("b.npy", "whole.safetensors"), "--init", temp.File("c0.safetensors")]);
        Assert.True(code == 0, stderr);
        AssertFactorsMatch(Fixtures.Path("llama_tiny.kfac.safetensors"), temp.File("whole.safetensors"), 1e-5);

        // Bad input: a curvature of another model, a sampled C0 for an empirical fit, a wrong number of decays: one line, nothing written.
        string bad = temp.File("bad.safetensors");
        foreach (string[] args in new string[][]
                 {
                     [.. Fit("b.npy", "bad.safetensors"), "--init", Fixtures.Path("gpt2_tiny.kfac.safetensors")],
                     ["merge", temp.File("c0.safetensors"), temp.File("b.safetensors"), "--decay", "0.5", "--out", bad],
                     ["merge", temp.File("c0.safetensors"), temp.File("b.safetensors"), "--decay", "0.5,x", "--out", bad],
                     [.. Fit("b.npy", "bad.safetensors"), "--decay", "0.5"],
                 })
        {
            (code, _, stderr) = CliRunner.Run(args);
            Assert.NotEqual(0, code);
            Assert.Single(stderr.Trim().Split('\n'));
            Assert.False(File.Exists(bad), string.Join(' ', args));
        }
    }

    [Fact]
    public void CalibrateChoosesTheMarginalLikelihoodPriorAndScoreUsesTheStoredOne()
    {
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), tokensPath = Fixtures.Path("gpt2_tiny.tokens.npy"), curvature = Fixtures.Path("gpt2_tiny.kfac.safetensors");
        var (code, stdout, stderr) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokensPath, "--curvature", curvature,
                                                   "--prior-precision", "auto", "--out", temp.File("auto.safetensors"));
        Assert.True(code == 0, stderr);
        double tau = double.Parse(SafetensorsFile.Read(temp.File("auto.safetensors")).Metadata["prior_precision"], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains($"prior precision (auto, marginal likelihood over 9 dense layers): {tau.ToString("R", System.Globalization.CultureInfo.InvariantCulture)};", stdout);

        // Reference: a golden-section search in float64 of SPEC §4's objective over every layer, from the file's factors
        // (their eigenvalues) and the squared norms of the model's weights and biases read here.
        var lm = Onnx.LanguageModel.Load(model);
        var backend = new Backends.Cpu.CpuBackend(threads: 1);
        KfacCurvature c = KfacCurvature.Load(temp.File("auto.safetensors")); // the fixture's factors, with has_bias written
        var terms = lm.Model.Layers.Select(l =>
        {
            double norm = new[] { l.Id, l.Bias }.Where(n => n is not null).Sum(n => ((NdArray<float>)lm.Model.Graph.Initializers[n!]).Data.Sum(v => (double)v * v));
            return Uncertainty.MarginalLayer.Of(c[l.Id], backend, norm);
        }).ToArray();
        Assert.Equal(9, terms.Length);
        double lo = Math.Log(1e-6), hi = Math.Log(1e6), r = (Math.Sqrt(5) - 1) / 2;
        double F(double x) => terms.Sum(t => t.LogEvidence(Math.Exp(x)));
        while (hi - lo > 1e-9)
        {
            double x1 = hi - r * (hi - lo), x2 = lo + r * (hi - lo);
            if (F(x1) < F(x2)) lo = x1; else hi = x2;
        }
        Assert.True(Math.Abs(tau / Math.Exp((lo + hi) / 2) - 1) < 1e-6, $"τ {tau}, golden section {Math.Exp((lo + hi) / 2)}");

        // score takes the stored τ unless --prior-precision is given.
        double Reported(params string[] extra)
        {
            var (scoreCode, _, scoreErr) = CliRunner.Run([.. new[] { "score", "--model", model, "--tokens", tokensPath, "--method", "kfac",
                                                                     "--curvature", temp.File("auto.safetensors"), "--out", temp.File("s.json") }, .. extra]);
            Assert.True(scoreCode == 0, scoreErr);
            return JsonDocument.Parse(File.ReadAllText(temp.File("s.json"))).RootElement.GetProperty("prior_precision").GetDouble();
        }
        Assert.Equal(tau, Reported());
        Assert.Equal(2.0, Reported("--prior-precision", "2"));

        // auto-layer: one τ per layer, an object in the metadata.
        (code, stdout, stderr) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokensPath, "--curvature", curvature,
                                               "--prior-precision", "auto-layer", "--out", temp.File("layer.safetensors"));
        Assert.True(code == 0, stderr);
        using var perLayer = JsonDocument.Parse(SafetensorsFile.Read(temp.File("layer.safetensors")).Metadata["prior_precision"]);
        Assert.Equal(lm.Model.Layers.Select(l => l.Id).Order(), perLayer.RootElement.EnumerateObject().Select(p => p.Name).Order());
        foreach (var layer in terms)
            Assert.True(Math.Abs(layer.Slope(perLayer.RootElement.GetProperty(layer.Layer).GetDouble())) < 1e-6 * layer.Parameters, layer.Layer);

        (code, _, stderr) = CliRunner.Run("score", "--model", model, "--tokens", tokensPath, "--curvature", curvature, "--prior-precision", "auto", "--out", temp.File("x.json"));
        Assert.NotEqual(0, code);
        Assert.Contains("calibrate", stderr);
        Assert.False(File.Exists(temp.File("x.json")));
    }

    [Fact]
    public void InspectJsonGivesTheMemoryOfAFitPerLayer()
    {
        var (code, stdout, stderr) = CliRunner.Run("inspect", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        JsonElement attention = json.RootElement.GetProperty("layers")[0]; // c_attn: in 32 + bias, out 96
        Assert.Equal(4L * (33 * 33 + 96 * 96), attention.GetProperty("kfac_factor_bytes").GetInt64());
        Assert.Equal(4L * (33 * 33 + 96 * 96) + 8L * (33 + 96) + 4L * 33 * 96, attention.GetProperty("kfac_eigenbasis_bytes").GetInt64());
    }

    [Fact]
    public void CalibrateFitsBetaOnTheScoredPredictionsAndStoresIt()
    {
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), tokensPath = Fixtures.Path("gpt2_tiny.tokens.npy"), curvature = Fixtures.Path("gpt2_tiny.kfac.safetensors");
        string output = temp.File("calibrated.safetensors");
        var (code, stdout, stderr) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokensPath, "--curvature", curvature, "--out", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("kfac: AUROC for errors: epistemic", stdout);
        Assert.Contains("kfac: ECE", stdout);
        Assert.Equal("fisherkernels/1", SafetensorsFile.Read(output).Metadata["format"]);

        // Reference: the same β from the score verb's K-FAC scores of the model's top-1 predictions (score is checked against torch).
        Assert.Equal(0, CliRunner.Run("forward", "--model", model, "--tokens", tokensPath, "--out", temp.File("logits.npy")).Code);
        var logits = (NdArray<float>)NpyFile.Read(temp.File("logits.npy"));
        var tokens = NpyFile.ReadInt64(tokensPath);
        int batch = tokens.Shape[0], seq = tokens.Shape[1], vocab = logits.Shape[2];
        var predicted = new NdArray<long>(batch, seq);
        for (int r = 0; r < batch * seq; r++)
            predicted.Data[r] = r % seq == seq - 1 ? -100 : System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.Data.AsSpan(r * vocab, vocab));
        NpyFile.Write(temp.File("predicted.npy"), predicted);
        Assert.Equal(0, CliRunner.Run("score", "--model", model, "--tokens", tokensPath, "--targets", temp.File("predicted.npy"),
                                      "--method", "kfac", "--curvature", curvature, "--out", temp.File("s.json")).Code);
        var u = new List<double>();
        var correct = new List<bool>();
        foreach (var sequence in JsonDocument.Parse(File.ReadAllText(temp.File("s.json"))).RootElement.GetProperty("sequences").EnumerateArray())
            foreach (var token in sequence.GetProperty("tokens").EnumerateArray())
            {
                int b = sequence.GetProperty("index").GetInt32(), t = token.GetProperty("position").GetInt32();
                u.Add(Uncertainty.Calibration.RelativeUncertainty(token.GetProperty("p").GetDouble(), token.GetProperty("epistemic").GetDouble()));
                correct.Add(token.GetProperty("target").GetInt64() == tokens.Data[b * seq + t + 1]);
            }
        Assert.Contains(false, correct);
        double expected = Uncertainty.Calibration.FitBeta(u.ToArray(), correct.ToArray());
        Assert.Equal(expected, KfacCurvature.Load(output).CalibrationBeta!.Value, expected * 1e-5);
    }

    [Fact]
    public void CurvatureOfAnotherModelIsRefusedNamingWhatDiffers()
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                              "--method", "kfac", "--curvature", Fixtures.Path("llama_tiny.kfac.safetensors"), "--out", output);
        Assert.NotEqual(0, code);
        Assert.Contains("llama_tiny.kfac.safetensors", stderr);
        Assert.False(File.Exists(output));

        (code, _, stderr) = CliRunner.Run("fit", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                          "--fisher", "gauss", "--out", temp.File("c.safetensors"));
        Assert.NotEqual(0, code);
        Assert.Contains("--fisher", stderr);
        Assert.Empty(Directory.GetFiles(temp.Path));
    }
}

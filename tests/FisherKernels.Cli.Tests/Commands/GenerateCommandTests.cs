using System.Text;
using System.Text.Json;
using FisherKernels.IO;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace FisherKernels.Tests.Commands;

/// <summary>generate (SPEC §4, §6) on the default model: greedy against forward and ONNX Runtime, seeds, scores, draws.</summary>
public class GenerateCommandTests
{
    static string DefaultModel => Path.Combine(AppContext.BaseDirectory, "models", "default");
    static string ModelFile => Path.Combine(DefaultModel, "model.onnx");
    const string Prompt = "The history of ";

    static JsonElement Generate(TempFolder temp, string name, params string[] extra)
    {
        string output = temp.File(name);
        var (code, _, stderr) = CliRunner.Run(["generate", "--model", DefaultModel, "--prompt", Prompt, "--out", output, .. extra]);
        Assert.True(code == 0, stderr);
        Assert.Contains("ms a token", stderr);
        using var json = JsonDocument.Parse(File.ReadAllBytes(output));
        return json.RootElement.Clone();
    }

    static long[] Ids(JsonElement json) => json.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("token").GetInt64()).ToArray();

    /// <summary>ONNX Runtime's logits of the last position.</summary>
    static float[] OrtLastLogits(InferenceSession session, List<long> tokens)
    {
        var input = NamedOnnxValue.CreateFromTensor(session.InputMetadata.Keys.First(), new DenseTensor<long>(tokens.ToArray(), [1, tokens.Count]));
        using var results = session.Run([input]);
        var logits = results.First().AsTensor<float>().ToArray();
        return logits[^256..];
    }

    static double[] Softmax(float[] z)
    {
        double max = z.Max();
        var e = z.Select(x => Math.Exp(x - max)).ToArray();
        double sum = e.Sum();
        return e.Select(x => x / sum).ToArray();
    }

    [Fact]
    public void GreedyIsTheArgmaxOfForwardStepByStepAndOfOnnxRuntime()
    {
        using var temp = new TempFolder();
        var json = Generate(temp, "g.json", "--temperature", "0", "--max-new", "12");
        long[] ids = Ids(json);
        Assert.Equal(12, ids.Length);
        Assert.Equal("length", json.GetProperty("stop_reason").GetString());
        var text = Encoding.UTF8.GetBytes(Prompt).Select(b => (long)b).ToList();
        using var session = new InferenceSession(ModelFile);
        var tokens = json.GetProperty("tokens").EnumerateArray().ToList();
        for (int step = 0; step < ids.Length; step++)
        {
            // forward (ours) over the text so far, argmax of the last row.
            string tokensPath = temp.File($"t{step}.npy"), logitsPath = temp.File($"l{step}.npy");
            NpyFile.Write(tokensPath, new NdArray<long>([1, text.Count], text.ToArray()));
            Assert.Equal(0, CliRunner.Run("forward", "--model", ModelFile, "--tokens", tokensPath, "--out", logitsPath).Code);
            var ours = ((NdArray<float>)NpyFile.Read(logitsPath)).Data[^256..];
            float[] ort = OrtLastLogits(session, text);
            Assert.Equal(Array.IndexOf(ours, ours.Max()), ids[step]);
            Assert.Equal(Array.IndexOf(ort, ort.Max()), ids[step]);
            // p is the model's own softmax at temperature 1; aleatoric p(1 − p).
            double p = Softmax(ort)[ids[step]];
            Assert.Equal(p, tokens[step].GetProperty("p").GetDouble(), 1e-5);
            Assert.Equal(p * (1 - p), tokens[step].GetProperty("aleatoric").GetDouble(), 1e-5);
            Assert.Equal(text.Count, tokens[step].GetProperty("position").GetInt32());
            text.Add(ids[step]);
        }
        Assert.Equal(Encoding.UTF8.GetString(ids.Select(i => (byte)i).ToArray()), string.Concat(tokens.Select(t => t.GetProperty("text").GetString())));
    }

    [Fact]
    public void SamplingIsDeterministicPerSeed()
    {
        using var temp = new TempFolder();
        string[] args = ["--temperature", "1.2", "--top-k", "40", "--top-p", "0.95", "--max-new", "24"];
        long[] a = Ids(Generate(temp, "a.json", [.. args, "--seed", "5"]));
        long[] b = Ids(Generate(temp, "b.json", [.. args, "--seed", "5"]));
        long[] c = Ids(Generate(temp, "c.json", [.. args, "--seed", "6"]));
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    /// <summary>`score` of <paramref name="text"/> with <paramref name="token"/> as the only target, at its last position.</summary>
    static JsonElement ScoreOfLast(TempFolder temp, List<long> text, long token, params string[] extra)
    {
        var targets = Enumerable.Repeat(-100L, text.Count).ToArray();
        targets[^1] = token;
        string name = Guid.NewGuid().ToString("N");
        string tokensPath = temp.File($"t{name}.npy"), targetsPath = temp.File($"y{name}.npy"), scores = temp.File($"s{name}.json");
        NpyFile.Write(tokensPath, new NdArray<long>([1, text.Count], text.ToArray()));
        NpyFile.Write(targetsPath, new NdArray<long>([1, text.Count], targets));
        var (code, _, stderr) = CliRunner.Run(["score", "--model", ModelFile, "--tokens", tokensPath, "--targets", targetsPath, "--out", scores, .. extra]);
        Assert.True(code == 0, stderr);
        using var score = JsonDocument.Parse(File.ReadAllBytes(scores));
        return score.RootElement.GetProperty("sequences")[0].GetProperty("tokens")[0].Clone();
    }

    [Fact]
    public void EpistemicScoresAreThoseOfScore()
    {
        using var temp = new TempFolder();
        var json = Generate(temp, "g.json", "--temperature", "0", "--max-new", "3");
        var tokens = json.GetProperty("tokens").EnumerateArray().ToList();
        var text = Encoding.UTF8.GetBytes(Prompt).Select(b => (long)b).ToList();
        foreach (var token in tokens)
        {
            // score of the same text with the generated token as the only target.
            var scored = ScoreOfLast(temp, text, token.GetProperty("token").GetInt64());
            Assert.Equal(scored.GetProperty("epistemic").GetDouble(), token.GetProperty("epistemic").GetDouble(), 1e-9 * Math.Max(1, scored.GetProperty("epistemic").GetDouble()));
            Assert.Equal(scored.GetProperty("p").GetDouble(), token.GetProperty("p").GetDouble(), 1e-6); // score's softmax is float32
            text.Add(token.GetProperty("token").GetInt64());
        }
    }

    [Fact]
    public void PosteriorSamplesAreTheDrawsOfScoreSamples()
    {
        using var temp = new TempFolder();
        // A curvature of the default model from a few of its own windows.
        byte[] corpus = File.ReadAllBytes(Path.Combine(DefaultModel, "heldout_in.txt"))[..256];
        string fitTokens = temp.File("fit.npy"), curvature = temp.File("c.safetensors");
        NpyFile.Write(fitTokens, new NdArray<long>([4, 64], corpus.Select(b => (long)b).ToArray()));
        var (fitCode, _, fitErr) = CliRunner.Run("fit", "--model", ModelFile, "--tokens", fitTokens, "--out", curvature);
        Assert.True(fitCode == 0, fitErr);

        var json = Generate(temp, "g.json", "--curvature", curvature, "--posterior-samples", "6", "--seed", "9", "--temperature", "0", "--max-new", "2");
        var tokens = json.GetProperty("tokens").EnumerateArray().ToList();
        var text = Encoding.UTF8.GetBytes(Prompt).Select(b => (long)b).ToList();
        foreach (var token in tokens)
        {
            var scored = ScoreOfLast(temp, text, token.GetProperty("token").GetInt64(), "--method", "kfac", "--curvature", curvature, "--samples", "6", "--seed", "9");
            Assert.Equal(scored.GetProperty("p_low").GetDouble(), token.GetProperty("p_low").GetDouble(), 1e-6);
            Assert.Equal(scored.GetProperty("p_high").GetDouble(), token.GetProperty("p_high").GetDouble(), 1e-6);
            Assert.Equal(scored.GetProperty("epistemic").GetDouble(), token.GetProperty("epistemic").GetDouble(), 1e-9 * Math.Max(1, scored.GetProperty("epistemic").GetDouble()));
            text.Add(token.GetProperty("token").GetInt64());
        }
    }

    /// <summary>
    /// Without --prior-precision, generate uses the τ stored in the curvature (as score does): its epistemic scores equal those
    /// of the unstored curvature with that τ given, and differ from τ = 1's.
    /// </summary>
    [Fact]
    public void GenerateUsesAStoredPriorPrecision()
    {
        using var temp = new TempFolder();
        byte[] corpus = File.ReadAllBytes(Path.Combine(DefaultModel, "heldout_in.txt"))[..256];
        string fitTokens = temp.File("fit.npy"), curvature = temp.File("c.safetensors"), stored = temp.File("stored.safetensors");
        NpyFile.Write(fitTokens, new NdArray<long>([4, 64], corpus.Select(b => (long)b).ToArray()));
        var (fitCode, _, fitErr) = CliRunner.Run("fit", "--model", ModelFile, "--tokens", fitTokens, "--out", curvature);
        Assert.True(fitCode == 0, fitErr);
        FisherKernels.Curvature.KfacCurvature.Load(curvature, null).WithPriorPrecision(new FisherKernels.Curvature.StoredPriorPrecision(7.5)).Save(stored);

        double[] Epistemic(params string[] extra) => Generate(temp, "g.json", ["--temperature", "0", "--max-new", "3", .. extra])
            .GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("epistemic").GetDouble()).ToArray();
        double[] fromStored = Epistemic("--curvature", stored), given = Epistemic("--curvature", curvature, "--prior-precision", "7.5");
        double[] one = Epistemic("--curvature", curvature);
        Assert.Equal(given.Length, fromStored.Length);
        for (int i = 0; i < given.Length; i++) Assert.Equal(given[i], fromStored[i], 1e-12 * Math.Max(1, given[i]));
        Assert.True(one.Zip(given).Any(p => Math.Abs(p.First - p.Second) > 1e-3 * Math.Abs(p.First)), "τ = 7.5 and τ = 1 give the same scores");
    }

    /// <summary>
    /// --abstain U stops at the first token whose epistemic / p² exceeds U and names it: the "abstained" entry is the token
    /// greedy decoding draws there (the run without --abstain), with that run's p and epistemic at that position.
    /// </summary>
    [Fact]
    public void AbstainStopsAtTheFirstUncertainTokenAndNamesIt()
    {
        using var temp = new TempFolder();
        var free = Generate(temp, "free.json", "--temperature", "0", "--max-new", "5").GetProperty("tokens").EnumerateArray().ToList();
        double[] scores = free.Select(t => t.GetProperty("epistemic").GetDouble() / Math.Pow(t.GetProperty("p").GetDouble(), 2)).ToArray();
        // U = the first token's score: that token passes (not above U); the first later one above U stops generation.
        foreach (double u in new[] { 0.0, scores[0] })
        {
            var json = Generate(temp, $"g{u}.json", "--temperature", "0", "--max-new", "5", "--abstain", u.ToString("R", System.Globalization.CultureInfo.InvariantCulture));
            int stop = Array.FindIndex(scores, s => s > u);
            long[] ids = Ids(json);
            if (stop < 0)
            {
                Assert.Equal("length", json.GetProperty("stop_reason").GetString());
                Assert.False(json.TryGetProperty("abstained", out _));
                continue;
            }
            Assert.Equal("uncertain", json.GetProperty("stop_reason").GetString());
            Assert.Equal(free.Take(stop).Select(t => t.GetProperty("token").GetInt64()), ids);
            var abstained = json.GetProperty("abstained");
            foreach (string field in new[] { "position", "token", "p", "epistemic", "aleatoric" })
                Assert.Equal(free[stop].GetProperty(field).GetDouble(), abstained.GetProperty(field).GetDouble());
            Assert.Equal(free[stop].GetProperty("text").GetString(), abstained.GetProperty("text").GetString());
            Assert.Equal(scores[stop], abstained.GetProperty("epistemic_log_p").GetDouble());
        }
        var (code, _, stderr) = CliRunner.Run("generate", "--model", DefaultModel, "--prompt", Prompt, "--temperature", "0", "--max-new", "2", "--abstain", "0");
        Assert.Equal(0, code);
        Assert.Contains($"stopped (uncertain) before token {free[0].GetProperty("token").GetInt64()} ", stderr);
        Assert.Equal("length", Generate(temp, "h.json", "--temperature", "0", "--max-new", "3", "--abstain", "1e300").GetProperty("stop_reason").GetString());
    }

    [Fact]
    public void BadPromptsAreOneLineAndWriteNothing()
    {
        using var temp = new TempFolder();
        string output = temp.File("g.json");
        string invalid = temp.File("bad.txt"), empty = temp.File("empty.txt");
        File.WriteAllBytes(invalid, [(byte)'o', (byte)'k', 0xC3, (byte)'(']);
        File.WriteAllText(empty, "");
        var cases = new (string[] Args, string Message)[]
        {
            (["--model", DefaultModel, "--prompt", new string('a', 200)], "the prompt has 200 tokens, more than the model's context of 128"),
            (["--model", DefaultModel, "--prompt-file", invalid], "invalid UTF-8 at byte offset 2 (byte 0xC3)"),
            (["--model", DefaultModel, "--prompt-file", empty], "the prompt has no tokens"),
            (["--model", ModelFile, "--prompt", "x"], "generate: needs a tokenizer"),
        };
        foreach (var (args, message) in cases)
        {
            var (code, _, stderr) = CliRunner.Run(["generate", .. args, "--out", output]);
            Assert.NotEqual(0, code);
            Assert.Contains(message, stderr);
            Assert.Single(stderr.TrimEnd().Split('\n'));
            Assert.False(File.Exists(output));
        }
    }
}

using System.Text;
using System.Text.Json;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Commands;

/// <summary>--text input (SPEC §1) through the verbs: the default model's folder (raw bytes), windows, one-line errors.</summary>
public class TextCommandTests
{
    static string DefaultModel => Path.Combine(AppContext.BaseDirectory, "models", "default");

    static string WriteTokens(TempFolder temp, string name, byte[] bytes)
    {
        string path = temp.File(name);
        NpyFile.Write(path, new NdArray<long>([1, bytes.Length], bytes.Select(b => (long)b).ToArray()));
        return path;
    }

    /// <summary>SPEC §1's window starts for n tokens: 0, S, 2S, … while a window ends before n, then n − N.</summary>
    static List<int> Starts(int n, int context, int stride)
    {
        var starts = new List<int>();
        for (int s = 0; s + context < n; s += stride) starts.Add(s);
        starts.Add(n - context);
        return starts;
    }

    /// <summary>Window w's next-byte targets on the positions no earlier window holds (its assigned ones), −100 elsewhere.</summary>
    static long[] AssignedTargets(byte[] bytes, List<int> starts, int w, int context)
    {
        int s = starts[w], from = w == 0 ? 0 : starts[w - 1] + context, n = bytes.Length;
        var targets = new long[context];
        for (int k = 0; k < context; k++) targets[k] = s + k >= from && s + k + 1 < n ? bytes[s + k + 1] : -100;
        return targets;
    }

    [Fact]
    public void ForwardTextWritesOneFilePerSequenceEqualToItsTokens()
    {
        using var temp = new TempFolder();
        string text = temp.File("in.txt");
        File.WriteAllText(text, "héllo wörld\r\n\nsecond, longer line\n");
        string output = temp.File("logits.npy");
        var (code, _, stderr) = CliRunner.Run("forward", "--model", DefaultModel, "--text", text, "--out", output);
        Assert.True(code == 0, stderr);
        Assert.False(File.Exists(output));
        string[] lines = ["héllo wörld", "second, longer line"];
        for (int i = 0; i < lines.Length; i++)
        {
            string reference = temp.File($"ref{i}.npy");
            Assert.Equal(0, CliRunner.Run("forward", "--model", Path.Combine(DefaultModel, "model.onnx"), "--tokens",
                WriteTokens(temp, $"t{i}.npy", Encoding.UTF8.GetBytes(lines[i])), "--out", reference).Code);
            var expected = (NdArray<float>)NpyFile.Read(reference);
            var actual = (NdArray<float>)NpyFile.Read(temp.File($"logits.{i}.npy"));
            Assert.Equal(expected.Shape, actual.Shape);
            Assert.Equal(expected.Data, actual.Data);
        }
    }

    [Fact]
    public void LongTextRunsInWindowsEachPositionWithTheMostLeftContext()
    {
        using var temp = new TempFolder();
        string line = "The windows of a long line: each position takes its logits from the first window holding it.";
        string text = temp.File("long.txt");
        File.WriteAllText(text, line);
        string output = temp.File("logits.npy");
        var (code, _, stderr) = CliRunner.Run("forward", "--model", DefaultModel, "--text", text, "--context", "16", "--stride", "6", "--out", output);
        Assert.True(code == 0, stderr);
        var actual = (NdArray<float>)NpyFile.Read(output);
        byte[] bytes = Encoding.UTF8.GetBytes(line);
        int n = bytes.Length, vocab = 256;
        Assert.Equal([1, n, vocab], actual.Shape);
        // Window by window: starts 0, 6, 12, … and n − 16; each position from the window with the smallest start holding it.
        var starts = Starts(n, 16, 6);
        var windows = new Dictionary<int, NdArray<float>>();
        foreach (int s in starts)
        {
            string path = temp.File($"w{s}.npy");
            Assert.Equal(0, CliRunner.Run("forward", "--model", Path.Combine(DefaultModel, "model.onnx"), "--tokens", WriteTokens(temp, $"wt{s}.npy", bytes[s..(s + 16)]), "--out", path).Code);
            windows[s] = (NdArray<float>)NpyFile.Read(path);
        }
        for (int t = 0; t < n; t++)
        {
            int s = starts.First(s => s <= t && t < s + 16);
            Assert.Equal(windows[s].Data.AsSpan((t - s) * vocab, vocab).ToArray(), actual.Data.AsSpan(t * vocab, vocab).ToArray());
        }
    }

    [Fact]
    public void BadTextInputIsOneLineAndWritesNothing()
    {
        using var temp = new TempFolder();
        string output = temp.File("logits.npy");
        string invalid = temp.File("bad.txt");
        File.WriteAllBytes(invalid, [(byte)'a', (byte)'b', 0xFF, (byte)'c']);
        string empty = temp.File("empty.txt");
        File.WriteAllText(empty, "");
        string ok = temp.File("ok.txt");
        File.WriteAllText(ok, "fine");
        string tooBig = temp.File("tokenizer.json");
        File.WriteAllText(tooBig, "{\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0,\"b\":300},\"unk_token\":\"a\"},\"pre_tokenizer\":{\"type\":\"Whitespace\"}}");
        string unsupported = temp.File("tok.bin");
        File.WriteAllBytes(unsupported, [1, 2]);
        var cases = new (string[] Args, string Message)[]
        {
            (["--model", DefaultModel, "--text", invalid], "invalid UTF-8 at byte offset 2 (byte 0xFF)"),
            (["--model", DefaultModel, "--text", empty], "the file is empty"),
            (["--model", Path.Combine(DefaultModel, "model.onnx"), "--text", ok], "--text needs a tokenizer"),
            (["--model", DefaultModel, "--text", ok, "--tokenizer", tooBig], "has ids up to 300, but model"),
            (["--model", DefaultModel, "--text", ok, "--tokenizer", unsupported], "unsupported tokenizer file"),
            (["--model", DefaultModel, "--tokens", ok, "--document"], "--document applies to --text input"),
            (["--model", DefaultModel, "--text", ok, "--context", "8", "--stride", "9"], "--stride 9 is larger than the context 8"),
        };
        // Every verb that reads text refuses them alike, before any work (no output, no checkpoint).
        var verbs = new (string Verb, string Output, string[] Extra)[]
        {
            ("forward", output, []), ("score", temp.File("s.json"), []), ("fit", temp.File("c.safetensors"), []),
            ("natgrad", temp.File("d.safetensors"), ["--curvature", temp.File("none.safetensors")]),
        };
        foreach (var (verb, verbOutput, extra) in verbs)
            foreach (var (args, message) in cases)
            {
                var (code, stdout, stderr) = CliRunner.Run([verb, .. args, .. extra, "--out", verbOutput]);
                Assert.True(code != 0, $"{verb} {string.Join(' ', args)}");
                Assert.Contains(message, stderr);
                Assert.Single(stderr.TrimEnd().Split('\n'));
                Assert.False(File.Exists(verbOutput));
                Assert.False(File.Exists(verbOutput + ".checkpoint"));
            }
    }

    static JsonElement Json(string path)
    {
        using var json = JsonDocument.Parse(File.ReadAllBytes(path));
        return json.RootElement.Clone();
    }

    [Fact]
    public void ScoreTextEqualsScoreTokensAndCarriesTextAndSpans()
    {
        using var temp = new TempFolder();
        string line = "naïve <b>x</b>, ok";
        string text = temp.File("in.txt");
        File.WriteAllText(text, line + "\n");
        string output = temp.File("s.json"), page = temp.File("s.html"), reference = temp.File("r.json");
        var (code, _, stderr) = CliRunner.Run("score", "--model", DefaultModel, "--text", text, "--out", output, "--html", page);
        Assert.True(code == 0, stderr);
        byte[] bytes = Encoding.UTF8.GetBytes(line);
        Assert.Equal(0, CliRunner.Run("score", "--model", Path.Combine(DefaultModel, "model.onnx"), "--tokens", WriteTokens(temp, "t.npy", bytes), "--out", reference).Code);
        var ours = Json(output).GetProperty("sequences")[0];
        var expected = Json(reference).GetProperty("sequences")[0];
        Assert.Equal(expected.GetProperty("epistemic").GetDouble(), ours.GetProperty("epistemic").GetDouble());
        var tokens = ours.GetProperty("tokens").EnumerateArray().ToList();
        var expectedTokens = expected.GetProperty("tokens").EnumerateArray().ToList();
        Assert.Equal(bytes.Length - 1, tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            foreach (string field in new[] { "position", "target", "p", "epistemic", "aleatoric" })
                Assert.Equal(expectedTokens[i].GetProperty(field).GetDouble(), tokens[i].GetProperty(field).GetDouble());
            // The target is byte t+1: its span is the character holding it, its text that character.
            int start = tokens[i].GetProperty("start").GetInt32();
            Assert.Equal(start + 1, tokens[i].GetProperty("end").GetInt32());
            Assert.Equal(line.Substring(start, 1), tokens[i].GetProperty("text").GetString());
        }
        Assert.Equal(2, tokens.Count(t => t.GetProperty("text").GetString() == "ï")); // each of its two bytes spans it
        string html = File.ReadAllText(page);
        Assert.Contains("&lt;", html);
        Assert.DoesNotContain("<b>x", html);
    }

    [Fact]
    public void ScoreTextInWindowsEqualsEachWindowScoredAlone()
    {
        using var temp = new TempFolder();
        string line = "A line long enough to need a few windows of sixteen bytes.";
        string text = temp.File("in.txt");
        File.WriteAllText(text, line);
        string output = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run("score", "--model", DefaultModel, "--text", text, "--context", "16", "--stride", "8", "--out", output);
        Assert.True(code == 0, stderr);
        var tokens = Json(output).GetProperty("sequences")[0].GetProperty("tokens").EnumerateArray().ToList();
        byte[] bytes = Encoding.UTF8.GetBytes(line);
        int n = bytes.Length;
        Assert.Equal(Enumerable.Range(0, n - 1), tokens.Select(t => t.GetProperty("position").GetInt32()));
        var starts = Starts(n, 16, 8);
        foreach (int s in starts)
        {
            // The window alone, its targets the next bytes, scoring only the positions no earlier window holds.
            long[] targets = AssignedTargets(bytes, starts, starts.IndexOf(s), 16);
            string tokensPath = WriteTokens(temp, $"w{s}.npy", bytes[s..(s + 16)]), targetsPath = temp.File($"y{s}.npy"), reference = temp.File($"r{s}.json");
            NpyFile.Write(targetsPath, new NdArray<long>([1, 16], targets));
            Assert.Equal(0, CliRunner.Run("score", "--model", Path.Combine(DefaultModel, "model.onnx"), "--tokens", tokensPath, "--targets", targetsPath, "--out", reference).Code);
            foreach (var expected in Json(reference).GetProperty("sequences")[0].GetProperty("tokens").EnumerateArray())
            {
                var token = tokens.Single(t => t.GetProperty("position").GetInt32() == s + expected.GetProperty("position").GetInt32());
                Assert.Equal(expected.GetProperty("p").GetDouble(), token.GetProperty("p").GetDouble());
                Assert.Equal(expected.GetProperty("epistemic").GetDouble(), token.GetProperty("epistemic").GetDouble());
            }
        }
    }

    [Fact]
    public void SequenceScoreOverWindowsSumsTheirGradients()
    {
        // The gradient of p̄ summed over windows: one window whose targets are split in two "windows" must give the
        // sequence score of the window scored whole (its gradient from one backward pass through the taps).
        var lm = LanguageModel.Load(Path.Combine(DefaultModel, "model.onnx"));
        var service = new ScoreService(lm, new OpContext(new CpuBackend(1)));
        byte[] bytes = Encoding.UTF8.GetBytes("Sixteen bytes ok");
        var tokens = new NdArray<long>([1, 16], bytes.Select(b => (long)b).ToArray());
        long[] targets = bytes.Skip(1).Select(b => (long)b).Append(-100L).ToArray();
        long[] first = targets.Select((y, i) => i < 7 ? y : -100L).ToArray(), second = targets.Select((y, i) => i >= 7 ? y : -100L).ToArray();
        var options = new ScoreOptions();
        double whole = service.Score(tokens, new NdArray<long>([1, 16], targets), options).Sequences[0].Epistemic;
        double split = service.SequenceEpistemic([(tokens, first), (tokens, second)], options);
        Assert.Equal(whole, split, 1e-5 * whole);
    }

    [Fact]
    public void EncoderOnlyTextNeedsTargets()
    {
        using var temp = new TempFolder();
        string folder = temp.File("bert");
        Directory.CreateDirectory(folder);
        File.Copy(Fixtures.Path("bert_tiny.onnx"), Path.Combine(folder, "model.onnx"));
        File.WriteAllText(Path.Combine(folder, "config.json"), "{\"model_type\": \"bert\", \"architectures\": [\"BertForMaskedLM\"]}");
        File.WriteAllLines(Path.Combine(folder, "vocab.txt"), new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Concat(Enumerable.Range(0, 59).Select(i => $"w{i}")));
        string text = temp.File("in.txt");
        File.WriteAllText(text, "w1 w2 w3");
        string output = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run("score", "--model", folder, "--text", text, "--out", output);
        Assert.NotEqual(0, code);
        Assert.Contains("is encoder-only (bert): next-token targets mean nothing for it; pass --targets", stderr);
        Assert.False(File.Exists(output));
        // With targets: [CLS] w1 w2 w3 [SEP], the masked-LM targets at positions 1..3.
        string targets = temp.File("y.npy");
        NpyFile.Write(targets, new NdArray<long>([1, 5], [-100, 6, 7, 8, -100]));
        (code, _, stderr) = CliRunner.Run("score", "--model", folder, "--text", text, "--targets", targets, "--out", output);
        Assert.True(code == 0, stderr);
        var tokens = Json(output).GetProperty("sequences")[0].GetProperty("tokens").EnumerateArray().ToList();
        Assert.Equal(["w1", "w2", "w3"], tokens.Select(t => t.GetProperty("text").GetString()));
        Assert.Equal([0, 3, 6], tokens.Select(t => t.GetProperty("start").GetInt32()));
    }

    /// <summary>jvp, fit and calibrate with --text of one short line: the same files as their --tokens runs on the line's bytes.</summary>
    [Fact]
    public void JvpFitAndCalibrateTextEqualTheirTokenRuns()
    {
        using var temp = new TempFolder();
        string line = "Calibrate, fit and jvp on text.";
        string text = temp.File("in.txt");
        File.WriteAllText(text, line + "\n");
        string tokens = WriteTokens(temp, "t.npy", Encoding.UTF8.GetBytes(line));
        string model = Path.Combine(DefaultModel, "model.onnx");

        string direction = temp.File("v.safetensors");
        var random = new Random(2);
        SafetensorsFile.Write(direction, [new KeyValuePair<string, NdArray>("head.weight", new NdArray<float>([256, 128], Enumerable.Range(0, 128 * 256).Select(_ => (float)random.NextDouble() - 0.5f).ToArray()))]);
        Assert.Equal(0, CliRunner.Run("jvp", "--model", DefaultModel, "--text", text, "--direction", direction, "--out", temp.File("j1.npy")).Code);
        Assert.Equal(0, CliRunner.Run("jvp", "--model", model, "--tokens", tokens, "--direction", direction, "--out", temp.File("j2.npy")).Code);
        Assert.Equal(((NdArray<float>)NpyFile.Read(temp.File("j2.npy"))).Data, ((NdArray<float>)NpyFile.Read(temp.File("j1.npy"))).Data);

        var (code, _, stderr) = CliRunner.Run("fit", "--model", DefaultModel, "--text", text, "--out", temp.File("c1.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Equal(0, CliRunner.Run("fit", "--model", model, "--tokens", tokens, "--out", temp.File("c2.safetensors")).Code);
        var (a, b) = (SafetensorsFile.Read(temp.File("c1.safetensors")), SafetensorsFile.Read(temp.File("c2.safetensors")));
        Assert.Equal(b.Names, a.Names);
        foreach (string name in a.Names) Assert.Equal(b.GetFloat32(name).Data, a.GetFloat32(name).Data);

        var (code1, out1, err1) = CliRunner.Run("calibrate", "--model", DefaultModel, "--text", text, "--curvature", temp.File("c1.safetensors"), "--out", temp.File("k1.safetensors"));
        Assert.True(code1 == 0, err1);
        var (_, out2, _) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokens, "--curvature", temp.File("c2.safetensors"), "--out", temp.File("k2.safetensors"));
        Assert.Equal(out2.Replace("k2.safetensors", "k1.safetensors"), out1);
    }

    /// <summary>
    /// natgrad --text: on a line that fits the context, the bytes of natgrad --tokens on the line's bytes; in windows, the sum
    /// of each window's natgrad alone with --targets on its assigned positions only (the direction is linear in ∇L).
    /// </summary>
    [Fact]
    public void NatgradTextIsTheSumOfItsWindowsDirections()
    {
        using var temp = new TempFolder();
        string line = "Natural gradients of text, window by window.";
        string text = temp.File("in.txt");
        File.WriteAllText(text, line + "\n");
        byte[] bytes = Encoding.UTF8.GetBytes(line);
        string model = Path.Combine(DefaultModel, "model.onnx"), curvature = temp.File("c.safetensors");
        Assert.Equal(0, CliRunner.Run("fit", "--model", model, "--tokens", WriteTokens(temp, "t.npy", bytes), "--out", curvature).Code);

        var (code, _, stderr) = CliRunner.Run("natgrad", "--model", DefaultModel, "--text", text, "--curvature", curvature, "--out", temp.File("d1.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Equal(0, CliRunner.Run("natgrad", "--model", model, "--tokens", temp.File("t.npy"), "--curvature", curvature, "--out", temp.File("d2.safetensors")).Code);
        Assert.Equal(File.ReadAllBytes(temp.File("d2.safetensors")), File.ReadAllBytes(temp.File("d1.safetensors")));

        (code, _, stderr) = CliRunner.Run("natgrad", "--model", DefaultModel, "--text", text, "--context", "16", "--stride", "8", "--curvature", curvature, "--out", temp.File("dw.safetensors"));
        Assert.True(code == 0, stderr);
        int n = bytes.Length;
        var starts = Starts(n, 16, 8);
        Dictionary<string, double[]>? sum = null;
        for (int w = 0; w < starts.Count; w++)
        {
            int s = starts[w];
            long[] targets = AssignedTargets(bytes, starts, w, 16);
            string targetsPath = temp.File($"y{w}.npy"), outPath = temp.File($"d{w}.safetensors");
            NpyFile.Write(targetsPath, new NdArray<long>([1, 16], targets));
            Assert.Equal(0, CliRunner.Run("natgrad", "--model", model, "--tokens", WriteTokens(temp, $"w{w}.npy", bytes[s..(s + 16)]), "--targets", targetsPath,
                                          "--curvature", curvature, "--out", outPath).Code);
            var part = SafetensorsFile.Read(outPath);
            sum ??= part.Names.ToDictionary(name => name, name => new double[part.GetFloat32(name).Data.Length]);
            foreach (string name in part.Names)
            {
                float[] values = part.GetFloat32(name).Data;
                for (int i = 0; i < values.Length; i++) sum[name][i] += values[i];
            }
        }
        var windowed = SafetensorsFile.Read(temp.File("dw.safetensors"));
        Assert.Equal(sum!.Keys.Order(), windowed.Names.Order());
        foreach (var (name, expected) in sum)
        {
            float[] actual = windowed.GetFloat32(name).Data;
            double diff = 0, norm = 0;
            for (int i = 0; i < actual.Length; i++) { diff += Math.Pow(actual[i] - expected[i], 2); norm += expected[i] * expected[i]; }
            Assert.True(Math.Sqrt(diff) <= 1e-5 * Math.Sqrt(norm) + 1e-12, $"{name}: relative difference {Math.Sqrt(diff / norm)}");
        }
    }
}

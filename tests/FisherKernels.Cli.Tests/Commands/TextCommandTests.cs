using System.Text;
using FisherKernels.IO;

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
        var starts = new List<int>();
        for (int s = 0; s + 16 < n; s += 6) starts.Add(s);
        starts.Add(n - 16);
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
        foreach (var (args, message) in cases)
        {
            var (code, stdout, stderr) = CliRunner.Run(["forward", .. args, "--out", output]);
            Assert.NotEqual(0, code);
            Assert.Contains(message, stderr);
            Assert.Single(stderr.TrimEnd().Split('\n'));
            Assert.False(File.Exists(output));
        }
    }
}

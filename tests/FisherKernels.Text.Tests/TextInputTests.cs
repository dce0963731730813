using System.Text;
using FisherKernels.Text;
using FisherKernels.Text.Tokenization;

namespace FisherKernels.Tests;

public class TextInputTests
{
    [Fact]
    public void LinesAreSequencesTakenAsTheyAre()
    {
        Assert.Equal(["  first ", "second\t", "third"], TextInput.Sequences("  first \r\n\nsecond\t\n\r\nthird", document: false, "f"));
        Assert.Equal(["a\n\nb\n"], TextInput.Sequences("a\n\nb\n", document: true, "f"));
    }

    [Fact]
    public void InvalidUtf8NamesTheByteOffset()
    {
        var e = Assert.Throws<FisherKernelsException>(() => TextInput.Decode([(byte)'o', (byte)'k', 0xC3, 0x28], "'t.txt'"));
        Assert.Equal("--text 't.txt': invalid UTF-8 at byte offset 2 (byte 0xC3)", e.Message);
        // A byte-order mark is not text; the offset still counts it.
        Assert.Equal("é", TextInput.Decode([0xEF, 0xBB, 0xBF, 0xC3, 0xA9], "x"));
        Assert.Contains("byte offset 4", Assert.Throws<FisherKernelsException>(() => TextInput.Decode([0xEF, 0xBB, 0xBF, (byte)'a', 0xFF], "x")).Message);
    }

    [Fact]
    public void EmptyTextIsAnError()
    {
        string path = Path.GetTempFileName();
        try
        {
            string text = TextInput.Read(path);
            Assert.Contains("the file is empty", Assert.Throws<FisherKernelsException>(() => TextInput.Sequences(text, false, path)).Message);
            Assert.Contains("only empty lines", Assert.Throws<FisherKernelsException>(() => TextInput.Sequences("\n\r\n\n", false, path)).Message);
        }
        finally { File.Delete(path); }
        Assert.Equal("héllo", TextInput.Read("-", new MemoryStream(Encoding.UTF8.GetBytes("héllo"))));
    }

    [Theory]
    [InlineData(10, 4, 2)]
    [InlineData(10, 4, 4)]
    [InlineData(10, 4, 1)]
    [InlineData(11, 4, 3)]
    [InlineData(4, 4, 2)]
    [InlineData(3, 8, 4)]
    [InlineData(100, 16, 8)]
    [InlineData(17, 16, 8)]
    public void EachPositionIsScoredOnceWithTheMostLeftContext(int n, int context, int stride)
    {
        var windows = WindowPlan.Plan(n, context, stride);
        // SPEC §1's starts: 0, S, 2S, … then the last window ending at the sequence's end.
        var starts = new List<int>();
        if (n <= context) starts.Add(0);
        else
        {
            for (int s = 0; s + context < n; s += stride) starts.Add(s);
            starts.Add(n - context);
        }
        Assert.Equal(starts, windows.Select(w => w.Start));
        Assert.All(windows, w => Assert.Equal(Math.Min(context, n), w.Length));
        for (int t = 0; t < n; t++)
        {
            var holding = windows.Where(w => w.ScoredFrom <= t && t < w.ScoredTo).ToList();
            Assert.Single(holding);
            Assert.InRange(t, holding[0].Start, holding[0].End - 1);
            // No window that holds t gives it more left context.
            int best = windows.Where(w => w.Start <= t && t < w.End).Max(w => t - w.Start);
            Assert.Equal(best, t - holding[0].Start);
        }
    }

    [Fact]
    public void WindowedScoresEqualEachWindowScoredAlone()
    {
        // A stand-in for a causal model: position t's score depends on every token from the window's start to t, so a
        // position scored with the wrong window or twice would change the result.
        var random = new Random(3);
        long[] tokens = Enumerable.Range(0, 37).Select(_ => (long)random.Next(50)).ToArray();
        long[] targets = tokens.Skip(1).Append(-100L).ToArray();
        static double Score(long[] window, int t) => window.Take(t + 1).Select((x, i) => (x + 1) * (i + 1.5)).Sum();

        var windows = WindowPlan.Plan(tokens.Length, context: 8, stride: 3);
        var planned = new double?[tokens.Length];
        foreach (var w in windows)
        {
            long[] windowTokens = tokens[w.Start..w.End];
            long[] windowTargets = WindowPlan.WindowTargets(targets, w);
            for (int i = 0; i < w.Length; i++)
                if (windowTargets[i] != -100) { Assert.Null(planned[w.Start + i]); planned[w.Start + i] = Score(windowTokens, i); }
        }
        // One by one: each position in the window of the largest left context among all windows holding it.
        for (int t = 0; t < tokens.Length; t++)
        {
            if (targets[t] == -100) { Assert.Null(planned[t]); continue; }
            var w = windows.Where(w => w.Start <= t && t < w.End).MinBy(w => w.Start);
            Assert.Equal(Score(tokens[w.Start..w.End], t - w.Start), planned[t]);
        }
    }

    [Fact]
    public void StrideBeyondTheContextIsRefused()
    {
        Assert.Contains("--stride must be 1..8", Assert.Throws<FisherKernelsException>(() => WindowPlan.Plan(20, 8, 9)).Message);
    }

    [Fact]
    public void ModelFolderFindsTheModelTokenizerAndConfig()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"fk-folder-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            Assert.Contains("no model.onnx and no other", Assert.Throws<FisherKernelsException>(() => ModelFolder.Resolve(dir)).Message);
            File.WriteAllText(Path.Combine(dir, "a.onnx"), "");
            File.WriteAllText(Path.Combine(dir, "b.onnx"), "");
            Assert.Contains("several *.onnx files (a.onnx, b.onnx)", Assert.Throws<FisherKernelsException>(() => ModelFolder.Resolve(dir)).Message);
            File.WriteAllText(Path.Combine(dir, "model.onnx"), "");
            File.WriteAllText(Path.Combine(dir, "config.json"), """{"model_type": "bert", "architectures": ["BertForMaskedLM"], "max_position_embeddings": 512, "eos_token_id": [7, 8]}""");
            File.WriteAllLines(Path.Combine(dir, "vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hi"]);
            var folder = ModelFolder.Resolve(dir);
            Assert.Equal(Path.Combine(dir, "model.onnx"), folder.ModelPath);
            Assert.Equal(512, folder.Context);
            Assert.True(folder.EncoderOnly);
            Assert.Equal(7, folder.EosTokenId);
            Assert.Equal([2, 4, 3], folder.Tokenizer!.Encode("Hi").Ids);
            // tokenizer.json wins over vocab.txt.
            File.Copy(Path.Combine(Gpt2Reference.Directory, "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
            Assert.Equal([15496, 995], ModelFolder.Resolve(dir).Tokenizer!.Encode("Hello world").Ids);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void DefaultModelFolderReadsRawBytes()
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "models", "default");
        var folder = ModelFolder.Resolve(dir);
        Assert.Equal(128, folder.Context);
        Assert.False(folder.EncoderOnly);
        Assert.IsType<ByteTokenizer>(folder.Tokenizer);
    }
}

using FisherKernels.Cli.Demo;

namespace FisherKernels.Tests.Demo;

public class DefaultModelTests
{
    [Fact]
    public void EmbeddedModelAndTextsTravelWithTheTool()
    {
        var model = DefaultModel.Load();
        Assert.Equal(128, model.Context);
        Assert.Equal(256, model.Vocab);
        Assert.InRange(new FileInfo(model.ModelPath).Length, 1_000_000, 15_000_000);
        Assert.Equal(64, model.Windows(model.ReadText("fit.txt")).Shape[0]);
        var sets = DemoTexts.Load(model, DemoCommand.HeldOutWindows, DemoCommand.WindowsPerOodSet);
        Assert.Equal(new[] { "held-out", "code", "german", "french", "shuffled", "random" }, sets.Select(s => s.Name));
        Assert.Equal(DemoCommand.HeldOutWindows, sets[0].Count);
        Assert.All(sets.Skip(1), s => Assert.Equal(DemoCommand.WindowsPerOodSet, s.Count));
        Assert.All(sets, s => Assert.Equal(model.Context, s.Tokens.Shape[1]));
        // The in-distribution texts are the ASCII prose the model was trained on.
        Assert.All(sets[0].Tokens.Data, t => Assert.InRange(t, 9, 126));
    }

    /// <summary>
    /// The demo reads its corpora through the text path (strict UTF-8, the folder's tokenizer); its ids are each file's raw
    /// bytes, the ids the demo cut before, so its figures do not move.
    /// </summary>
    [Fact]
    public void CorporaReadAsTextAreTheirFilesBytes()
    {
        var model = DefaultModel.Load();
        foreach (string name in new[] { "fit.txt", "heldout_in.txt", "ood_code.txt", "ood_german.txt", "ood_french.txt" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(model.Folder, name)).Select(b => (long)b), model.ReadText(name));
        Assert.Contains(model.ReadText("ood_german.txt"), id => id >= 0x80); // umlauts: multi-byte UTF-8 through the tokenizer
        // The page's lines: two of each kind, each within the context.
        var lines = DemoTexts.PageLines(model);
        Assert.Equal(8, lines.Count);
        Assert.All(lines, line => Assert.InRange(System.Text.Encoding.UTF8.GetByteCount(line), 50, model.Context));
        Assert.Contains(lines, line => line.Contains("für"));
    }

    [Fact]
    public void MissingOrWrongDescriptionIsOneClearError()
    {
        string folder = Directory.CreateTempSubdirectory("fk-demo-model").FullName;
        try
        {
            var e = Assert.Throws<FisherKernelsException>(() => DefaultModel.Load(folder));
            Assert.Contains("model.json", e.Message);
            File.WriteAllText(Path.Combine(folder, "model.json"), """{"tokenizer": "bpe", "context": 128, "vocab": 256}""");
            e = Assert.Throws<FisherKernelsException>(() => DefaultModel.Load(folder));
            Assert.Contains("tokenizer 'bpe'", e.Message);
            File.WriteAllText(Path.Combine(folder, "model.json"), "{ not json");
            e = Assert.Throws<FisherKernelsException>(() => DefaultModel.Load(folder));
            Assert.Contains("not a valid model description", e.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

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

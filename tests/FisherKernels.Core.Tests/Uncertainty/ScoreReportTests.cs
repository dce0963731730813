using System.Text.Json;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

public sealed class ScoreReportTests : IDisposable
{
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    static ScoreReport Sample() => new("m.onnx", "kfac", 0.5,
    [
        new SequenceScore(0, [new TokenScore(1, 17, 0.5, 0.25), new TokenScore(3, 4, 0.125, 1e-7)], 0.0625),
        new SequenceScore(1, [], double.NaN),
    ]);

    [Fact]
    public void JsonHasTheSpecShapeAndValues()
    {
        string path = Path.Combine(dir, "s.json");
        Sample().Write(path);
        JsonElement root = JsonDocument.Parse(File.ReadAllText(path)).RootElement;
        Assert.Equal(["model", "method", "prior_precision", "sequences"], root.EnumerateObject().Select(p => p.Name));
        Assert.Equal("m.onnx", root.GetProperty("model").GetString());
        Assert.Equal("kfac", root.GetProperty("method").GetString());
        Assert.Equal(0.5, root.GetProperty("prior_precision").GetDouble());
        JsonElement s0 = root.GetProperty("sequences")[0];
        Assert.Equal(["index", "mean_p", "epistemic", "aleatoric", "tokens"], s0.EnumerateObject().Select(p => p.Name));
        Assert.Equal(0.3125, s0.GetProperty("mean_p").GetDouble());
        Assert.Equal(0.0625, s0.GetProperty("epistemic").GetDouble());
        Assert.Equal((0.25 + 0.125 * 0.875) / 2, s0.GetProperty("aleatoric").GetDouble());
        JsonElement t1 = s0.GetProperty("tokens")[1];
        Assert.Equal(["position", "target", "p", "epistemic", "aleatoric"], t1.EnumerateObject().Select(p => p.Name));
        Assert.Equal(3, t1.GetProperty("position").GetInt32());
        Assert.Equal(4, t1.GetProperty("target").GetInt64());
        Assert.Equal(1e-7, t1.GetProperty("epistemic").GetDouble());
        Assert.Equal(0.125 * 0.875, t1.GetProperty("aleatoric").GetDouble());
        JsonElement s1 = root.GetProperty("sequences")[1];
        Assert.Equal(JsonValueKind.Null, s1.GetProperty("mean_p").ValueKind);
        Assert.Equal(0, s1.GetProperty("tokens").GetArrayLength());
    }

    [Fact]
    public void CsvHasOneRowPerTargetedPosition()
    {
        string path = Path.Combine(dir, "s.csv");
        Sample().Write(path);
        Assert.Equal("sequence,position,target,p,epistemic,aleatoric\n0,1,17,0.5,0.25,0.25\n0,3,4,0.125,1E-07,0.109375\n", File.ReadAllText(path));
    }

    [Fact]
    public void BadOutputIsRefusedAndNothingIsWritten()
    {
        Assert.Contains("--out", Assert.Throws<FisherKernelsException>(() => Sample().Write(Path.Combine(dir, "s.txt"))).Message);
        var broken = Sample() with { Sequences = [new SequenceScore(0, [new TokenScore(0, 1, 0.5, double.PositiveInfinity)], 1)] };
        Assert.Contains("position 0", Assert.Throws<FisherKernelsException>(() => broken.Write(Path.Combine(dir, "b.json"))).Message);
        Assert.Empty(Directory.GetFiles(dir));
    }
}

using System.Text.Json;

namespace FisherKernels.Tests.Commands;

/// <summary>`score --level` (SPEC §4): the level left out has null epistemic fields; a bad level is one line, nothing written.</summary>
public sealed class ScoreLevelCommandTests
{
    [Fact]
    public void SequenceLevelWritesNullTokenEpistemicScoresAndABadLevelIsRefused()
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        string[] common = ["score", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--threads", "1"];
        var (code, _, stderr) = CliRunner.Run([.. common, "--level", "sequence", "--out", output]);
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(File.ReadAllText(output));
        var sequence = json.RootElement.GetProperty("sequences")[0];
        Assert.True(sequence.GetProperty("epistemic").GetDouble() > 0);
        Assert.All(sequence.GetProperty("tokens").EnumerateArray(), t => Assert.Equal(JsonValueKind.Null, t.GetProperty("epistemic").ValueKind));

        string bad = temp.File("bad.json");
        (code, _, stderr) = CliRunner.Run([.. common, "--level", "tokens", "--out", bad]);
        Assert.Equal(2, code);
        Assert.Equal("fisherkernels: score: --level must be token, sequence or both, got 'tokens'", stderr.Trim());
        Assert.False(File.Exists(bad));
    }
}

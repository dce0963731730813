namespace FisherKernels.Tests.Commands;

/// <summary>The posterior cache (SPEC §5) as score and calibrate use it: written once beside the curvature, read back by later runs.</summary>
public class PosteriorCacheCommandTests
{
    static readonly string Model = Fixtures.Path("gpt2_tiny.onnx"), Tokens = Fixtures.Path("gpt2_tiny.tokens.npy");

    static (int Code, string Err) Score(string curvature, string output, params string[] extra)
    {
        var (code, _, stderr) = CliRunner.Run(["score", "--model", Model, "--tokens", Tokens, "--curvature", curvature, "--out", output, .. extra]);
        return (code, stderr);
    }

    static string[] CacheLines(string stderr) => stderr.Split('\n').Where(l => l.StartsWith("posterior", StringComparison.Ordinal)).Select(l => l.TrimEnd()).ToArray();

    [Fact]
    public void ScoreCachesThePosteriorOnceAndLaterRunsReadItWithTheSameBytes()
    {
        using var temp = new TempFolder();
        string curvature = temp.File("c.safetensors");
        File.Copy(Fixtures.Path("gpt2_tiny.kfac.safetensors"), curvature);
        var (code, stderr) = Score(curvature, temp.File("first.json"));
        Assert.True(code == 0, stderr);
        Assert.StartsWith($"posterior: decompositions cached in '{curvature}.posterior' (", Assert.Single(CacheLines(stderr)));
        (code, stderr) = Score(curvature, temp.File("second.json"));
        Assert.True(code == 0, stderr);
        Assert.StartsWith($"posterior: decompositions read from '{curvature}.posterior' (", Assert.Single(CacheLines(stderr)));
        Assert.Equal(File.ReadAllBytes(temp.File("first.json")), File.ReadAllBytes(temp.File("second.json")));

        // calibrate rewrites the curvature's metadata only: its cache stays valid, and the next score still reads it.
        (code, _, stderr) = CliRunner.Run("calibrate", "--model", Model, "--tokens", Tokens, "--curvature", curvature);
        Assert.True(code == 0, stderr);
        Assert.StartsWith($"posterior: decompositions read from '{curvature}.posterior' (", Assert.Single(CacheLines(stderr)));
    }

    [Fact]
    public void AnUnwritableCacheIsOneLineAndAGivenCacheOfAnotherCurvatureIsRefused()
    {
        using var temp = new TempFolder();
        string curvature = temp.File("c.safetensors");
        File.Copy(Fixtures.Path("gpt2_tiny.kfac.safetensors"), curvature);
        Directory.CreateDirectory(curvature + ".posterior"); // its place is taken (as in a read-only folder): scored without it
        var (code, stderr) = Score(curvature, temp.File("s.json"));
        Assert.True(code == 0, stderr);
        Assert.StartsWith($"posterior: not cached (cannot write '{curvature}.posterior'", Assert.Single(CacheLines(stderr)));

        string other = temp.File("other.safetensors"), otherCache = temp.File("other.posterior");
        File.Copy(Fixtures.Path("gpt2_tiny.kfac_targets.safetensors"), other);
        (code, stderr) = Score(other, temp.File("other.json"), "--posterior-cache", otherCache);
        Assert.True(code == 0, stderr);
        (code, stderr) = Score(curvature, temp.File("refused.json"), "--posterior-cache", otherCache);
        Assert.NotEqual(0, code);
        Assert.StartsWith($"fisherkernels: --posterior-cache '{otherCache}' belongs to another curvature", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(File.Exists(temp.File("refused.json")));
    }
}

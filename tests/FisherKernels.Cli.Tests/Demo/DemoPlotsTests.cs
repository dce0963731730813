using FisherKernels.Cli.Demo;

namespace FisherKernels.Tests.Demo;

public class DemoPlotsTests
{
    static void AssertPng(string path)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 1000, $"{path}: {bytes.Length} bytes");
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
    }

    [Fact]
    public void PlotsAreWrittenAsPng()
    {
        string folder = Directory.CreateTempSubdirectory("fk-demo-plots").FullName;
        try
        {
            int n = 16;
            var tokens = Enumerable.Range(0, n).Select(i => new FisherKernels.Uncertainty.TokenScore(i, 'a' + i, 0.5 + 0.02 * i, 0.1 * i, 0.25 - 0.01 * i)).ToArray();
            var scores = new FisherKernels.Uncertainty.ScoreReport("m", "kfac", 1, [new FisherKernels.Uncertainty.SequenceScore(0, 0.6, 1, 0.2, tokens)]);
            var part = Enumerable.Range(0, n).Select(i => i < 8 ? 0 : 1).ToArray();
            string perToken = Path.Combine(folder, "per_token.png");
            DemoPlots.PerToken(perToken, "test", scores, part, ["english", "german"], "epistemic");
            AssertPng(perToken);

            var bins = DemoMetrics.Reliability([0.1, 0.5, 0.55, 0.9], [false, true, false, true], 10);
            string reliability = Path.Combine(folder, "reliability.png");
            DemoPlots.Reliability(reliability, "test", [("before", bins), ("after", bins)]);
            AssertPng(reliability);
            Assert.Equal(2, Directory.GetFiles(folder).Length);  // no temporary files left behind
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

using FisherKernels.Onnx.Generation;

namespace FisherKernels.Tests.Generation;

public class NextTokenSamplerTests
{
    static readonly double[] Distribution = [0.05, 0.5, 0.3, 0.1, 0.05];

    [Fact]
    public void TemperatureZeroIsTheArgmax()
    {
        var sampler = new NextTokenSampler(new SamplingOptions { Temperature = 0, Seed = 3 });
        Assert.All(Enumerable.Range(0, 20), _ => Assert.Equal(1, sampler.Next(Distribution)));
        Assert.Equal(0, NextTokenSampler.ArgMax([0.4, 0.4, 0.2])); // ties: the lowest id
    }

    [Fact]
    public void ASeedGivesTheSameTokensEveryTime()
    {
        var options = new SamplingOptions { Temperature = 1.3, TopK = 4, TopP = 0.95, Seed = 42 };
        var a = new NextTokenSampler(options);
        var b = new NextTokenSampler(options);
        var c = new NextTokenSampler(options with { Seed = 43 });
        var first = Enumerable.Range(0, 200).Select(_ => a.Next(Distribution)).ToList();
        Assert.Equal(first, Enumerable.Range(0, 200).Select(_ => b.Next(Distribution)));
        Assert.NotEqual(first, Enumerable.Range(0, 200).Select(_ => c.Next(Distribution)));
    }

    [Theory]
    [InlineData(1.0, null, null, new[] { 0.05, 0.5, 0.3, 0.1, 0.05 })]
    [InlineData(1.0, 2, null, new[] { 0, 0.625, 0.375, 0, 0 })]            // top-2 renormalized
    [InlineData(1.0, null, 0.85, new[] { 0, 0.5 / 0.9, 0.3 / 0.9, 0.1 / 0.9, 0 })] // fewest tokens reaching 0.85: 0.5+0.3+0.1
    [InlineData(0.5, null, null, new[] { 0.0025 / 0.355, 0.25 / 0.355, 0.09 / 0.355, 0.01 / 0.355, 0.0025 / 0.355 })] // p² renormalized
    public void DrawsFollowTheWarpedDistribution(double temperature, int? topK, double? topP, double[] expected)
    {
        var sampler = new NextTokenSampler(new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP, Seed = 7 });
        const int draws = 40_000;
        var counts = new int[Distribution.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Next(Distribution)]++;
        for (int v = 0; v < expected.Length; v++)
        {
            // Within 5 standard deviations of a binomial count; exactly zero where the warper removed the token.
            double sd = Math.Sqrt(draws * expected[v] * (1 - expected[v]));
            if (expected[v] == 0) Assert.Equal(0, counts[v]);
            else Assert.InRange(counts[v], draws * expected[v] - 5 * sd, draws * expected[v] + 5 * sd);
        }
    }

    [Fact]
    public void BadOptionsAreRefusedByName()
    {
        Assert.Contains("--temperature", Assert.Throws<FisherKernelsException>(() => new NextTokenSampler(new SamplingOptions { Temperature = -1 })).Message);
        Assert.Contains("--top-k", Assert.Throws<FisherKernelsException>(() => new NextTokenSampler(new SamplingOptions { TopK = 0 })).Message);
        Assert.Contains("--top-p", Assert.Throws<FisherKernelsException>(() => new NextTokenSampler(new SamplingOptions { TopP = 1.5 })).Message);
    }
}

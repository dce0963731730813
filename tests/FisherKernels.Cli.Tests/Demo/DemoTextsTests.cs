using FisherKernels.Cli.Demo;

namespace FisherKernels.Tests.Demo;

public class DemoTextsTests
{
    [Fact]
    public void ShuffledWindowsArePermutationsAndDeterministic()
    {
        var source = DemoTexts.RandomBytes(4, 32, seed: 1);
        var a = DemoTexts.Shuffled(source, 3, seed: 5);
        var b = DemoTexts.Shuffled(source, 3, seed: 5);
        Assert.Equal(new[] { 3, 32 }, a.Shape);
        Assert.Equal(a.Data, b.Data);
        Assert.NotEqual(source.Data.AsSpan(0, 96).ToArray(), a.Data);
        for (int i = 0; i < 3; i++)
        {
            var original = source.Data.AsSpan(i * 32, 32).ToArray();
            var shuffled = a.Data.AsSpan(i * 32, 32).ToArray();
            Array.Sort(original);
            Array.Sort(shuffled);
            Assert.Equal(original, shuffled);
        }
    }

    [Fact]
    public void RandomBytesAreBytes()
    {
        var tokens = DemoTexts.RandomBytes(8, 64, seed: 2);
        Assert.All(tokens.Data, t => Assert.InRange(t, 0, 255));
        Assert.True(tokens.Data.Distinct().Count() > 150);
    }
}

public class DemoTargetsTests
{
    [Fact]
    public void LastTargetsKeepOnlyTheLastScoredPositions()
    {
        int seq = 40;
        var tokens = new NdArray<long>(2, seq);
        for (int i = 0; i < tokens.Data.Length; i++) tokens.Data[i] = i % 200;
        var targets = FisherKernels.Onnx.Targets.NextToken(tokens);
        var last = DemoCommand.LastTargets(tokens, targets);
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < seq; t++)
            {
                bool scored = t >= seq - 1 - DemoCommand.ScoredPositions && t < seq - 1;
                Assert.Equal(scored ? tokens.Data[b * seq + t + 1] : FisherKernels.Onnx.Targets.Ignore, last.Data[b * seq + t]);
            }
        Assert.Equal(2 * DemoCommand.ScoredPositions, last.Data.Count(t => t != FisherKernels.Onnx.Targets.Ignore));
    }

    [Fact]
    public void MixedWindowSwitchesHalfway()
    {
        var english = DemoTexts.RandomBytes(2, 8, seed: 3);
        var german = DemoTexts.RandomBytes(2, 8, seed: 4);
        var (tokens, part) = DemoTexts.Mixed(english, german);
        Assert.Equal(english.Data[..4], tokens.Data[..4]);
        Assert.Equal(german.Data[..4], tokens.Data[4..]);
        Assert.Equal(new[] { 0, 0, 0, 1, 1, 1, 1, 1 }, part);  // position t predicts byte t+1
    }

    [Fact]
    public void UnknownOptionIsOneLineError()
    {
        var e = Assert.Throws<FisherKernelsException>(() => DemoCommand.Run(["demo", "--bogus"], TextWriter.Null));
        Assert.Contains("--bogus", e.Message);
        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
    }
}

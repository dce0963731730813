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

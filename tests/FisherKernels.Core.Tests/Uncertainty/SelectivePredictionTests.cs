using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>AURC and LM-Polygraph's PRR (<see cref="SelectivePrediction"/>) on hand-checkable cases and against a plain float64 reference.</summary>
public class SelectivePredictionTests
{
    /// <summary>
    /// Four items, uncertainties 0.1..0.4, loss in that order. Kept k = 1..4: risks r_k = mean loss of the first k.
    /// Perfect ranking [0,0,1,1]: r = 0, 0, 1/3, 1/2, AURC = 5/24, PRR 1. Reversed [1,1,0,0]: r = 1, 1, 2/3, 1/2, AURC = 19/24, and
    /// quality prefix means 0, 0, 1/3, 1/2 (PRA 5/24) against the oracle's 1, 1, 2/3, 1/2 (19/24) and random 1/2: PRR = −1.
    /// Mixed [0,1,0,1]: quality means 1, 1/2, 2/3, 1/2 (PRA 2/3), PRR = (2/3 − 1/2)/(19/24 − 1/2) = 4/7; AURC = (0 + 1/2 + 1/3 + 1/2)/4 = 1/3.
    /// Up to 50 %, the last two prefixes only (below).
    /// </summary>
    [Fact]
    public void HandCheckedCases()
    {
        double[] u = [0.4, 0.1, 0.3, 0.2]; // given out of order: sorted ascending it is 0.1, 0.2, 0.3, 0.4
        double[] InOrder(params double[] l) => [l[3], l[0], l[2], l[1]];
        Assert.Equal(5.0 / 24, SelectivePrediction.Aurc(u, InOrder(0, 0, 1, 1)), 12);
        Assert.Equal(1.0, SelectivePrediction.Prr(u, InOrder(0, 0, 1, 1)), 12);
        Assert.Equal(19.0 / 24, SelectivePrediction.Aurc(u, InOrder(1, 1, 0, 0)), 12);
        Assert.Equal(-1.0, SelectivePrediction.Prr(u, InOrder(1, 1, 0, 0)), 12);
        Assert.Equal(1.0 / 3, SelectivePrediction.Aurc(u, InOrder(0, 1, 0, 1)), 12);
        Assert.Equal(4.0 / 7, SelectivePrediction.Prr(u, InOrder(0, 1, 0, 1)), 12);
        // Up to 50 %: prefixes 3 and 4. Mixed: quality means 2/3, 1/2 against the oracle's 2/3, 1/2: the same area, PRR 1.
        Assert.Equal(1.0, SelectivePrediction.Prr(u, InOrder(0, 1, 0, 1), 0.5), 12);
        // Reversed: 1/3, 1/2 (5/12) against 2/3, 1/2 (7/12), random 1/2: (5/12 − 6/12)/(7/12 − 6/12) = −1.
        Assert.Equal(-1.0, SelectivePrediction.Prr(u, InOrder(1, 1, 0, 0), 0.5), 12);
    }

    /// <summary>Random scores and 0/1 or graded losses against a direct float64 transcription of the definitions (each prefix summed anew).</summary>
    [Theory]
    [InlineData(1, 50, true, 1.0)]
    [InlineData(2, 51, false, 1.0)]
    [InlineData(3, 101, true, 0.5)]
    [InlineData(4, 7, false, 0.5)]
    public void MatchesAFloat64Reference(int seed, int n, bool binary, double maxRejection)
    {
        var rng = new Random(seed);
        double[] u = Enumerable.Range(0, n).Select(_ => rng.NextDouble()).ToArray();
        double[] loss = u.Select(x => binary ? (rng.NextDouble() < x ? 1.0 : 0.0) : Math.Clamp(x + 0.3 * (rng.NextDouble() - 0.5), 0, 1)).ToArray();
        int[] order = Enumerable.Range(0, n).ToArray();
        Array.Sort(u.ToArray(), order);
        double PrefixMean(double[] values, int[] by, int k) => Enumerable.Range(0, k).Sum(i => values[by[i]]) / k;
        double aurc = Enumerable.Range(1, n).Sum(k => PrefixMean(loss, order, k)) / n;
        double[] quality = loss.Select(l => 1 - l).ToArray();
        int r = (int)(maxRejection * n);
        double Pra(int[] by) => Enumerable.Range(n - r + 1, r).Sum(k => PrefixMean(quality, by, k)) / r;
        int[] oracle = Enumerable.Range(0, n).OrderByDescending(i => quality[i]).ToArray();
        double random = quality.Average();
        double prr = (Pra(order) - random) / (Pra(oracle) - random);
        Assert.Equal(aurc, SelectivePrediction.Aurc(u, loss), 12);
        Assert.Equal(prr, SelectivePrediction.Prr(u, loss, maxRejection), 10);
        Assert.True(prr > 0, $"scores that track the loss should beat chance, PRR {prr}");
    }

    [Fact]
    public void BadInputIsOneClearError()
    {
        Assert.Contains("as many scores as losses", Assert.Throws<FisherKernelsException>(() => SelectivePrediction.Aurc([1, 2], [0])).Message);
        Assert.Contains("non-finite", Assert.Throws<FisherKernelsException>(() => SelectivePrediction.Prr([double.NaN], [0])).Message);
        Assert.Contains("(0, 1]", Assert.Throws<FisherKernelsException>(() => SelectivePrediction.Prr([1, 2], [0, 1], 0)).Message);
    }
}

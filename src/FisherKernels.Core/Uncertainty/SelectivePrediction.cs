namespace FisherKernels.Uncertainty;

/// <summary>
/// Selective prediction: how much an uncertainty score helps by rejecting the most uncertain predictions first. Items are
/// kept in ascending order of uncertainty (ties in their given order).
/// <list type="bullet">
/// <item><see cref="Aurc"/>: the area under the risk–coverage curve (Geifman et al.), the mean over k = 1..n of the mean loss of
/// the k least uncertain items; lower is better.</item>
/// <item><see cref="Prr"/>: the prediction rejection ratio as LM-Polygraph reports it (Malinin's PRR): with quality q = 1 − loss,
/// the prediction rejection area <c>PRA = (1/R) Σ_{k = n−R+1..n} mean q of the k least uncertain</c> over the first R = ⌊f·n⌋
/// rejections (f = max_rejection: 1 for the whole range, 0.5 for up to 50 %), and
/// <c>PRR = (PRA(score) − PRA(random)) / (PRA(oracle) − PRA(random))</c>, the oracle rejecting the lowest quality first and the
/// random rejection's PRA its expectation, the mean quality (LM-Polygraph averages random orders to estimate it). 1 is the
/// oracle, 0 no better than chance.</item>
/// </list>
/// </summary>
public static class SelectivePrediction
{
    /// <summary>The area under the risk–coverage curve of <paramref name="loss"/> ranked by <paramref name="uncertainty"/>.</summary>
    public static double Aurc(ReadOnlySpan<double> uncertainty, ReadOnlySpan<double> loss)
    {
        double[] sorted = Sorted(uncertainty, loss);
        double cumulative = 0, area = 0;
        for (int k = 0; k < sorted.Length; k++)
        {
            cumulative += sorted[k];
            area += cumulative / (k + 1);
        }
        return area / sorted.Length;
    }

    /// <summary>The prediction rejection ratio over the first <paramref name="maxRejection"/> of the items (0 &lt; f ≤ 1).</summary>
    public static double Prr(ReadOnlySpan<double> uncertainty, ReadOnlySpan<double> loss, double maxRejection = 1.0)
    {
        if (!(maxRejection > 0 && maxRejection <= 1)) throw FisherKernelsException.Argument($"the rejection range must be in (0, 1], got {maxRejection}");
        double[] quality = Sorted(uncertainty, loss);
        for (int i = 0; i < quality.Length; i++) quality[i] = 1 - quality[i];
        int rejections = (int)(maxRejection * quality.Length);
        if (rejections < 1) throw FisherKernelsException.Argument($"a rejection range of {maxRejection} of {quality.Length} items rejects none");
        double[] oracle = quality.OrderByDescending(q => q).ToArray();
        double random = quality.Average(), byScore = Area(quality, rejections), best = Area(oracle, rejections);
        return best == random ? double.NaN : (byScore - random) / (best - random);
    }

    /// <summary>PRA: the mean, over the last <paramref name="rejections"/> prefix lengths k, of the mean quality of the first k items.</summary>
    static double Area(double[] quality, int rejections)
    {
        int n = quality.Length;
        double cumulative = 0, sum = 0;
        for (int k = 1; k <= n; k++)
        {
            cumulative += quality[k - 1];
            if (k > n - rejections) sum += cumulative / k;
        }
        return sum / rejections;
    }

    /// <summary><paramref name="loss"/> in ascending order of <paramref name="uncertainty"/> (a stable sort).</summary>
    static double[] Sorted(ReadOnlySpan<double> uncertainty, ReadOnlySpan<double> loss)
    {
        if (uncertainty.Length != loss.Length || uncertainty.Length == 0)
            throw FisherKernelsException.Argument($"selective prediction needs as many scores as losses, at least one: got {uncertainty.Length} and {loss.Length}");
        for (int i = 0; i < uncertainty.Length; i++)
            if (!double.IsFinite(uncertainty[i]) || !double.IsFinite(loss[i]))
                throw FisherKernelsException.Argument($"selective prediction: item {i} has a non-finite score {uncertainty[i]} or loss {loss[i]}");
        double[] u = uncertainty.ToArray(), l = loss.ToArray();
        return Enumerable.Range(0, u.Length).OrderBy(i => u[i]).Select(i => l[i]).ToArray();
    }
}

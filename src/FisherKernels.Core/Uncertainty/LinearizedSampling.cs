namespace FisherKernels.Uncertainty;

/// <summary>
/// Linearized sampling (SPEC §4 posterior, issue 5 <c>--samples k</c>): k parameter perturbations δθ_s ~ N(0, Σ)
/// (<see cref="LayerPosterior.SamplePerturbation"/>) each propagated by one JVP give logits <c>z + J·δθ_s</c>. From those,
/// per position: the variance of the target logit and an interval for <c>p_t</c>.
/// </summary>
public static class LinearizedSampling
{
    /// <param name="logits">z at θ, <c>[rows × vocab]</c>.</param>
    /// <param name="jvps"><c>J·δθ_s</c> for each sample, <c>[samples × rows × vocab]</c>.</param>
    /// <param name="targets">the target per row; -100 rows get NaN.</param>
    /// <param name="coverage">the central probability of the interval, e.g. 0.9 for the 5%–95% quantiles of p_t over the samples.</param>
    /// <param name="logitVariance"><c>E[(J·δθ)_y²]</c> (δθ has mean zero, so this is the variance, unbiased).</param>
    /// <param name="low">the lower quantile of <c>softmax(z + J·δθ_s)_y</c> (linear interpolation between order statistics, as numpy).</param>
    /// <param name="high">the upper quantile.</param>
    public static void Summarize(ReadOnlySpan<float> logits, ReadOnlySpan<float> jvps, int samples, int rows, int vocab,
                                 ReadOnlySpan<long> targets, double coverage, Span<double> logitVariance, Span<double> low, Span<double> high)
    {
        if (samples < 1) throw FisherKernelsException.Argument($"--samples must be at least 1, got {samples}");
        if (!(coverage > 0 && coverage < 1)) throw FisherKernelsException.Argument($"the interval coverage must be in (0, 1), got {coverage}");
        long size = (long)rows * vocab;
        if (logits.Length != size || jvps.Length != samples * size || targets.Length != rows || logitVariance.Length != rows || low.Length != rows || high.Length != rows)
            throw FisherKernelsException.Argument($"linearized sampling: logits [{rows} × {vocab}], {samples} JVPs of that shape, {rows} targets and outputs needed");
        var p = new double[samples];
        for (int r = 0; r < rows; r++)
        {
            long y = targets[r];
            if (y == -100) { logitVariance[r] = low[r] = high[r] = double.NaN; continue; }
            if (y < 0 || y >= vocab) throw FisherKernelsException.Argument($"linearized sampling: target {y} at row {r} is outside the vocabulary of {vocab}");
            double squares = 0;
            for (int s = 0; s < samples; s++)
            {
                ReadOnlySpan<float> z = logits.Slice(r * vocab, vocab), dz = jvps.Slice((int)(s * size + (long)r * vocab), vocab);
                squares += (double)dz[(int)y] * dz[(int)y];
                double max = double.NegativeInfinity, total = 0;
                for (int v = 0; v < vocab; v++) max = Math.Max(max, (double)z[v] + dz[v]);
                for (int v = 0; v < vocab; v++) total += Math.Exp(z[v] + dz[v] - max);
                p[s] = Math.Exp(z[(int)y] + dz[(int)y] - max) / total;
            }
            logitVariance[r] = squares / samples;
            Array.Sort(p);
            low[r] = Quantile(p, (1 - coverage) / 2);
            high[r] = Quantile(p, (1 + coverage) / 2);
        }
    }

    /// <summary>numpy's default ("linear") quantile of sorted values.</summary>
    public static double Quantile(double[] sorted, double q)
    {
        double position = q * (sorted.Length - 1);
        int below = (int)Math.Floor(position);
        int above = Math.Min(below + 1, sorted.Length - 1);
        return sorted[below] + (position - below) * (sorted[above] - sorted[below]);
    }
}

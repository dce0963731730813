namespace FisherKernels.Onnx.Generation;

/// <summary>How the next token is drawn (SPEC §4 generation): temperature (0 = greedy), top-k, top-p, seed.</summary>
public sealed record SamplingOptions
{
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep only the k most probable tokens (null: all).</summary>
    public int? TopK { get; init; }
    /// <summary>Keep the fewest most probable tokens whose probabilities reach p (null or 1: all).</summary>
    public double? TopP { get; init; }
    public long Seed { get; init; }

    public void Validate()
    {
        if (!(Temperature >= 0) || !double.IsFinite(Temperature)) throw FisherKernelsException.Argument($"--temperature must be a number of at least 0, got {Temperature}");
        if (TopK is < 1) throw FisherKernelsException.Argument($"--top-k must be at least 1, got {TopK}");
        if (TopP is { } p && !(p > 0 && p <= 1)) throw FisherKernelsException.Argument($"--top-p must be in (0, 1], got {p}");
    }
}

/// <summary>
/// Draws next tokens from a distribution over the vocabulary: greedy (the argmax, lowest id on ties) at temperature 0, else
/// the distribution sharpened by the temperature (p^(1/T), renormalized: softmax(z/T) for a model's own softmax), cut to
/// top-k then top-p (as Hugging Face's warpers order them), and drawn with a generator seeded once, so a seed gives
/// the same tokens every run.
/// </summary>
public sealed class NextTokenSampler
{
    private readonly SamplingOptions options;
    private readonly Random random;

    public NextTokenSampler(SamplingOptions options)
    {
        options.Validate();
        this.options = options;
        random = new Random(unchecked((int)(options.Seed ^ (options.Seed >> 32))));
    }

    /// <summary>The next token given the probabilities <paramref name="probabilities"/> (summing to 1) of the vocabulary.</summary>
    public int Next(ReadOnlySpan<double> probabilities)
    {
        int vocab = probabilities.Length;
        if (options.Temperature == 0) return ArgMax(probabilities);
        var weights = new double[vocab];
        double inverse = 1.0 / options.Temperature, max = 0;
        // p^(1/T) in logs, relative to the largest, so a small temperature neither overflows nor loses every token.
        for (int v = 0; v < vocab; v++) max = Math.Max(max, probabilities[v]);
        for (int v = 0; v < vocab; v++) weights[v] = probabilities[v] > 0 ? Math.Exp(inverse * (Math.Log(probabilities[v]) - Math.Log(max))) : 0;
        var order = Enumerable.Range(0, vocab).OrderByDescending(v => weights[v]).ThenBy(v => v).ToArray();
        int keep = Math.Min(options.TopK ?? vocab, vocab);
        double total = 0;
        for (int i = 0; i < keep; i++) total += weights[order[i]];
        if (options.TopP is { } topP and < 1)
        {
            double cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += weights[order[i]] / total;
                if (cumulative >= topP) { keep = i + 1; break; }
            }
            total = 0;
            for (int i = 0; i < keep; i++) total += weights[order[i]];
        }
        double u = random.NextDouble() * total, sum = 0;
        for (int i = 0; i < keep; i++)
        {
            sum += weights[order[i]];
            if (u < sum) return order[i];
        }
        return order[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<double> values)
    {
        int best = 0;
        for (int v = 1; v < values.Length; v++)
            if (values[v] > values[best]) best = v;
        return best;
    }

    /// <summary>softmax(<paramref name="logits"/>) in float64.</summary>
    public static double[] Softmax(ReadOnlySpan<float> logits)
    {
        var p = new double[logits.Length];
        double max = double.NegativeInfinity, sum = 0;
        foreach (float z in logits) max = Math.Max(max, z);
        for (int v = 0; v < logits.Length; v++) sum += p[v] = Math.Exp(logits[v] - max);
        for (int v = 0; v < logits.Length; v++) p[v] /= sum;
        return p;
    }
}

using System.Diagnostics;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Generation;

/// <summary>What <c>generate</c> does (SPEC §4, §6).</summary>
public sealed record GenerateOptions
{
    public int MaxNew { get; init; } = 64;
    public SamplingOptions Sampling { get; init; } = new();
    /// <summary>The curvature of the K-FAC epistemic score; without one the score is isotropic (‖∇θ p‖², Σ = I).</summary>
    public string? CurvaturePath { get; init; }
    /// <summary>τ, rank and memory budget of the K-FAC posterior.</summary>
    public PosteriorOptions Posterior { get; init; } = new();
    /// <summary>Draws of the linearized posterior (K-FAC only): the next-token distribution is their mean softmax.</summary>
    public int? PosteriorSamples { get; init; }
    /// <summary>Stop (reason <c>uncertain</c>) at the first token whose epistemic score of log p (epistemic / p²) exceeds this.</summary>
    public double? Abstain { get; init; }
    /// <summary>The end-of-sequence token: generation stops after it (reason <c>eos</c>).</summary>
    public long? EndOfSequence { get; init; }
    /// <summary>The model's context: a prompt longer than it is an error; a longer text keeps its last Context tokens.</summary>
    public int? Context { get; init; }

    public void Validate()
    {
        Sampling.Validate();
        if (MaxNew < 1) throw FisherKernelsException.Argument($"--max-new must be at least 1, got {MaxNew}");
        if (PosteriorSamples is < 1) throw FisherKernelsException.Argument($"--posterior-samples must be at least 1, got {PosteriorSamples}");
        if (PosteriorSamples is not null && CurvaturePath is null) throw FisherKernelsException.Argument("generate: --posterior-samples needs --curvature");
        if (Abstain is { } u && !(u >= 0)) throw FisherKernelsException.Argument($"--abstain must be a number of at least 0, got {u}");
    }
}

/// <summary>One generated token (SPEC §6 generate JSON): its p under the model (temperature 1), aleatoric, epistemic, interval.</summary>
public sealed record GeneratedToken(int Position, long Token, double P, double Aleatoric, double Epistemic, double? PLow = null, double? PHigh = null);

/// <summary>
/// The generated tokens, why generation stopped, and the time per token: sampling (forward and draws) and scoring.
/// <paramref name="Abstained"/>: with stop reason <c>uncertain</c>, the drawn token whose epistemic score of log p exceeded
/// <c>--abstain</c> (not generated, so not in <paramref name="Tokens"/>).
/// </summary>
public sealed record Generation(IReadOnlyList<GeneratedToken> Tokens, string StopReason, double SampleSecondsPerToken, double ScoreSecondsPerToken,
                                GeneratedToken? Abstained = null)
{
    /// <summary>The epistemic score of log p that abstention compares with U: epistemic / p² (the delta method).</summary>
    public static double EpistemicOfLogP(GeneratedToken token) => token.Epistemic / Math.Max(token.P * token.P, 1e-300);
}

/// <summary>
/// Generates tokens one at a time after a prompt (SPEC §4): each step runs the model over the text so far (the last
/// <see cref="GenerateOptions.Context"/> tokens), takes the next-token distribution at the last position — the model's
/// softmax, or with posterior samples the mean softmax of the linearized draws that <c>score --samples</c> uses — draws the
/// token (<see cref="NextTokenSampler"/>), then scores it as <c>score</c> scores a target: p, aleatoric, epistemic.
/// </summary>
public sealed class GenerateService(LanguageModel lm, OpContext context, TextWriter? log = null)
{
    readonly ScoreService scorer = new(lm, context, log);


    public Generation Generate(IReadOnlyList<long> prompt, GenerateOptions options, IProgress<GeneratedToken>? progress = null, CancellationToken cancel = default)
    {
        options.Validate();
        if (prompt.Count == 0) throw FisherKernelsException.Argument("generate: the prompt has no tokens");
        if (options.Context is int n && prompt.Count > n)
            throw FisherKernelsException.Argument($"generate: the prompt has {prompt.Count} tokens, more than the model's context of {n} (--context)");
        var scoreOptions = new ScoreOptions
        {
            Method = options.CurvaturePath is null ? ScoreMethod.Isotropic : ScoreMethod.Kfac,
            CurvaturePath = options.CurvaturePath,
            Posterior = options.Posterior,
            LastLayerVariance = false,
        };
        scoreOptions.Validate();
        KfacPosterior? posterior = options.CurvaturePath is null ? null : scorer.Posterior(scoreOptions);
        var sampler = new NextTokenSampler(options.Sampling);
        var text = new List<long>(prompt);
        var generated = new List<GeneratedToken>();
        var sampleClock = new Stopwatch();
        var scoreClock = new Stopwatch();
        string reason = "length";
        GeneratedToken? abstained = null;
        for (int step = 0; step < options.MaxNew; step++)
        {
            cancel.ThrowIfCancellationRequested();
            sampleClock.Start();
            int from = options.Context is int c ? Math.Max(0, text.Count - c) : 0;
            var window = new NdArray<long>(1, text.Count - from);
            for (int i = from; i < text.Count; i++) window.Data[i - from] = text[i];
            var logits = lm.Forward(context, window);
            int vocab = logits.Shape[2], last = window.Shape[1] - 1;
            var own = NextTokenSampler.Softmax(logits.Data.AsSpan(last * vocab, vocab));
            double[]? drawn = null;
            double[] distribution = own;
            if (options.PosteriorSamples is int k)
            {
                drawn = SampledProbabilities(posterior!, window, logits, k, options.Sampling.Seed);
                distribution = Predictive(drawn, k, vocab);
            }
            int token = sampler.Next(distribution);
            sampleClock.Stop();

            scoreClock.Start();
            double p = own[token];
            var targets = new NdArray<long>(1, window.Shape[1]);
            Array.Fill(targets.Data, Targets.Ignore);
            targets.Data[last] = token;
            var report = scorer.Score(window, targets, scoreOptions);
            double epistemic = report.Sequences[0].Tokens[0].Epistemic;
            double? low = null, high = null;
            if (drawn is not null)
            {
                var ps = Enumerable.Range(0, options.PosteriorSamples!.Value).Select(s => drawn[s * vocab + token]).Order().ToArray();
                (low, high) = (LinearizedSampling.Quantile(ps, 0.05), LinearizedSampling.Quantile(ps, 0.95));
            }
            scoreClock.Stop();

            var result = new GeneratedToken(text.Count, token, p, p * (1 - p), epistemic, low, high);
            if (options.Abstain is { } u && Generation.EpistemicOfLogP(result) > u)
            {
                reason = "uncertain";
                abstained = result;
                break;
            }
            generated.Add(result);
            progress?.Report(result);
            text.Add(token);
            if (options.EndOfSequence == token)
            {
                reason = "eos";
                break;
            }
        }
        int count = Math.Max(1, generated.Count);
        return new Generation(generated, reason, sampleClock.Elapsed.TotalSeconds / count, scoreClock.Elapsed.TotalSeconds / count, abstained);
    }

    /// <summary>softmax(z + J·δθ_s) at the last position for each draw s (rows of <paramref name="vocab"/>), the draws of <c>score --samples</c>.</summary>
    double[] SampledProbabilities(KfacPosterior posterior, NdArray<long> window, NdArray<float> logits, int samples, long seed)
    {
        int seq = window.Shape[1], vocab = logits.Shape[2];
        float[] jvps = KfacScoring.SampledJvps(lm, context, posterior, window, samples, seed);
        var result = new double[samples * vocab];
        var z = new float[vocab];
        for (int s = 0; s < samples; s++)
        {
            for (int v = 0; v < vocab; v++) z[v] = logits.Data[(seq - 1) * vocab + v] + jvps[((long)s * seq + seq - 1) * vocab + v];
            NextTokenSampler.Softmax(z).CopyTo(result, s * vocab);
        }
        return result;
    }

    /// <summary>The linearized posterior predictive: the mean of the draws' softmax.</summary>
    public static double[] Predictive(double[] drawn, int samples, int vocab)
    {
        var mean = new double[vocab];
        for (int s = 0; s < samples; s++)
            for (int v = 0; v < vocab; v++) mean[v] += drawn[s * vocab + v] / samples;
        return mean;
    }
}

using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Jobs;

/// <summary>The epistemic estimator of a score (SPEC §4, <c>--method</c>).</summary>
public enum ScoreMethod
{
    /// <summary><c>‖∇θ p‖²</c>, Σ = I: no curvature needed.</summary>
    Isotropic,
    /// <summary><c>∇θ pᵀ Σ ∇θ p</c> under the K-FAC Laplace posterior of a curvature file (EK-FAC when the file has E: reported as <c>ekfac</c>).</summary>
    Kfac,
}

/// <summary>The names of <see cref="ScoreMethod"/> as the command line and the score files write them.</summary>
public static class ScoreMethods
{
    public static string Name(this ScoreMethod method) => method switch
    {
        ScoreMethod.Isotropic => "isotropic",
        ScoreMethod.Kfac => "kfac",
        _ => throw new ArgumentOutOfRangeException(nameof(method), method, "not a score method"),
    };

    /// <summary>The method named <paramref name="name"/>, or null.</summary>
    public static ScoreMethod? TryParse(string name) =>
        Enum.GetValues<ScoreMethod>().Select(m => (ScoreMethod?)m).FirstOrDefault(m => m!.Value.Name() == name);
}

/// <summary>How to score (SPEC §4, the <c>score</c> verb of §6).</summary>
public sealed record ScoreOptions
{
    public ScoreMethod Method { get; init; } = ScoreMethod.Isotropic;

    /// <summary>The curvature file of <see cref="ScoreMethod.Kfac"/>.</summary>
    public string? CurvaturePath { get; init; }

    /// <summary>τ, rank and memory budget of the K-FAC posterior (τ is also reported for the isotropic method).</summary>
    public PosteriorOptions Posterior { get; init; } = new();

    /// <summary>The parameter set of the isotropic method (SPEC §2): null for every layer's weight and bias, <c>all</c>, or a file of names.</summary>
    public string? Parameters { get; init; }

    /// <summary>Linearized samples per token (<c>--samples K</c>, K-FAC only), and their seed.</summary>
    public int? Samples { get; init; }
    public long Seed { get; init; }

    /// <summary>Whether K-FAC scores also get the output layer's closed-form target-logit variance (per token).</summary>
    public bool LastLayerVariance { get; init; } = true;

    /// <summary>
    /// The layers scored (SPEC §2 <c>--layers</c>, <c>--exclude-layers</c>, <c>--last-layer</c>): under K-FAC none (the curvature's
    /// own selection is used) or the one the curvature records; under Σ = I the parameters are these layers' weights and biases.
    /// </summary>
    public LayerSelection Selection { get; init; } = LayerSelection.All;

    /// <summary>Per-token, per-sequence or both epistemic scores (<c>--level</c>).</summary>
    public ScoreLevel Level { get; init; } = ScoreLevel.Both;

    /// <summary>An error naming the option that does not fit the method, or nothing.</summary>
    public void Validate()
    {
        Posterior.Validate();
        if (Method == ScoreMethod.Kfac && CurvaturePath is null) throw FisherKernelsException.Argument("score: --method kfac needs --curvature");
        if (Samples is not null && Method != ScoreMethod.Kfac)
            throw FisherKernelsException.Argument($"score: --samples draws from the K-FAC posterior; it needs --method kfac, not {Method.Name()}");
        if (Samples is < 1) throw FisherKernelsException.Argument($"--samples must be at least 1, got {Samples}");
        if (Samples is not null && !Level.HasFlag(ScoreLevel.Token))
            throw FisherKernelsException.Argument("score: --samples gives per-token intervals; it needs --level token or both");
        if (Parameters is not null && Method == ScoreMethod.Kfac)
            throw FisherKernelsException.Argument("score: --params applies to --method isotropic; K-FAC scores the weight and bias of every layer of the curvature");
        if (Parameters is not null && !Selection.IsAll)
            throw FisherKernelsException.Argument($"score: --params names the parameters itself; give it or {Selection.Describe()}, not both");
    }
}

/// <summary>
/// Per-token and per-sequence scores of one model (SPEC §4): p, aleatoric and epistemic, with the K-FAC extras (the
/// last layer's logit variance, linearized sampling). The K-FAC posterior of the last curvature file is kept for the
/// next call (<see cref="PosteriorCache"/>), so a caller that scores many batches (the C ABI) decomposes it once.
/// Not thread-safe: one call at a time.
/// </summary>
public sealed class ScoreService(LanguageModel lm, OpContext context, TextWriter? log = null)
{
    readonly PosteriorCache posteriors = new(lm, context.Backend, log ?? TextWriter.Null);

    public LanguageModel Model => lm;

    /// <summary>Scores every sequence of <paramref name="tokens"/> against <paramref name="targets"/> (null: the next token).</summary>
    public ScoreReport Score(NdArray tokens, NdArray? targets, ScoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        KfacPosterior? posterior = options.Method == ScoreMethod.Kfac ? Posterior(options) : null;
        IReadOnlyList<string> parameters = posterior is null ? Parameters(lm, options.Parameters, options.Selection) : LayerDiscovery.DefaultParameters(KfacScoring.Layers(lm, posterior));
        EpistemicMetric metric = posterior is null ? EpistemicMetric.SquaredGradientNorm : KfacScoring.Epistemic(lm, posterior);
        var report = PositionScorer.Score(lm, context, tokens, targets, parameters, posterior?.MethodName ?? options.Method.Name(), posterior?.PriorPrecision ?? options.Posterior.PriorPrecision, metric, options.Level);
        if (posterior is not null && options.LastLayerVariance && options.Level.HasFlag(ScoreLevel.Token)) report = LastLayerVariance.Add(report, lm, context, posterior, tokens, log ?? TextWriter.Null);
        if (options.Samples is { } k) report = KfacScoring.AddSampling(report, lm, context, posterior!, tokens, k, options.Seed);
        return report;
    }

    /// <summary>The K-FAC posterior of <see cref="ScoreOptions.CurvaturePath"/>, decomposed once per file and options.</summary>
    public KfacPosterior Posterior(ScoreOptions options) =>
        posteriors.Get(options.CurvaturePath ?? throw FisherKernelsException.Argument("score: --method kfac needs --curvature"), options.Posterior, options.Selection);

    /// <summary>
    /// The epistemic score of a sequence run in several windows (SPEC §1): of p̄, the mean p over the targeted positions of
    /// every window, whose gradient is the sum over the windows of each window's share, ∇p̄ = Σ_w Σ_{t∈w} ∇p_t / T. The
    /// parameter gradients are summed explicitly (a quadratic form does not split over windows) and then scored: ‖∇p̄‖²
    /// (isotropic) or per layer vec([∇W | ∇b])ᵀ Σ vec(…) (K-FAC).
    /// </summary>
    public double SequenceEpistemic(IReadOnlyList<(NdArray<long> Tokens, long[] Targets)> windows, ScoreOptions options)
    {
        options.Validate();
        KfacPosterior? posterior = options.Method == ScoreMethod.Kfac ? Posterior(options) : null;
        IReadOnlyList<string> parameters = posterior is null ? Parameters(lm, options.Parameters, options.Selection) : LayerDiscovery.DefaultParameters(KfacScoring.Layers(lm, posterior));
        int total = windows.Sum(w => w.Targets.Count(y => y != Targets.Ignore));
        if (total == 0) return double.NaN;
        var sum = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var (tokens, targets) in windows)
        {
            if (targets.All(y => y == Targets.Ignore)) continue;
            var pass = ReversePass.Prepare(lm, context, tokens, parameters);
            var logits = pass.Logits;
            int vocab = logits.Shape[2];
            pass.Clear();
            var seed = pass.Seed(lm.LogitsOutput);
            var probabilities = new float[vocab];
            for (int t = 0; t < targets.Length; t++)
            {
                long y = targets[t];
                if (y == Targets.Ignore) continue;
                Derivatives.Softmax(logits.Data.AsSpan(t * vocab, vocab), probabilities);
                // ∂p_t/∂z_t = p_t (onehot(y) − softmax(z_t)), each position weighted 1/T.
                float p = probabilities[y], scale = 1f / total;
                for (int k = 0; k < vocab; k++) seed.Data[t * vocab + k] = -scale * p * probabilities[k];
                seed.Data[t * vocab + y] += scale * p;
            }
            pass.Run();
            foreach (string name in parameters)
            {
                if (!pass.HasGradient(name)) continue;
                var g = pass.Gradient(name);
                if (!sum.TryGetValue(name, out var acc)) sum[name] = acc = new float[g.Length];
                System.Numerics.Tensors.TensorPrimitives.Add(acc, g, acc);
            }
        }
        if (posterior is null) return sum.Values.Sum(g => (double)System.Numerics.Tensors.TensorPrimitives.Dot(g, g));
        double epistemic = 0;
        foreach (Layer layer in KfacScoring.Layers(lm, posterior))
        {
            int a = layer.In + (layer.Bias is null ? 0 : 1);
            var x = new float[(long)layer.Out * a];
            if (sum.TryGetValue(layer.Id, out var w))
                for (int o = 0; o < layer.Out; o++)
                    for (int k = 0; k < layer.In; k++) x[o * a + k] = w[layer.StoredOutIn ? o * layer.In + k : k * layer.Out + o];
            if (layer.Bias is not null && sum.TryGetValue(layer.Bias, out var b))
                for (int o = 0; o < layer.Out; o++) x[o * a + layer.In] = b[o];
            var q = new float[1];
            posterior[layer.Id].Quadratic(x, 1, q);
            epistemic += q[0];
        }
        return epistemic;
    }

    /// <summary>SPEC §2: the weights and biases of the layers <paramref name="selection"/> keeps (every layer by default), <c>all</c>, or the names in a file.</summary>
    public static IReadOnlyList<string> Parameters(LanguageModel lm, string? spec, LayerSelection? selection = null) => spec switch
    {
        null => LayerDiscovery.DefaultParameters(KfacScoring.SelectedLayers(lm, selection ?? LayerSelection.All)) is { Count: > 0 } layers ? layers
            : throw FisherKernelsException.Argument($"model '{lm.Model.Graph.Source}' has no layers (MatMul/Gemm with an initializer weight); pass --params"),
        "all" => LayerDiscovery.AllParameters(lm.Model.Graph),
        _ => LayerDiscovery.ReadParameterFile(lm.Model.Graph, spec),
    };
}

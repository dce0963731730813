using System.Security.Cryptography;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>The K-FAC Laplace method of <see cref="PositionScorer"/>: a curvature file checked against the model, its posterior, the epistemic score.</summary>
public static class KfacScoring
{
    /// <summary>
    /// The curvature for <paramref name="lm"/> (checked against its hash and layers: the error says which differs) and its
    /// posterior; each layer's eigenvalue range goes to <paramref name="log"/>.
    /// </summary>
    public static (KfacCurvature Curvature, KfacPosterior Posterior) LoadPosterior(LanguageModel lm, string curvaturePath, PosteriorOptions options,
                                                                                  IComputeBackend backend, TextWriter log, LayerSelection? requested = null)
    {
        KfacCurvature curvature = LoadCurvature(lm, curvaturePath, requested);
        return (curvature, Posterior(curvature, options.WithStored(curvature.PriorPrecision), backend, log));
    }

    /// <summary>
    /// The curvature file for <paramref name="lm"/>, checked against its hash and layers: those its recorded selection keeps
    /// (SPEC §2; every layer when it records none). <paramref name="requested"/> is the selection the command was given:
    /// none (<see cref="LayerSelection.All"/> or null) takes the curvature's, another is refused in one line.
    /// </summary>
    public static KfacCurvature LoadCurvature(LanguageModel lm, string curvaturePath, LayerSelection? requested = null) =>
        KfacCurvature.LoadFor(curvaturePath, Sha256(lm.Model.Graph.Source), Shapes(lm.Model.Layers), curvature =>
        {
            LayerSelection stored = StoredSelection(curvature);
            (requested ?? LayerSelection.All).EnsureSameAs(stored, $"curvature '{curvaturePath}'");
            return Shapes(SelectedLayers(lm, stored));
        });

    /// <summary>The selection <paramref name="curvature"/> records (metadata <c>layers</c>), or every layer.</summary>
    public static LayerSelection StoredSelection(KfacCurvature curvature) =>
        curvature.LayerSelection is null ? LayerSelection.All : LayerSelection.FromMetadata(curvature.LayerSelection, curvature.Source ?? "curvature");

    /// <summary>The layers <paramref name="selection"/> keeps (SPEC §2), the output layer found only when it is asked for.</summary>
    public static IReadOnlyList<Layer> SelectedLayers(LanguageModel lm, LayerSelection selection)
    {
        if (selection.IsAll) return lm.Model.Layers;
        string reason = "";
        string? output = selection.LastLayer ? LastLayerVariance.OutputLayer(lm, out reason)?.Layer.Id : null;
        return selection.Apply(lm.Model.Layers, output, reason);
    }

    /// <summary>The model's layers <paramref name="posterior"/> covers, in model order: the epistemic score sums over these alone.</summary>
    public static IReadOnlyList<Layer> Layers(LanguageModel lm, KfacPosterior posterior) => lm.Model.Layers.Where(l => posterior.Contains(l.Id)).ToList();

    /// <summary>The posterior of <paramref name="curvature"/> under <paramref name="options"/> as given; each layer's eigenvalue range goes to <paramref name="log"/>.</summary>
    public static KfacPosterior Posterior(KfacCurvature curvature, PosteriorOptions options, IComputeBackend backend, TextWriter log)
    {
        KfacPosterior posterior = PosteriorCacheFile.LoadOrBuild(curvature, backend, options, log);
        foreach (string line in posterior.Describe()) log.WriteLine(line);
        return posterior;
    }

    /// <summary>The K-FAC epistemic score (SPEC §4) of <paramref name="posterior"/>, made for <paramref name="lm"/>'s layers.</summary>
    public static EpistemicMetric Epistemic(LanguageModel lm, KfacPosterior posterior)
    {
        var ids = lm.Model.Layers.Select(l => l.Id).ToHashSet(StringComparer.Ordinal);
        if (posterior.Layers.FirstOrDefault(l => !ids.Contains(l.Layer)) is { } stray)
            throw FisherKernelsException.Argument($"the posterior has layer '{stray.Layer}', which model '{lm.Model.Graph.Source}' does not have");
        return EpistemicMetric.Kfac(posterior);
    }

    /// <summary>
    /// Σ over the posterior's layers of <c>vec(X)ᵀ Σ vec(X)</c> from a backward pass that computed their weight and bias gradients,
    /// X = [∇W | ∇b] as <c>[out × in(+1)]</c> whatever the weight's storage.
    /// </summary>
    public static double GradientQuadratic(LanguageModel lm, KfacPosterior posterior, Backward backward) =>
        Layers(lm, posterior).Sum(layer => LayerGradientQuadratic(layer, posterior[layer.Id], backward, new float[(long)layer.Out * (layer.In + (layer.Bias is null ? 0 : 1))]));

    /// <summary>One layer's <c>vec(X)ᵀ Σ vec(X)</c> of <see cref="GradientQuadratic"/>, X laid out in <paramref name="x"/>.</summary>
    internal static double LayerGradientQuadratic(Layer layer, LayerPosterior posterior, Backward backward, float[] x, int cotangent = 0)
    {
        LayerLayout.ToOutIn(layer, backward.Gradient(layer.Id, cotangent).Data, layer.Bias is null ? default : backward.Gradient(layer.Bias, cotangent).Data, x);
        var result = new float[1];
        posterior.Quadratic(x, 1, result);
        return result[0];
    }

    /// <summary>
    /// Linearized sampling (<c>score --method kfac --samples K --seed S</c>): K perturbations <c>δθ_s ~ N(0, Σ)</c>, drawn per layer
    /// in its Kronecker eigenbasis as <c>[out × in(+1)]</c> and laid into the weight's stored orientation and the bias, each
    /// propagated through the whole batch by one JVP. Every token of <paramref name="report"/> gets the variance of its target
    /// logit and the 5th/95th percentiles of <c>softmax(z + J·δθ_s)[y]</c> over the samples.
    /// </summary>
    public static ScoreReport AddSampling(ScoreReport report, LanguageModel lm, OpContext context, KfacPosterior posterior,
                                          NdArray tokens, int samples, long seed)
    {
        if (samples < 1) throw FisherKernelsException.Argument($"--samples must be at least 1, got {samples}");
        var logits = lm.Forward(context, tokens);
        int sequences = tokens.Shape[0], seq = tokens.Shape[1], vocab = logits.Shape[2], rows = sequences * seq;
        // Memory: the K JVPs of the whole batch are kept for the quantiles, K × rows × vocab floats.
        float[] jvps = SampledJvps(lm, context, posterior, tokens, samples, seed);

        var targets = new long[rows];
        Array.Fill(targets, Targets.Ignore);
        foreach (SequenceScore sequence in report.Sequences)
            foreach (TokenScore token in sequence.Tokens) targets[sequence.Index * seq + token.Position] = token.Target;
        var (variance, low, high) = (new double[rows], new double[rows], new double[rows]);
        LinearizedSampling.Summarize(logits.Data, jvps, samples, rows, vocab, targets, 0.9, variance, low, high);
        return report with
        {
            Sequences = report.Sequences.Select(sequence => sequence with
            {
                Tokens = sequence.Tokens.Select(token =>
                {
                    int r = sequence.Index * seq + token.Position;
                    return token with { Sampled = new SampledScore(variance[r], low[r], high[r]) };
                }).ToArray(),
            }).ToArray(),
        };
    }

    /// <summary>
    /// The draws of linearized sampling: for s = 0..K−1, δθ_s from each layer's stream for (<paramref name="seed"/>, s), laid
    /// into the weight's stored orientation and the bias, and J·δθ_s over <paramref name="tokens"/>: K × batch × seq × vocab
    /// floats, one draw after the other (<c>score --samples</c> and <c>generate --posterior-samples</c> take the same draws).
    /// </summary>
    public static float[] SampledJvps(LanguageModel lm, OpContext context, KfacPosterior posterior, NdArray tokens, int samples, long seed)
    {
        IReadOnlyList<Layer> layers = Layers(lm, posterior); // the other layers are held fixed: no direction
        var direction = new Dictionary<string, NdArray<float>>(StringComparer.Ordinal);
        foreach (Layer layer in layers)
        {
            direction[layer.Id] = new NdArray<float>((int[])lm.Model.Graph.Initializers[layer.Id].Shape.Clone());
            if (layer.Bias is not null) direction[layer.Bias] = new NdArray<float>([layer.Out]);
        }
        var deltas = layers.Select(l => new float[(long)l.Out * (l.In + (l.Bias is null ? 0 : 1))]).ToArray();
        float[]? jvps = null;
        for (int s = 0; s < samples; s++)
        {
            for (int i = 0; i < layers.Count; i++)
            {
                Layer layer = layers[i];
                float[] delta = deltas[i];
                posterior[layer.Id].SamplePerturbation(seed, s, delta);
                LayerLayout.FromOutIn(layer, delta, direction[layer.Id].Data, layer.Bias is null ? default : direction[layer.Bias].Data);
            }
            var jvp = Derivatives.Jvp(lm, context, tokens, direction, "linearized sampling").Data;
            jvps ??= new float[(long)samples * jvp.Length];
            jvp.CopyTo(jvps, (long)s * jvp.Length);
        }
        return jvps!;
    }

    public static LayerShape[] Shapes(IReadOnlyList<Layer> layers) => layers.Select(l => new LayerShape(l.Id, l.In, l.Out, l.Bias is not null)).ToArray();

    /// <summary>Hex SHA-256 of a file (the model hash of SPEC §5).</summary>
    public static string Sha256(string path)
    {
        using FileStream stream = RawArrays.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}

using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Jobs;

/// <summary>
/// The natural gradient (SPEC §4 <c>natgrad</c>): <c>d = (C + τI)⁻¹ ∇θ L</c> per layer of the curvature, L the summed
/// negative log-likelihood of the targets, solved in the Kronecker eigenbasis (<see cref="LayerPosterior.Solve"/>); the
/// result is one tensor per layer weight and bias, in each initializer's own layout, as <c>jvp</c> and <c>apply</c> read it.
/// </summary>
public sealed class NatgradService(LanguageModel lm, OpContext context, TextWriter? log = null)
{
    /// <summary>Sequences per backward pass; the gradient is summed over them.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>The natural-gradient direction of <paramref name="tokens"/> (<c>[batch, seq]</c>) against <paramref name="targets"/> (null: the next token).</summary>
    public Dictionary<string, NdArray<float>> Direction(NdArray<long> tokens, NdArray<long>? targets, string curvaturePath, PosteriorOptions options,
                                                        LayerSelection? selection = null)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        return Direction([(tokens, targets)], curvaturePath, options, selection);
    }

    /// <summary>
    /// The natural-gradient direction of several token arrays (each <c>[rows, seq]</c>, lengths free, as the windows of
    /// <c>--text</c> give them), ∇L summed over all of them: the loss is additive, so this is the sum of their directions.
    /// </summary>
    public Dictionary<string, NdArray<float>> Direction(IReadOnlyList<(NdArray<long> Tokens, NdArray<long>? Targets)> parts, string curvaturePath, PosteriorOptions options,
                                                        LayerSelection? selection = null)
    {
        ArgumentNullException.ThrowIfNull(parts);
        ArgumentNullException.ThrowIfNull(options);
        var (_, posterior) = KfacScoring.LoadPosterior(lm, curvaturePath, options, context.Backend, log ?? TextWriter.Null, selection);
        IReadOnlyList<Layer> layers = KfacScoring.Layers(lm, posterior); // SPEC §4: per selected layer; the others are not written
        IReadOnlyList<string> parameters = LayerDiscovery.DefaultParameters(layers);
        Dictionary<string, NdArray<float>>? gradient = null;
        foreach (var (tokens, targets) in parts) gradient = LossGradient(tokens, targets, parameters, gradient);
        if (gradient is null) throw FisherKernelsException.Argument("natgrad: no sequences");
        var direction = new Dictionary<string, NdArray<float>>(StringComparer.Ordinal);
        foreach (Layer layer in layers)
        {
            LayerPosterior l = posterior[layer.Id];
            float[] x = new float[LayerLayout.Size(layer)], d = new float[x.Length];
            LayerLayout.ToOutIn(layer, gradient[layer.Id].Data, layer.Bias is null ? default : gradient[layer.Bias].Data, x);
            l.Solve(x, d);
            direction[layer.Id] = new NdArray<float>((int[])gradient[layer.Id].Shape.Clone());
            if (layer.Bias is not null) direction[layer.Bias] = new NdArray<float>([layer.Out]);
            LayerLayout.FromOutIn(layer, d, direction[layer.Id].Data, layer.Bias is null ? default : direction[layer.Bias].Data);
        }
        return direction;
    }

    /// <summary>∇θ L summed over the batches of <see cref="BatchSize"/> sequences, added to <paramref name="sum"/> when given.</summary>
    Dictionary<string, NdArray<float>> LossGradient(NdArray<long> tokens, NdArray<long>? targets, IReadOnlyList<string> parameters, Dictionary<string, NdArray<float>>? sum)
    {
        if (tokens.Rank != 2) throw FisherKernelsException.Argument($"natgrad: token ids must have shape [batch, seq], got [{ShapeUtil.Format(tokens.Shape)}]");
        int rows = tokens.Shape[0], seq = tokens.Shape[1];
        for (int first = 0; first < rows; first += BatchSize)
        {
            int count = Math.Min(BatchSize, rows - first);
            var batch = new NdArray<long>([count, seq], tokens.Data.AsSpan(first * seq, count * seq).ToArray());
            NdArray<long>? batchTargets = targets is null ? null : new NdArray<long>([count, seq], targets.Data.AsSpan(first * seq, count * seq).ToArray());
            var g = Derivatives.LossGradients(lm, context, batch, batchTargets, parameters);
            if (sum is null) { sum = g; continue; }
            foreach (var (name, value) in g) System.Numerics.Tensors.TensorPrimitives.Add(sum[name].Data, value.Data, sum[name].Data);
        }
        return sum ?? throw FisherKernelsException.Argument("natgrad: the token file has no sequences");
    }
}

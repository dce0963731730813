using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Generation;

/// <summary>
/// Linearized sampling's draws (SPEC §4): for s = 0..K−1, δθ_s ~ N(0, Σ) per layer from the posterior's stream for
/// (<paramref name="seed"/>, s) — the draws <c>score --samples</c> takes — and J·δθ_s, the logits' shift under it.
/// </summary>
public static class LinearizedDraws
{
    /// <summary>K JVPs of the logits of <paramref name="tokens"/>, one after the other: K × batch × seq × vocab floats.</summary>
    public static float[] Jvps(LanguageModel lm, OpContext context, KfacPosterior posterior, NdArray tokens, int samples, long seed)
    {
        IReadOnlyList<Layer> layers = lm.Model.Layers;
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
                float[] delta = deltas[i], w = direction[layer.Id].Data;
                posterior[layer.Id].SamplePerturbation(seed, s, delta);
                int a = layer.In + (layer.Bias is null ? 0 : 1);
                for (int o = 0; o < layer.Out; o++)
                    for (int k = 0; k < layer.In; k++) w[layer.StoredOutIn ? o * layer.In + k : k * layer.Out + o] = delta[o * a + k];
                if (layer.Bias is not null)
                {
                    float[] b = direction[layer.Bias].Data;
                    for (int o = 0; o < layer.Out; o++) b[o] = delta[o * a + layer.In];
                }
            }
            var jvp = Derivatives.Jvp(lm, context, tokens, direction, "linearized sampling").Data;
            jvps ??= new float[(long)samples * jvp.Length];
            jvp.CopyTo(jvps, (long)s * jvp.Length);
        }
        return jvps!;
    }
}

using System.Security.Cryptography;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
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
    public static (KfacCurvature Curvature, KfacPosterior Posterior) LoadPosterior(LanguageModel lm, string curvaturePath, double priorPrecision, int rank,
                                                                                  IComputeBackend backend, TextWriter log)
    {
        LayerShape[] shapes = Shapes(lm.Model.Layers);
        KfacCurvature curvature = KfacCurvature.Load(curvaturePath, shapes);
        curvature.EnsureMatches(Sha256(lm.Model.Graph.Source), shapes);
        var posterior = new KfacPosterior(curvature, backend, new PosteriorOptions { PriorPrecision = priorPrecision, Rank = rank });
        foreach (string line in posterior.Describe()) log.WriteLine(line);
        return (curvature, posterior);
    }

    /// <summary><see cref="Epistemic(LanguageModel, KfacPosterior)"/> for the curvature file <paramref name="curvaturePath"/>.</summary>
    public static Func<Backward, double> Epistemic(LanguageModel lm, string curvaturePath, double priorPrecision, int rank, IComputeBackend backend, TextWriter log) =>
        Epistemic(lm, LoadPosterior(lm, curvaturePath, priorPrecision, rank, backend, log).Posterior);

    /// <summary>
    /// The K-FAC epistemic score of one backward pass (SPEC §4): Σ over layers of <c>vec(X)ᵀ Σ vec(X)</c>, X = [∇W | ∇b]
    /// as <c>[out × in(+1)]</c> whatever the weight's storage. The backward pass must have every layer weight and bias as parameters.
    /// </summary>
    public static Func<Backward, double> Epistemic(LanguageModel lm, KfacPosterior posterior)
    {
        IReadOnlyList<Layer> layers = lm.Model.Layers;
        var buffers = layers.Select(l => new float[(long)l.Out * (l.In + (l.Bias is null ? 0 : 1))]).ToArray();
        var result = new float[1];
        return backward =>
        {
            double sum = 0;
            for (int i = 0; i < layers.Count; i++)
            {
                Layer layer = layers[i];
                float[] x = buffers[i];
                int a = layer.In + (layer.Bias is null ? 0 : 1);
                float[] w = backward.Gradient(layer.Id).Data;
                for (int o = 0; o < layer.Out; o++)
                    for (int k = 0; k < layer.In; k++) x[o * a + k] = layer.StoredOutIn ? w[o * layer.In + k] : w[k * layer.Out + o];
                if (layer.Bias is not null)
                {
                    float[] b = backward.Gradient(layer.Bias).Data;
                    for (int o = 0; o < layer.Out; o++) x[o * a + layer.In] = b[o];
                }
                posterior[layer.Id].Quadratic(x, 1, result);
                sum += result[0];
            }
            return sum;
        };
    }

    public static LayerShape[] Shapes(IReadOnlyList<Layer> layers) => layers.Select(l => new LayerShape(l.Id, l.In, l.Out, l.Bias is not null)).ToArray();

    /// <summary>Hex SHA-256 of a file (the model hash of SPEC §5).</summary>
    public static string Sha256(string path)
    {
        using FileStream stream = RawArrays.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}

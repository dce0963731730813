using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Onnx.Jobs;

/// <summary>The EWC penalty of a candidate against its base, per layer and in all (SPEC §4 <c>ewc</c>).</summary>
public sealed record EwcPenalty(double Total, IReadOnlyDictionary<string, double> Layers);

/// <summary>
/// Elastic weight consolidation (SPEC §4): <c>½ Σ_layers vec(Δ)ᵀ C vec(Δ) = ½ Σ_layers M·tr(Δᵀ G Δ A)</c>,
/// <c>Δ = [W | b]_candidate − [W | b]_base</c> in the <c>[out × in(+1)]</c> layout, C the base model's curvature (dense
/// factor sides). The candidate must have the base's layers, shapes and layouts.
/// </summary>
public static class EwcService
{
    public static EwcPenalty Penalty(LanguageModel baseModel, LanguageModel candidate, string curvaturePath, IComputeBackend backend)
    {
        ArgumentNullException.ThrowIfNull(baseModel);
        ArgumentNullException.ThrowIfNull(candidate);
        EnsureSameArchitecture(baseModel, candidate);
        KfacCurvature curvature = KfacScoring.LoadCurvature(baseModel, curvaturePath);
        var layers = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (Layer layer in baseModel.Model.Layers)
        {
            if (!curvature.TryGetLayer(layer.Id, out KroneckerBlock block)) continue; // a layer-selected curvature penalizes its layers only
            if (!block.IsDense)
                throw FisherKernelsException.Unsupported($"ewc: layer '{layer.Id}' of '{curvaturePath}' has a low-rank factor side; the penalty needs dense A and G");
            float[] delta = OutIn(candidate, layer);
            float[] before = OutIn(baseModel, layer);
            System.Numerics.Tensors.TensorPrimitives.Subtract(delta, before, delta);
            int a = block.ADim, g = block.GDim;
            var gDelta = new float[delta.Length];
            var gDeltaA = new float[delta.Length];
            backend.Gemm(new GemmShape(g, a, g), block.G.Data, delta, gDelta);
            backend.Gemm(new GemmShape(g, a, a), gDelta, block.A.Data, gDeltaA);
            double trace = 0;
            for (int i = 0; i < delta.Length; i++) trace += (double)delta[i] * gDeltaA[i];
            layers[layer.Id] = 0.5 * block.Positions * trace;
        }
        return new EwcPenalty(layers.Values.Sum(), layers);
    }

    static float[] OutIn(LanguageModel lm, Layer layer)
    {
        var x = new float[LayerLayout.Size(layer)];
        var initializers = lm.Model.Graph.Initializers;
        LayerLayout.ToOutIn(layer, ((NdArray<float>)initializers[layer.Id]).Data, layer.Bias is null ? default : ((NdArray<float>)initializers[layer.Bias]).Data, x);
        return x;
    }

    /// <summary>The candidate must have the base's layers in order, with their shapes, bias and stored orientation; the error names the first that differs.</summary>
    public static void EnsureSameArchitecture(LanguageModel baseModel, LanguageModel candidate)
    {
        IReadOnlyList<Layer> x = baseModel.Model.Layers, y = candidate.Model.Layers;
        string b = baseModel.Model.Graph.Source, c = candidate.Model.Graph.Source;
        for (int i = 0; i < Math.Max(x.Count, y.Count); i++)
        {
            if (i >= y.Count) throw FisherKernelsException.Argument($"models of different architectures: '{c}' has no layer '{x[i].Id}' of '{b}'");
            if (i >= x.Count) throw FisherKernelsException.Argument($"models of different architectures: '{c}' has layer '{y[i].Id}', which '{b}' does not have");
            Layer p = x[i], q = y[i];
            if (p.Id != q.Id || p.In != q.In || p.Out != q.Out || (p.Bias is null) != (q.Bias is null) || p.Bias != q.Bias || p.StoredOutIn != q.StoredOutIn)
                throw FisherKernelsException.Argument(
                    $"models of different architectures: layer {i} is '{p.Id}' (in {p.In}, out {p.Out}, bias {p.Bias ?? "none"}) in '{b}' and '{q.Id}' (in {q.In}, out {q.Out}, bias {q.Bias ?? "none"}) in '{c}'");
        }
    }
}

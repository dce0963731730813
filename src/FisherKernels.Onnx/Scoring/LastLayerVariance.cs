using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// The closed-form variance of each target logit from the output layer alone (<c>score --method kfac</c>'s
/// <c>last_layer_logit_variance</c>): the logit is linear in that layer's parameters, <c>∂z_y/∂[W | b] = e_y ãᵀ</c>, so its
/// variance under the layer's posterior block is <see cref="LayerPosterior.TargetOutputVariance"/>, exact and without a
/// Jacobian. The output layer is the layer whose output (after its bias) is the logits, directly or through nodes that only
/// relabel the shape; logits computed by anything else from it (a scale, a softcap) are not linear in it, and get no figure.
/// </summary>
public static class LastLayerVariance
{
    private static readonly HashSet<string> ShapeOnly = ["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"];

    /// <summary>
    /// The layer and application giving <paramref name="lm"/>'s logits, or null with the reason in <paramref name="reason"/>.
    /// </summary>
    public static (Layer Layer, LayerApplication Application)? OutputLayer(LanguageModel lm, out string reason)
    {
        var graph = lm.Model.Graph;
        string value = lm.LogitsOutput;
        while (true)
        {
            foreach (Layer layer in lm.Model.Layers)
                foreach (LayerApplication app in layer.Applications)
                    if (app.OutputValue == value)
                    {
                        reason = "";
                        return (layer, app);
                    }
            if (!graph.Producers.TryGetValue(value, out Node? node))
            {
                reason = $"the logits '{lm.LogitsOutput}' are not computed by a layer";
                return null;
            }
            if (node.Domain.Length != 0 || !ShapeOnly.Contains(node.OpType))
            {
                reason = $"the logits '{lm.LogitsOutput}' come from {node.Describe()}, not directly from a layer's output";
                return null;
            }
            value = node.Inputs[0];
        }
    }

    /// <summary>
    /// Adds <see cref="TokenScore.LastLayerLogitVariance"/> to every token of <paramref name="report"/>; when the model has no
    /// output layer in that sense, says why on <paramref name="log"/> and returns the report unchanged.
    /// </summary>
    public static ScoreReport Add(ScoreReport report, LanguageModel lm, OpContext context, KfacPosterior posterior, NdArray tokens, TextWriter log)
    {
        if (OutputLayer(lm, out string reason) is not var (layer, application))
        {
            log.WriteLine($"score: no last_layer_logit_variance: {reason}");
            return report;
        }
        if (!posterior.Contains(layer.Id))
        {
            log.WriteLine($"score: no last_layer_logit_variance: the curvature's layer selection leaves out the output layer '{layer.Id}'");
            return report;
        }
        LayerPosterior layerPosterior = posterior[layer.Id];
        int seq = tokens.Shape[1], inF = layer.In;
        var rows = report.Sequences.SelectMany(s => s.Tokens.Select(t => (Sequence: s.Index, t.Position, t.Target))).ToArray();
        var inputs = new float[(long)rows.Length * inF];
        var targets = rows.Select(r => r.Target).ToArray();
        var variables = LayerDiscovery.DefaultParameters(lm.Model.Layers).ToHashSet(StringComparer.Ordinal);
        var ids = tokens as NdArray<long> ?? new NdArray<long>(tokens.Shape, Array.ConvertAll(((NdArray<int>)tokens).Data, v => (long)v));
        int next = 0;
        foreach (var group in rows.GroupBy(r => r.Sequence))
        {
            // The keep-all plan of the scorer (same key, so built once): the layer's input survives the run.
            var row = new NdArray<long>([1, seq], ids.Data[(group.Key * seq)..((group.Key + 1) * seq)]);
            var runInputs = lm.Inputs(row);
            var plan = lm.Model.GetPlan(runInputs, variables, keepAll: true);
            DevicePlan.Run(plan, context, runInputs, [application.InputValue, lm.LogitsOutput]);
            var input = (NdArray<float>)plan.Get(application.InputValue);
            if (input.Length != (long)seq * inF || plan.Get(lm.LogitsOutput).Shape[^1] != layer.Out)
            {
                log.WriteLine($"score: no last_layer_logit_variance: the output layer '{layer.Id}' is applied to {input.Length / inF} rows of a {seq}-token sequence, not one per position");
                return report;
            }
            foreach (var (_, position, _) in group)
                input.Data.AsSpan(position * inF, inF).CopyTo(inputs.AsSpan(next++ * inF, inF));
        }

        var variance = new double[rows.Length];
        layerPosterior.TargetOutputVariance(inputs, targets, rows.Length, variance);
        next = 0;
        return report with
        {
            Sequences = report.Sequences.Select(sequence => sequence with
            {
                Tokens = sequence.Tokens.Select(token => token with { LastLayerLogitVariance = variance[next++] }).ToArray(),
            }).ToArray(),
        };
    }
}

namespace FisherKernels.Onnx.Graph;

/// <summary>One application of a layer's weight: the MatMul/Gemm node, its activation input and its output (after the bias, when there is one).</summary>
public sealed record LayerApplication(Node Node, string InputValue, string OutputValue);

/// <summary>
/// A layer (SPEC §2): a MatMul or Gemm whose weight is a rank-2 float initializer, reached directly or
/// through Transpose/Identity/Cast. <see cref="In"/> is the contracted dimension whatever the storage;
/// <see cref="StoredOutIn"/> tells whether the initializer is stored [out, in] (else [in, out]).
/// </summary>
public sealed record Layer(string Id, string? Bias, string Op, int In, int Out, bool StoredOutIn,
                           IReadOnlyList<LayerApplication> Applications)
{
    public long Parameters => (long)In * Out + (Bias is null ? 0 : Out);
}

/// <summary>Finds layers and parameter sets in an imported graph (SPEC §2).</summary>
public static class LayerDiscovery
{
    private static readonly HashSet<string> PassThrough = ["Transpose", "Identity", "Cast"];
    private static readonly HashSet<string> Normalizations = ["LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization"];

    public static IReadOnlyList<Layer> Discover(OnnxGraph graph)
    {
        var layers = new Dictionary<string, (Layer Layer, List<LayerApplication> Uses)>();
        var order = new List<string>();
        foreach (var node in graph.Nodes)
        {
            if (node.Domain.Length != 0 || node.OpType is not ("MatMul" or "Gemm") || node.Inputs.Length < 2) continue;
            var (weight, flips) = TraceInitializer(graph, node.Inputs[1]);
            if (weight is null || graph.Initializers[weight] is not NdArray<float> { Rank: 2 } w) continue;
            bool transB = node.OpType == "Gemm" && node.Attributes.GetInt("transB", 0) == 1;
            bool storedOutIn = (flips + (transB ? 1 : 0)) % 2 == 1;
            int inFeatures = storedOutIn ? w.Shape[1] : w.Shape[0], outFeatures = storedOutIn ? w.Shape[0] : w.Shape[1];

            string? bias = null;
            string output = node.Outputs[0];
            if (node.OpType == "Gemm")
            {
                if (node.Inputs.Length > 2 && node.Inputs[2].Length > 0) bias = RankOneFloat(graph, node.Inputs[2], outFeatures);
            }
            else if (graph.Consumers.TryGetValue(output, out var consumers) && consumers.Count == 1 && consumers[0] is { OpType: "Add", Domain: "" } add)
            {
                string other = add.Inputs[0] == output ? add.Inputs[1] : add.Inputs[0];
                bias = RankOneFloat(graph, other, outFeatures);
                if (bias is not null) output = add.Outputs[0];
            }

            var use = new LayerApplication(node, node.Inputs[0], output);
            if (layers.TryGetValue(weight, out var known)) { known.Uses.Add(use); continue; }
            var uses = new List<LayerApplication> { use };
            layers[weight] = (new Layer(weight, bias, node.OpType, inFeatures, outFeatures, storedOutIn, uses), uses);
            order.Add(weight);
        }
        return order.Select(id => layers[id].Layer).ToList();
    }

    /// <summary>SPEC §2 default: every layer's weight and bias.</summary>
    public static IReadOnlyList<string> DefaultParameters(IReadOnlyList<Layer> layers) =>
        layers.SelectMany(l => l.Bias is null ? new[] { l.Id } : [l.Id, l.Bias]).Distinct().ToList();

    /// <summary>
    /// SPEC §2 <c>--params all</c>: every float initializer that feeds (directly or through
    /// Transpose/Identity/Cast) a MatMul, Gemm, Gather (as data), a normalization's scale or bias, or
    /// an elementwise Add/Mul as a rank-1 vector (bias Add, decomposed normalization scale and bias).
    /// </summary>
    public static IReadOnlyList<string> AllParameters(OnnxGraph graph)
    {
        var result = new List<string>();
        foreach (string name in graph.InitializerOrder)
        {
            if (graph.Initializers[name] is not NdArray<float> value || value.Length <= 1) continue;
            if (FeedsParameterUse(graph, name, value.Rank)) result.Add(name);
        }
        return result;
    }

    /// <summary>Parses a <c>--params</c> file: one initializer name a line; names must exist.</summary>
    public static IReadOnlyList<string> ReadParameterFile(OnnxGraph graph, string path)
    {
        string[] lines;
        try { lines = File.ReadAllLines(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw FisherKernelsException.Io($"cannot read --params file '{path}': {(e is FileNotFoundException ? "file not found" : e.Message)}", e);
        }
        var names = lines.Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).Distinct().ToList();
        if (names.Count == 0) throw FisherKernelsException.Argument($"--params file '{path}' names no initializer");
        foreach (string name in names)
        {
            if (!graph.Initializers.TryGetValue(name, out var value) || graph.ConstantNodeValues.Contains(name))
                throw FisherKernelsException.Argument($"--params file '{path}': '{name}' is not an initializer of the model");
            if (value is not NdArray<float>)
                throw FisherKernelsException.Argument($"--params file '{path}': initializer '{name}' is {value.ElementType}, not a float parameter");
        }
        return names;
    }

    private static bool FeedsParameterUse(OnnxGraph graph, string value, int rank)
    {
        if (!graph.Consumers.TryGetValue(value, out var consumers)) return false;
        foreach (var node in consumers)
        {
            if (node.Domain.Length == 0 && PassThrough.Contains(node.OpType))
            {
                if (FeedsParameterUse(graph, node.Outputs[0], rank)) return true;
                continue;
            }
            bool uses = node.OpType switch
            {
                "MatMul" or "Gemm" => true,
                "Gather" => node.Inputs[0] == value,
                "Add" or "Mul" => rank == 1,
                _ => Normalizations.Contains(node.OpType) && Array.IndexOf(node.Inputs, value) >= 1,
            };
            if (uses) return true;
        }
        return false;
    }

    /// <summary>The float initializer behind <paramref name="value"/> through pass-through nodes, and how many rank-2 transposes lie on the way.</summary>
    private static (string? Initializer, int Flips) TraceInitializer(OnnxGraph graph, string value)
    {
        int flips = 0;
        for (int depth = 0; depth < 16; depth++)
        {
            if (graph.Initializers.ContainsKey(value))
                return graph.ConstantNodeValues.Contains(value) ? (null, 0) : (value, flips);
            if (!graph.Producers.TryGetValue(value, out var node) || node.Domain.Length != 0 || !PassThrough.Contains(node.OpType))
                return (null, 0);
            if (node.OpType == "Transpose")
            {
                long[]? perm = node.Attributes.GetInts("perm");
                if (perm is null || perm is [1, 0]) flips++;
                else if (perm is not [0, 1]) return (null, 0);
            }
            else if (node.OpType == "Cast" && node.Attributes.GetInt("to", 0) != 1)
                return (null, 0);
            value = node.Inputs[0];
        }
        return (null, 0);
    }

    private static string? RankOneFloat(OnnxGraph graph, string value, int length)
    {
        var (name, _) = TraceInitializer(graph, value);
        return name is not null && graph.Initializers[name] is NdArray<float> { Rank: 1 } b && b.Shape[0] == length ? name : null;
    }
}

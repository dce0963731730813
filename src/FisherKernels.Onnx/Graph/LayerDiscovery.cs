namespace FisherKernels.Onnx.Graph;

/// <summary>
/// One application of a layer's weight: the MatMul/Gemm node, its activation input and its output (after the bias, when
/// there is one). <see cref="InSubgraph"/>: the node is in a Loop body or If branch, whose values a plan holds under
/// other names, once per unrolled iteration (<see cref="Plan.ExecutionPlan.ApplicationsOf"/>).
/// </summary>
public sealed record LayerApplication(Node Node, string InputValue, string OutputValue, bool InSubgraph = false);

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

    /// <summary>
    /// The layers of <paramref name="graph"/>, sub-graphs included: a MatMul/Gemm in a Loop body or If branch whose weight
    /// is an initializer of the graph is an application of that layer (a body run k times applies it k times).
    /// </summary>
    public static IReadOnlyList<Layer> Discover(OnnxGraph graph)
    {
        var layers = new Dictionary<string, (Layer Layer, List<LayerApplication> Uses)>();
        var order = new List<string>();
        Discover(graph, new Scope(null, graph.Nodes), layers, order);
        return order.Select(id => layers[id].Layer).ToList();
    }

    /// <summary>The nodes of one graph or sub-graph, with the values they make and read; names not made here are looked up outside.</summary>
    private sealed class Scope
    {
        private readonly Scope? parent;
        private readonly Dictionary<string, Node> producers = [];
        private readonly Dictionary<string, List<Node>> consumers = [];

        public Scope(Scope? parent, IReadOnlyList<Node> nodes)
        {
            this.parent = parent;
            Nodes = nodes;
            foreach (var node in nodes)
            {
                foreach (var output in node.Outputs) if (output.Length > 0) producers[output] = node;
                foreach (var input in node.AllInputs.Distinct())
                {
                    if (input.Length == 0) continue;
                    if (!consumers.TryGetValue(input, out var list)) consumers[input] = list = [];
                    list.Add(node);
                }
            }
        }

        public IReadOnlyList<Node> Nodes { get; }
        public bool IsSubgraph => parent is not null;

        public Node? Producer(string value) => producers.TryGetValue(value, out var node) ? node : parent?.Producer(value);

        /// <summary>The nodes of this scope that read <paramref name="value"/> (a Loop or If among them when its sub-graph does).</summary>
        public IReadOnlyList<Node> Consumers(string value) => consumers.TryGetValue(value, out var list) ? list : [];
    }

    private static void Discover(OnnxGraph graph, Scope scope, Dictionary<string, (Layer Layer, List<LayerApplication> Uses)> layers, List<string> order)
    {
        foreach (var node in scope.Nodes)
        {
            if (Application(graph, scope, node) is var (layer, use))
            {
                if (layers.TryGetValue(layer.Id, out var known)) known.Uses.Add(use);
                else
                {
                    layers[layer.Id] = (layer, (List<LayerApplication>)layer.Applications);
                    order.Add(layer.Id);
                }
            }
            foreach (var subgraph in node.Subgraphs.Values) Discover(graph, new Scope(scope, subgraph.Nodes), layers, order);
        }
    }

    /// <summary>The layer <paramref name="node"/> applies (with this one application) and the application, or null when it is none.</summary>
    private static (Layer Layer, LayerApplication Use)? Application(OnnxGraph graph, Scope scope, Node node)
    {
        if (node.Domain.Length != 0 || node.OpType is not ("MatMul" or "Gemm") || node.Inputs.Length < 2) return null;
        var (weight, flips) = TraceInitializer(graph, scope, node.Inputs[1]);
        if (weight is null || graph.Initializers[weight] is not NdArray<float> { Rank: 2 } w) return null;
        bool transB = node.OpType == "Gemm" && node.Attributes.GetInt("transB", 0) == 1;
        bool storedOutIn = (flips + (transB ? 1 : 0)) % 2 == 1;
        int inFeatures = storedOutIn ? w.Shape[1] : w.Shape[0], outFeatures = storedOutIn ? w.Shape[0] : w.Shape[1];

        string? bias = null;
        string output = node.Outputs[0];
        if (node.OpType == "Gemm")
        {
            if (node.Inputs.Length > 2 && node.Inputs[2].Length > 0) bias = RankOneFloat(graph, scope, node.Inputs[2], outFeatures);
        }
        else if (scope.Consumers(output) is [{ OpType: "Add", Domain: "" } add])
        {
            string other = add.Inputs[0] == output ? add.Inputs[1] : add.Inputs[0];
            bias = RankOneFloat(graph, scope, other, outFeatures);
            if (bias is not null) output = add.Outputs[0];
        }
        var use = new LayerApplication(node, node.Inputs[0], output, scope.IsSubgraph);
        return (new Layer(weight, bias, node.OpType, inFeatures, outFeatures, storedOutIn, new List<LayerApplication> { use }), use);
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
        if (!graph.DeepConsumers.TryGetValue(value, out var consumers)) return false;
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
    private static (string? Initializer, int Flips) TraceInitializer(OnnxGraph graph, Scope scope, string value)
    {
        int flips = 0;
        for (int depth = 0; depth < 16; depth++)
        {
            if (graph.Initializers.ContainsKey(value))
                return graph.ConstantNodeValues.Contains(value) ? (null, 0) : (value, flips);
            if (scope.Producer(value) is not { } node || node.Domain.Length != 0 || !PassThrough.Contains(node.OpType))
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

    private static string? RankOneFloat(OnnxGraph graph, Scope scope, string value, int length)
    {
        var (name, _) = TraceInitializer(graph, scope, value);
        return name is not null && graph.Initializers[name] is NdArray<float> { Rank: 1 } b && b.Shape[0] == length ? name : null;
    }
}

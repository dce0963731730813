using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Graph;

/// <summary>A graph input or output as declared: element type and dimensions (null = symbolic or unknown).</summary>
public sealed record ValueInfo(string Name, ElementType? ElementType, int?[]? Shape, string?[]? DimensionNames)
{
    /// <summary>
    /// A sequence of tensors (element type and shape are its elements'): as a graph input it arrives as its elements,
    /// tensors named <c>name[0]</c>, <c>name[1]</c>, …; as a graph output its elements are read under those names.
    /// </summary>
    public bool IsSequence { get; init; }

    /// <summary>An optional value: as a graph input it may be left out (a sequence: no element given), and then holds nothing.</summary>
    public bool IsOptional { get; init; }

    public string Describe()
    {
        string tensor = Shape is null ? $"{ElementType?.ToString() ?? "?"}"
            : $"{ElementType?.ToString() ?? "?"} [{string.Join(", ", Shape.Select((d, i) => d?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? DimensionNames?[i] ?? "?"))}]";
        return IsSequence ? $"{Name} (sequence of {tensor})" : $"{Name} ({tensor})";
    }

    /// <summary>The name element <paramref name="index"/> of sequence <paramref name="sequence"/> goes by as a graph input or output.</summary>
    public static string ElementName(string sequence, int index) => $"{sequence}[{index}]";
}

/// <summary>One operator application. Absent optional inputs are empty strings, as in ONNX.</summary>
public sealed class Node
{
    public required string Name { get; init; }
    public required string OpType { get; init; }
    /// <summary>"" for the default ONNX domain ("ai.onnx" is normalised to "").</summary>
    public required string Domain { get; init; }
    public required string[] Inputs { get; init; }
    public required string[] Outputs { get; init; }
    public required OperatorAttributes Attributes { get; init; }
    /// <summary>GRAPH attributes (Loop's body, If's branches) by attribute name.</summary>
    public IReadOnlyDictionary<string, Subgraph> Subgraphs { get; init; } = NoSubgraphs;
    /// <summary>Values of enclosing scopes that the sub-graphs read: inputs of this node in all but name (ordering, consumers).</summary>
    public string[] ImplicitInputs { get; init; } = [];

    /// <summary>The declared inputs followed by the implicit ones.</summary>
    public IEnumerable<string> AllInputs => ImplicitInputs.Length == 0 ? Inputs : Inputs.Concat(ImplicitInputs);

    private static readonly Dictionary<string, Subgraph> NoSubgraphs = [];

    /// <summary>"op type 'X' (domain d) at node 'n'" — how errors name a node.</summary>
    public string Describe() => $"{OpType}{(Domain.Length == 0 ? "" : $" (domain {Domain})")} node '{Name}'";
}

/// <summary>
/// A GRAPH attribute: its formal inputs and outputs, nodes in file order, and its own constants (initializers
/// and Constant nodes). Names it reads but does not define (<see cref="OuterValues"/>) come from enclosing scopes.
/// </summary>
public sealed class Subgraph
{
    public required string Name { get; init; }
    public required IReadOnlyList<string> Inputs { get; init; }
    public required IReadOnlyList<string> Outputs { get; init; }
    public required IReadOnlyList<Node> Nodes { get; init; }
    public required IReadOnlyDictionary<string, NdArray> Constants { get; init; }
    public required IReadOnlyList<string> OuterValues { get; init; }
}

/// <summary>
/// The imported model: nodes in file order, initializers converted to float32 (from float32,
/// float16 or bfloat16) or kept as integers, graph inputs (initializers excluded) and outputs.
/// </summary>
public sealed class OnnxGraph
{
    public required string Source { get; init; }
    public required IReadOnlyList<Node> Nodes { get; init; }
    public required IReadOnlyDictionary<string, NdArray> Initializers { get; init; }
    /// <summary>Initializer names in file order (dictionaries do not promise an order).</summary>
    public required IReadOnlyList<string> InitializerOrder { get; init; }
    /// <summary>Values that came from Constant nodes (held with the initializers, but not initializers for layer discovery).</summary>
    public required IReadOnlySet<string> ConstantNodeValues { get; init; }
    public required IReadOnlyList<ValueInfo> Inputs { get; init; }
    public required IReadOnlyList<ValueInfo> Outputs { get; init; }
    /// <summary>Opset version per domain ("" = the default ONNX domain).</summary>
    public required IReadOnlyDictionary<string, long> Opsets { get; init; }

    public long DefaultOpset => Opsets.TryGetValue("", out long v) ? v : 0;

    /// <summary>The node that produces each value (graph inputs and initializers have none).</summary>
    public IReadOnlyDictionary<string, Node> Producers => producers ??= BuildProducers();

    /// <summary>The nodes that read each value, in node order.</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<Node>> Consumers => consumers ??= BuildConsumers();

    /// <summary>
    /// The nodes that read each value as a declared input, at every depth: a value a Loop body or If branch reads from
    /// outside is listed with the sub-graph's nodes that read it (not with the Loop or If).
    /// </summary>
    public IReadOnlyDictionary<string, IReadOnlyList<Node>> DeepConsumers => deepConsumers ??= BuildDeepConsumers();

    private Dictionary<string, Node>? producers;
    private Dictionary<string, IReadOnlyList<Node>>? consumers, deepConsumers;

    private Dictionary<string, IReadOnlyList<Node>> BuildDeepConsumers()
    {
        var map = new Dictionary<string, List<Node>>();
        void Add(IEnumerable<Node> nodes)
        {
            foreach (var node in nodes)
            {
                foreach (var input in node.Inputs.Distinct())
                {
                    if (input.Length == 0) continue;
                    if (!map.TryGetValue(input, out var list)) map[input] = list = [];
                    list.Add(node);
                }
                foreach (var subgraph in node.Subgraphs.Values) Add(subgraph.Nodes);
            }
        }
        Add(Nodes);
        return map.ToDictionary(kv => kv.Key, kv => (IReadOnlyList<Node>)kv.Value);
    }

    private Dictionary<string, Node> BuildProducers()
    {
        var map = new Dictionary<string, Node>();
        foreach (var node in Nodes)
            foreach (var output in node.Outputs)
                if (output.Length > 0) map[output] = node;
        return map;
    }

    private Dictionary<string, IReadOnlyList<Node>> BuildConsumers()
    {
        var map = new Dictionary<string, List<Node>>();
        foreach (var node in Nodes)
            foreach (var input in node.AllInputs.Distinct())
            {
                if (input.Length == 0) continue;
                if (!map.TryGetValue(input, out var list)) map[input] = list = [];
                list.Add(node);
            }
        return map.ToDictionary(kv => kv.Key, kv => (IReadOnlyList<Node>)kv.Value);
    }
}

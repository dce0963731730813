using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// An imported model ready to execute: operators made once per node when the model is opened (an unsupported
/// operator or a malformed graph is found then, before any input is read), the nodes in a topological order,
/// and a small cache of plans per input shape (and per value of the <see cref="ValueInputs"/>).
/// </summary>
public sealed class OnnxModel
{
    private const int CachedPlans = 4;

    private readonly Dictionary<Node, Operator> operators = [];
    private readonly LinkedList<(string Key, ExecutionPlan Plan)> plans = new();
    private IReadOnlyList<Node>? topologicalOrder;
    private OpContext? foldingContext;

    /// <summary>
    /// Opens an imported graph: orders its nodes (a cycle is an error now) and makes every node's operator,
    /// recording those that cannot be made in <see cref="Unsupported"/> (<see cref="CheckSupported"/> throws for them).
    /// </summary>
    public OnnxModel(OnnxGraph graph)
    {
        Graph = graph;
        var unsupported = new List<(Node, FisherKernelsException)>();
        foreach (var node in WithSubgraphNodes(TopologicalOrder))
        {
            try { OperatorFor(node); }
            catch (FisherKernelsException e) when (e.Kind != ErrorKind.Internal) { unsupported.Add((node, e)); }
        }
        Unsupported = unsupported;
        ValueInputs = FindValueInputs();
    }

    /// <summary>Loads a model and refuses it when some node's operator is unsupported or invalid (<see cref="CheckSupported"/>).</summary>
    public static OnnxModel Load(string path)
    {
        var model = new OnnxModel(OnnxImporter.Load(path));
        model.CheckSupported();
        return model;
    }

    /// <summary>Loads a model whatever operators it has (for <c>inspect</c>, which lists the <see cref="Unsupported"/> ones).</summary>
    public static OnnxModel Open(string path) => new(OnnxImporter.Load(path));

    public OnnxGraph Graph { get; }

    public IReadOnlyList<Layer> Layers => layers ??= LayerDiscovery.Discover(Graph);
    private IReadOnlyList<Layer>? layers;

    /// <summary>Nodes ordered so that every value is produced before it is read (ONNX files usually are already).</summary>
    public IReadOnlyList<Node> TopologicalOrder => topologicalOrder ??= Sort();

    /// <summary>Backend for constant folding (plan build): single-threaded CPU.</summary>
    internal OpContext FoldingContext => foldingContext ??= new OpContext(new Backends.Cpu.CpuBackend(1));

    /// <summary>The nodes whose operator is outside the supported set or whose attributes are invalid, each with the error naming it.</summary>
    public IReadOnlyList<(Node Node, FisherKernelsException Error)> Unsupported { get; }

    /// <summary>
    /// Graph inputs whose values, not only their shapes, the plan needs: those that reach an operand read when the plan
    /// is built (<see cref="Operator.NeedsValue"/>: a Reshape's shape, a Slice's starts, a Cast to string's input, …) other
    /// than through <c>Shape</c>/<c>Size</c>, and every string input. Plans fold them as constants, one plan per value.
    /// </summary>
    public IReadOnlySet<string> ValueInputs { get; }

    /// <summary>Throws the first <see cref="Unsupported"/> node's error (naming its type, domain and node), counting the others.</summary>
    public void CheckSupported()
    {
        if (Unsupported.Count == 0) return;
        var (_, first) = Unsupported[0];
        if (Unsupported.Count == 1) throw first;
        string others = string.Join(", ", Unsupported.Skip(1).Select(u => u.Node.OpType).Distinct());
        throw new FisherKernelsException(first.Kind, $"model '{Graph.Source}': {first.Message} (and {Unsupported.Count - 1} more unsupported node(s): {others})", first);
    }

    internal Operator OperatorFor(Node node)
    {
        if (operators.TryGetValue(node, out var op)) return op;
        op = CreateOperator(node);
        operators[node] = op;
        return op;
    }

    /// <summary>
    /// A new operator for <paramref name="node"/> (not cached: also for the nodes a plan makes while unrolling), at
    /// the model's opset of its domain unless <paramref name="opset"/> is given.
    /// </summary>
    internal Operator CreateOperator(Node node, int? opset = null)
    {
        long version = opset ?? (Graph.Opsets.TryGetValue(node.Domain, out long v) ? v : node.Domain.Length == 0 ? Graph.DefaultOpset : 1);
        return OperatorRegistry.Create(new OperatorNode(node.Name, node.OpType, node.Domain, (int)version, node.Attributes,
                                                        node.Inputs.Length, node.Outputs.Length));
    }

    /// <summary>
    /// The plan for these inputs' shapes and for the values of the <see cref="ValueInputs"/> among them (built and
    /// cached on first use). All operators are checked first, so an unsupported one fails before any shape work or compute.
    /// </summary>
    public ExecutionPlan GetPlan(IReadOnlyDictionary<string, NdArray> inputs, IReadOnlySet<string>? variables = null, bool keepAll = false) =>
        GetPlan(inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape), variables, keepAll, inputs);

    /// <summary>The plan for these input shapes; for a model without <see cref="ValueInputs"/> only (else pass the inputs).</summary>
    public ExecutionPlan GetPlan(IReadOnlyDictionary<string, int[]> inputShapes, IReadOnlySet<string>? variables = null, bool keepAll = false) =>
        GetPlan(inputShapes, variables, keepAll, null);

    private ExecutionPlan GetPlan(IReadOnlyDictionary<string, int[]> inputShapes, IReadOnlySet<string>? variables, bool keepAll,
                                  IReadOnlyDictionary<string, NdArray>? inputs)
    {
        variables ??= new HashSet<string>();
        var values = new Dictionary<string, NdArray>();
        foreach (var name in ValueInputs.Order(StringComparer.Ordinal))
        {
            if (inputs is null || !inputs.TryGetValue(name, out var value))
                throw FisherKernelsException.Argument(inputs is not null && !inputShapes.ContainsKey(name)
                    ? $"model '{Graph.Source}': input '{name}' is required"
                    : $"model '{Graph.Source}': the plan needs the value of input '{name}' (it sets a shape, axes or the like), not only its shape");
            values[name] = value;
        }
        string key = string.Join(";", inputShapes.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}=[{ShapeUtil.Format(kv.Value)}]"))
                     + "|" + string.Join(";", values.Select(kv => $"{kv.Key}={ValueKey(kv.Value)}"))
                     + "|" + string.Join(",", variables.Order(StringComparer.Ordinal)) + "|" + keepAll;
        for (var n = plans.First; n is not null; n = n.Next)
            if (n.Value.Key == key)
            {
                plans.Remove(n);
                plans.AddFirst(n);
                return n.Value.Plan;
            }
        CheckSupported();
        var plan = ExecutionPlan.Build(this, inputShapes, variables, keepAll, values: values);
        plans.AddFirst((key, plan));
        if (plans.Count > CachedPlans) plans.RemoveLast();
        return plan;
    }

    /// <summary>The backward pass for a keep-all plan, seeded at <paramref name="seed"/> (made once per plan).</summary>
    internal Backward BackwardFor(ExecutionPlan plan, string seed, bool layerOutputsOnly = false)
    {
        if (!backwards.TryGetValue((plan, seed, layerOutputsOnly), out var backward))
        {
            foreach (var key in backwards.Keys.Where(k => !plans.Any(p => p.Plan == k.Plan)).ToList()) backwards.Remove(key);
            var targets = layerOutputsOnly ? Layers.SelectMany(l => plan.ApplicationsOf(l).Select(a => a.OutputValue)) : null;
            backwards[(plan, seed, layerOutputsOnly)] = backward = new Backward(plan, [seed], targets);
        }
        return backward;
    }

    private readonly Dictionary<(ExecutionPlan Plan, string Seed, bool LayerOutputsOnly), Backward> backwards = [];

    /// <summary>The forward-mode pass for a keep-all plan (made once per plan: its tangent buffers are reused).</summary>
    internal Tangent TangentFor(ExecutionPlan plan)
    {
        if (!tangents.TryGetValue(plan, out var tangent))
        {
            foreach (var key in tangents.Keys.Where(k => !plans.Any(p => p.Plan == k)).ToList()) tangents.Remove(key);
            tangents[plan] = tangent = new Tangent(plan);
        }
        return tangent;
    }

    private readonly Dictionary<ExecutionPlan, Tangent> tangents = [];

    /// <summary>
    /// The device form of an inference plan on <paramref name="device"/> (built once per plan and device: its buffers and
    /// uploaded weights are reused; device plans of plans that left the cache are freed).
    /// </summary>
    internal DevicePlan DevicePlanFor(ExecutionPlan plan, ITensorDevice device, string backend)
    {
        if (!devicePlans.TryGetValue((plan, device), out var devicePlan))
        {
            foreach (var key in devicePlans.Keys.Where(k => !plans.Any(p => p.Plan == k.Plan)).ToList())
            {
                devicePlans[key].Dispose();
                devicePlans.Remove(key);
            }
            devicePlans[(plan, device)] = devicePlan = DevicePlan.Build(plan, device, backend);
        }
        return devicePlan;
    }

    private readonly Dictionary<(ExecutionPlan Plan, ITensorDevice Device), DevicePlan> devicePlans = [];

    /// <summary>A value as text for the plan cache key (element type and every element, floats by their bits).</summary>
    private static string ValueKey(NdArray value) => value.ElementType + ":" + value switch
    {
        NdArray<float> f => string.Join(",", f.Data.Select(BitConverter.SingleToInt32Bits)),
        NdArray<bool> b => string.Join(",", b.Data.Select(x => x ? 1 : 0)),
        StringArray t => string.Join(",", t.Data.Select(x => $"{x.Length}:{x}")),
        _ => string.Join(",", Tensors.ToLongs(value) ?? throw FisherKernelsException.Unsupported($"a {value.ElementType} input cannot set a shape")),
    };

    private HashSet<string> FindValueInputs()
    {
        var graphInputs = Graph.Inputs.Select(i => i.Name).ToHashSet();
        // Strings exist only as values known when the plan is built: a string input is always folded by value.
        var found = Graph.Inputs.Where(i => i.ElementType == ElementType.String).Select(i => i.Name).ToHashSet();
        var seen = new HashSet<string>();
        var pending = new Stack<string>();
        // Loop bodies and If branches too: what a body's operator needs may come from the graph's inputs (through outer-scope values).
        var producers = new Dictionary<string, Node>();
        foreach (var node in WithSubgraphNodes(Graph.Nodes))
            foreach (var output in node.Outputs)
                if (output.Length > 0) producers[output] = node;
        foreach (var node in WithSubgraphNodes(Graph.Nodes))
            if (operators.TryGetValue(node, out var op))
                for (int i = 0; i < node.Inputs.Length; i++)
                    if (node.Inputs[i].Length > 0 && op.NeedsValue(i)) pending.Push(node.Inputs[i]);
        while (pending.TryPop(out var value))
        {
            if (!seen.Add(value)) continue;
            if (graphInputs.Contains(value)) found.Add(value);
            // Shape and Size read only their input's shape, which every plan knows; SequenceLength only how the sequence
            // was built (whose positions and split sizes are traced from their own operators); OptionalHasElement only
            // whether its input holds a value.
            else if (producers.TryGetValue(value, out var producer) && producer.OpType is not ("Shape" or "Size" or "SequenceLength" or "OptionalHasElement"))
                foreach (var input in producer.AllInputs)
                    if (input.Length > 0) pending.Push(input);
        }
        return found;
    }

    /// <summary>The nodes and, after each, the nodes of its sub-graphs (Loop bodies, If branches), recursively.</summary>
    private static IEnumerable<Node> WithSubgraphNodes(IEnumerable<Node> nodes)
    {
        foreach (var node in nodes)
        {
            yield return node;
            foreach (var subgraph in node.Subgraphs.Values)
                foreach (var inner in WithSubgraphNodes(subgraph.Nodes)) yield return inner;
        }
    }

    private List<Node> Sort()
    {
        var given = new HashSet<string>(Graph.Initializers.Keys);
        foreach (var input in Graph.Inputs) given.Add(input.Name);
        return Topological(Graph.Nodes, given.Contains,
            node => FisherKernelsException.Format($"model '{Graph.Source}': the graph has a cycle or an unproduced value at {node.Describe()}"));
    }

    /// <summary>
    /// <paramref name="nodes"/> ordered so that each reads only values that are <paramref name="given"/> or made by an
    /// earlier node, keeping file order where it can (ONNX files usually are ordered already).
    /// </summary>
    internal static List<Node> Topological(IReadOnlyList<Node> nodes, Func<string, bool> given, Func<Node, FisherKernelsException> stuck)
    {
        var made = new HashSet<string>();
        var remaining = new List<Node>(nodes);
        var order = new List<Node>(remaining.Count);
        while (remaining.Count > 0)
        {
            int before = order.Count;
            var next = new List<Node>();
            foreach (var node in remaining)
            {
                if (node.AllInputs.All(i => i.Length == 0 || given(i) || made.Contains(i)))
                {
                    order.Add(node);
                    foreach (var o in node.Outputs) if (o.Length > 0) made.Add(o);
                }
                else next.Add(node);
            }
            if (order.Count == before) throw stuck(next[0]);
            remaining = next;
        }
        return order;
    }
}

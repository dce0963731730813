using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// An imported model ready to execute: operators made once per node (from the registry, on first
/// use), the nodes in a topological order, and a small cache of plans per input shape.
/// </summary>
public sealed class OnnxModel
{
    private const int CachedPlans = 4;

    private readonly Dictionary<Node, Operator> operators = [];
    private readonly LinkedList<(string Key, ExecutionPlan Plan)> plans = new();
    private IReadOnlyList<Node>? topologicalOrder;
    private OpContext? foldingContext;

    public OnnxModel(OnnxGraph graph) => Graph = graph;

    public static OnnxModel Load(string path) => new(OnnxImporter.Load(path));

    public OnnxGraph Graph { get; }

    public IReadOnlyList<Layer> Layers => layers ??= LayerDiscovery.Discover(Graph);
    private IReadOnlyList<Layer>? layers;

    /// <summary>Nodes ordered so that every value is produced before it is read (ONNX files usually are already).</summary>
    public IReadOnlyList<Node> TopologicalOrder => topologicalOrder ??= Sort();

    /// <summary>Backend for constant folding (plan build): single-threaded CPU.</summary>
    internal OpContext FoldingContext => foldingContext ??= new OpContext(new Backends.Cpu.CpuBackend(1));

    /// <summary>
    /// Every node's operator, made now: an operator outside the supported set is reported here,
    /// naming its type, domain and node.
    /// </summary>
    public void CheckSupported()
    {
        foreach (var node in TopologicalOrder) OperatorFor(node);
    }

    internal Operator OperatorFor(Node node)
    {
        if (operators.TryGetValue(node, out var op)) return op;
        long opset = Graph.Opsets.TryGetValue(node.Domain, out long v) ? v : node.Domain.Length == 0 ? Graph.DefaultOpset : 1;
        op = OperatorRegistry.Create(new OperatorNode(node.Name, node.OpType, node.Domain, (int)opset, node.Attributes,
                                                      node.Inputs.Length, node.Outputs.Length));
        operators[node] = op;
        return op;
    }

    /// <summary>
    /// The plan for these input shapes (built and cached on first use). All operators are checked first,
    /// so an unsupported one fails before any shape work or compute.
    /// </summary>
    public ExecutionPlan GetPlan(IReadOnlyDictionary<string, int[]> inputShapes, IReadOnlySet<string>? variables = null, bool keepAll = false)
    {
        variables ??= new HashSet<string>();
        string key = string.Join(";", inputShapes.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}=[{ShapeUtil.Format(kv.Value)}]"))
                     + "|" + string.Join(",", variables.Order(StringComparer.Ordinal)) + "|" + keepAll;
        for (var n = plans.First; n is not null; n = n.Next)
            if (n.Value.Key == key)
            {
                plans.Remove(n);
                plans.AddFirst(n);
                return n.Value.Plan;
            }
        CheckSupported();
        var plan = ExecutionPlan.Build(this, inputShapes, variables, keepAll);
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
            var targets = layerOutputsOnly ? Layers.SelectMany(l => l.Applications.Select(a => a.OutputValue)) : null;
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

    private List<Node> Sort()
    {
        var available = new HashSet<string>(Graph.Initializers.Keys);
        foreach (var input in Graph.Inputs) available.Add(input.Name);
        var remaining = new List<Node>(Graph.Nodes);
        var order = new List<Node>(remaining.Count);
        while (remaining.Count > 0)
        {
            int before = order.Count;
            var next = new List<Node>();
            foreach (var node in remaining)
            {
                if (node.Inputs.All(i => i.Length == 0 || available.Contains(i)))
                {
                    order.Add(node);
                    foreach (var o in node.Outputs) if (o.Length > 0) available.Add(o);
                }
                else next.Add(node);
            }
            if (order.Count == before)
                throw FisherKernelsException.Format($"model '{Graph.Source}': the graph has a cycle or an unproduced value at {next[0].Describe()}");
            remaining = next;
        }
        return order;
    }
}

using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// Binds nodes into a plan and rewrites control flow and sequences into plain operators as it goes: a Loop whose
/// trip count and condition are known when the plan is built is unrolled, an If with a known condition becomes its
/// branch, and a sequence is the list of its tensor values, so SequenceAt is a view of one of them, SplitToSequence
/// a Split and ConcatFromSequence a Concat; SequenceMap inlines its body once per element; an optional value is the
/// value it holds (Optional and OptionalGetElement are views of it) or none, which is known when the plan is built, so
/// OptionalHasElement is a constant. Fusion, the buffer pool and the derivative passes then see only plain
/// operators. What would need data known only when the plan runs is refused, naming the node.
/// </summary>
internal sealed class Expansion(ExecutionPlan plan, List<(Node Node, Operator Op)> pending)
{
    /// <summary>Opset of the nodes made here: Split, Squeeze and Unsqueeze take their sizes and axes as inputs.</summary>
    private const int MadeOpset = 17;

    /// <summary>Nodes that unrolling may add in one plan: more means a loop a plan should not be built for.</summary>
    private const int MaxUnrolledNodes = 200_000;

    /// <summary>A sequence value: the names of its tensor values, in order, and their element type (null while unknown: empty and untyped).</summary>
    private sealed record Sequence(ElementType? ElementType, IReadOnlyList<string> Elements);

    /// <summary>The names one unrolled iteration or inlined branch gives its sub-graph's values; others resolve in the enclosing scope.</summary>
    private sealed class Scope(Scope? parent, string prefix)
    {
        private readonly Dictionary<string, string> names = [];

        /// <summary>Prepended to the names of the nodes and values made in this scope (errors and profiles show where they came from).</summary>
        public string Prefix { get; } = prefix;

        public string Resolve(string name) =>
            name.Length == 0 ? name : names.TryGetValue(name, out var bound) ? bound : parent is null ? name : parent.Resolve(name);

        public void Bind(string name, string value) => names[name] = value;
    }

    private readonly Dictionary<string, Sequence> sequences = [];
    /// <summary>Optional values that hold nothing (an optional that holds a value is that value).</summary>
    private readonly HashSet<string> nones = [];
    private readonly Scope root = new(null, "");
    private int unrolled, fresh;

    /// <summary>Binds a node of the graph.</summary>
    public void Bind(Node node, Operator op) => Bind(node, op, root);

    /// <summary>Throws unless <paramref name="name"/> is a tensor value of the plan.</summary>
    public void CheckTensor(string name, string what)
    {
        if (sequences.ContainsKey(name))
            throw FisherKernelsException.Unsupported($"model '{plan.Model.Graph.Source}': {what} is a sequence, where a tensor is expected");
        plan.Id(name);
    }

    /// <summary>A sequence graph input: the tensor values its elements arrived as.</summary>
    public void DeclareSequence(string name, ElementType type, IReadOnlyList<string> elements) => sequences[name] = new Sequence(type, elements);

    /// <summary>An optional graph input that is not given: it holds nothing.</summary>
    public void DeclareNone(string name) => nones.Add(name);

    /// <summary>Whether <paramref name="name"/> is an optional value that holds nothing.</summary>
    public bool IsNone(string name) => nones.Contains(name);

    /// <summary>The element values of sequence <paramref name="name"/>, or null when it is not a sequence.</summary>
    public IReadOnlyList<string>? ElementsOf(string name) => sequences.TryGetValue(name, out var sequence) ? sequence.Elements : null;

    private void Bind(Node node, Operator op, Scope scope)
    {
        // Identity of a sequence (or of an optional one that is given) is the same list of tensors; of an empty optional, empty.
        if (node.OpType == "Identity" && (sequences.ContainsKey(node.Inputs[0]) || nones.Contains(node.Inputs[0])))
        {
            Alias(node, node.Outputs[0], node.Inputs[0]);
            return;
        }
        if (op is not ExpandedAtPlanBuild expanded)
        {
            foreach (var input in node.Inputs)
            {
                if (sequences.ContainsKey(input)) throw Unsupported(op, $"input '{input}' is a sequence; only the sequence operators, Loop and If read sequences");
                if (nones.Contains(input)) throw Error(op, $"input '{input}' is an optional value that holds nothing");
            }
            plan.BindNode(node, op, pending);
            return;
        }
        switch (node.OpType)
        {
            case "Loop": Loop(node, op, scope); break;
            case "If": If(node, op, scope); break;
            case "SequenceEmpty":
                sequences[node.Outputs[0]] = new Sequence(expanded.ElementTypeOf(node.Attributes.GetInt("dtype", 1)), []);
                break;
            case "SequenceConstruct":
                var type = Tensor(op, node.Inputs[0]).Type;
                foreach (var input in node.Inputs)
                    if (Tensor(op, input).Type != type) throw Error(op, $"input '{input}' is {Tensor(op, input).Type}, the first is {type}");
                sequences[node.Outputs[0]] = new Sequence(type, node.Inputs);
                break;
            case "SequenceInsert": Insert(node, op); break;
            case "SequenceErase":
            {
                var sequence = SequenceOf(op, node.Inputs[0]);
                int at = Position(op, node, 1, sequence.Elements.Count, sequence.Elements.Count - 1, inclusiveEnd: false);
                sequences[node.Outputs[0]] = sequence with { Elements = sequence.Elements.Where((_, i) => i != at).ToList() };
                break;
            }
            case "SequenceAt":
            {
                var sequence = SequenceOf(op, node.Inputs[0]);
                if (node.Inputs[1].Length == 0) throw Error(op, "input 1 (position) is required");
                Alias(node, node.Outputs[0], sequence.Elements[Position(op, node, 1, sequence.Elements.Count, 0, inclusiveEnd: false)]);
                break;
            }
            case "SequenceLength":
                plan.AddConstant(node.Outputs[0], new NdArray<long>([], [SequenceOf(op, node.Inputs[0]).Elements.Count]));
                break;
            case "SplitToSequence": SplitToSequence(node, op); break;
            case "ConcatFromSequence": ConcatFromSequence(node, op); break;
            case "SequenceMap": SequenceMap(node, op, scope); break;
            // Optional(x) is x; Optional() with a type holds nothing.
            case "Optional":
                if (node.Inputs.Length == 0 || node.Inputs[0].Length == 0) nones.Add(node.Outputs[0]);
                else Alias(node, node.Outputs[0], Given(op, node.Inputs[0]));
                break;
            // Whether a value is held is known when the plan is built (opset 18: an omitted input holds nothing; a tensor or sequence does hold).
            case "OptionalHasElement":
                bool holds = node.Inputs.Length > 0 && node.Inputs[0].Length > 0 && !nones.Contains(Given(op, node.Inputs[0]));
                plan.AddConstant(node.Outputs[0], new NdArray<bool>([], [holds]));
                break;
            case "OptionalGetElement":
                if (nones.Contains(node.Inputs[0])) throw Error(op, $"input '{node.Inputs[0]}' is an optional value that holds nothing");
                Alias(node, node.Outputs[0], Given(op, node.Inputs[0]));
                break;
            default: throw new FisherKernelsException(ErrorKind.Internal, $"{op.Node}: no expansion");
        }
    }

    /// <summary>
    /// Loop(M, cond, v…) unrolled: each iteration binds the body's inputs (iteration number, condition, the carried
    /// values) and inlines its nodes; the next condition must then be known. Scan outputs are stacked along a new axis 0.
    /// </summary>
    private void Loop(Node node, Operator op, Scope scope)
    {
        var body = Subgraph(node, op, "body");
        int carried = node.Inputs.Length - 2, scans = body.Outputs.Count - 1 - carried;
        if (body.Inputs.Count != carried + 2)
            throw Error(op, $"the body has {body.Inputs.Count} inputs, expected {carried + 2} (iteration number, condition and {carried} loop-carried values)");
        if (scans < 0 || node.Outputs.Length > carried + scans)
            throw Error(op, $"the body has {body.Outputs.Count} outputs and the node {node.Outputs.Length}, for {carried} loop-carried values");
        if (node.Inputs[0].Length == 0 && node.Inputs[1].Length == 0)
            throw Unsupported(op, "has neither a trip count nor a condition (it would never end)");
        long? trips = node.Inputs[0].Length == 0 ? null : KnownInteger(op, node.Inputs[0], "the trip count");
        bool condition = node.Inputs[1].Length == 0 || KnownBool(op, node.Inputs[1], "the condition");

        var values = node.Inputs[2..];
        var stacked = Enumerable.Range(0, scans).Select(_ => new List<string>()).ToArray();
        var constants = ConstantsScope(body, scope, $"{node.Name}/");
        for (long i = 0; (trips is null || i < trips) && condition; i++)
        {
            var iteration = new Scope(constants, $"{node.Name}#{i}/");
            if (body.Inputs[0].Length > 0) iteration.Bind(body.Inputs[0], Constant(iteration.Prefix + "iteration", new NdArray<long>([], [i])));
            if (body.Inputs[1].Length > 0) iteration.Bind(body.Inputs[1], Constant(iteration.Prefix + "condition", new NdArray<bool>([], [condition])));
            for (int j = 0; j < carried; j++) iteration.Bind(body.Inputs[2 + j], values[j]);
            Inline(body, iteration, op);
            condition = KnownBool(op, iteration.Resolve(body.Outputs[0]), "the condition the body computes");
            values = Enumerable.Range(0, carried).Select(j => iteration.Resolve(body.Outputs[1 + j])).ToArray();
            for (int k = 0; k < scans; k++) stacked[k].Add(iteration.Resolve(body.Outputs[1 + carried + k]));
        }
        for (int j = 0; j < carried && j < node.Outputs.Length; j++) Alias(node, node.Outputs[j], values[j]);
        for (int k = 0; carried + k < node.Outputs.Length; k++)
        {
            string output = node.Outputs[carried + k];
            if (output.Length == 0) continue;
            if (stacked[k].Count == 0) throw Unsupported(op, $"runs no iteration, so the shape of scan output '{output}' is unknown");
            var rows = stacked[k].Select(v => Unsqueezed(node, v, 0)).ToArray();
            Make(node, "Concat", rows, [output], new OperatorAttributes().Set("axis", 0L));
        }
    }

    /// <summary>If(cond) with a known condition: the chosen branch inlined, its outputs become the node's.</summary>
    private void If(Node node, Operator op, Scope scope)
    {
        bool condition = KnownBool(op, node.Inputs[0], "the condition");
        string name = condition ? "then_branch" : "else_branch";
        var branch = Subgraph(node, op, name);
        if (branch.Outputs.Count != node.Outputs.Length)
            throw Error(op, $"{name} has {branch.Outputs.Count} outputs, the node {node.Outputs.Length}");
        var inlined = ConstantsScope(branch, scope, $"{node.Name}/{name}/");
        Inline(branch, inlined, op);
        for (int j = 0; j < node.Outputs.Length; j++) Alias(node, node.Outputs[j], inlined.Resolve(branch.Outputs[j]));
    }

    private void Insert(Node node, Operator op)
    {
        var sequence = SequenceOf(op, node.Inputs[0]);
        var tensor = Tensor(op, node.Inputs[1]);
        if (sequence.ElementType is { } type && tensor.Type != type)
            throw Error(op, $"inserts {tensor.Type} '{node.Inputs[1]}' into a sequence of {type}");
        int count = sequence.Elements.Count, at = Position(op, node, 2, count, count, inclusiveEnd: true);
        var elements = sequence.Elements.ToList();
        elements.Insert(at, node.Inputs[1]);
        sequences[node.Outputs[0]] = new Sequence(tensor.Type, elements);
    }

    /// <summary>SplitToSequence as one Split (sizes from 'split', or parts of 1 squeezed away when keepdims is 0).</summary>
    private void SplitToSequence(Node node, Operator op)
    {
        var x = Tensor(op, node.Inputs[0]);
        if (x.Shape.Length == 0) throw Error(op, "cannot split a scalar");
        long axisAttribute = node.Attributes.GetInt("axis", 0);
        int axis = (int)(axisAttribute < 0 ? axisAttribute + x.Shape.Length : axisAttribute);
        if (axis < 0 || axis >= x.Shape.Length) throw Error(op, $"axis {axisAttribute} is out of range for rank {x.Shape.Length}");
        int dim = x.Shape[axis];
        bool hasSplit = node.Inputs.Length > 1 && node.Inputs[1].Length > 0;
        long[] sizes;
        if (!hasSplit) sizes = Enumerable.Repeat(1L, dim).ToArray();
        else
        {
            var split = KnownInts(op, node.Inputs[1], "'split'");
            if (Tensor(op, node.Inputs[1]).Shape.Length == 0)
            {
                if (split[0] <= 0) throw Error(op, $"split {split[0]} must be positive");
                sizes = Enumerable.Range(0, (int)((dim + split[0] - 1) / split[0])).Select(i => Math.Min(split[0], dim - i * split[0])).ToArray();
            }
            else if (split.Any(s => s < 0) || split.Sum() != dim)
                throw Error(op, $"split [{string.Join(", ", split)}] does not add up to dimension {dim} of axis {axis}");
            else sizes = split;
        }
        bool squeeze = !hasSplit && node.Attributes.GetInt("keepdims", 1) == 0;
        var parts = sizes.Select((_, i) => Fresh($"{node.Outputs[0]}[{i}]")).ToArray();
        if (parts.Length == 1) Make(node, "Identity", [node.Inputs[0]], parts);
        else if (parts.Length > 1)
            Make(node, "Split", [node.Inputs[0], Constant($"{node.Name}/sizes", new NdArray<long>([sizes.Length], sizes))], parts,
                 new OperatorAttributes().Set("axis", (long)axis));
        if (squeeze)
        {
            string axes = Constant($"{node.Name}/axes", new NdArray<long>([1], [axis]));
            parts = parts.Select(part =>
            {
                string squeezed = Fresh(part + "/squeezed");
                Make(node, "Squeeze", [part, axes], [squeezed]);
                return squeezed;
            }).ToArray();
        }
        sequences[node.Outputs[0]] = new Sequence(x.Type, parts);
    }

    /// <summary>ConcatFromSequence as one Concat (each element unsqueezed first with new_axis).</summary>
    private void ConcatFromSequence(Node node, Operator op)
    {
        var sequence = SequenceOf(op, node.Inputs[0]);
        if (sequence.Elements.Count == 0) throw Unsupported(op, "concatenates an empty sequence (the result has no known shape)");
        long axis = node.Attributes.GetInt("axis", 0);
        var parts = node.Attributes.GetInt("new_axis", 0) == 1
            ? sequence.Elements.Select(e => Unsqueezed(node, e, axis)).ToArray()
            : sequence.Elements.ToArray();
        if (parts.Length == 1) Alias(node, node.Outputs[0], parts[0]);
        else Make(node, "Concat", parts, [node.Outputs[0]], new OperatorAttributes().Set("axis", axis));
    }

    /// <summary>
    /// SequenceMap: the body inlined once per element of the input sequence, its first input bound to that element and
    /// each further one to the same element of an additional sequence (of the same length) or to an additional tensor;
    /// the body's outputs, one per iteration, make the output sequences.
    /// </summary>
    private void SequenceMap(Node node, Operator op, Scope scope)
    {
        var body = Subgraph(node, op, "body");
        if (body.Inputs.Count != node.Inputs.Length)
            throw Error(op, $"the body has {body.Inputs.Count} inputs, the node {node.Inputs.Length}");
        if (body.Outputs.Count != node.Outputs.Length)
            throw Error(op, $"the body has {body.Outputs.Count} outputs, the node {node.Outputs.Length}");
        var first = SequenceOf(op, node.Inputs[0]);
        int count = first.Elements.Count;
        var others = node.Inputs.Skip(1).Select(input =>
        {
            if (!sequences.TryGetValue(input, out var sequence)) return (Sequence?)null;
            return sequence.Elements.Count == count ? sequence
                : throw Error(op, $"sequence '{input}' has {sequence.Elements.Count} elements, '{node.Inputs[0]}' has {count}");
        }).ToArray();
        var results = Enumerable.Range(0, node.Outputs.Length).Select(_ => new List<string>()).ToArray();
        var constants = ConstantsScope(body, scope, $"{node.Name}/");
        for (int i = 0; i < count; i++)
        {
            var iteration = new Scope(constants, $"{node.Name}#{i}/");
            iteration.Bind(body.Inputs[0], first.Elements[i]);
            for (int j = 1; j < node.Inputs.Length; j++)
                iteration.Bind(body.Inputs[j], others[j - 1] is { } sequence ? sequence.Elements[i] : Given(op, node.Inputs[j]));
            Inline(body, iteration, op);
            for (int k = 0; k < results.Length; k++)
            {
                string value = iteration.Resolve(body.Outputs[k]);
                if (sequences.ContainsKey(value) || nones.Contains(value) || !plan.HasValue(value))
                    throw Error(op, $"body output '{body.Outputs[k]}' must be a tensor (it becomes one element of output '{node.Outputs[k]}')");
                results[k].Add(value);
            }
        }
        for (int k = 0; k < results.Length; k++)
            if (node.Outputs[k].Length > 0)
                sequences[node.Outputs[k]] = new Sequence(results[k].Count == 0 ? null : plan.Info(results[k][0]).Type, results[k]);
    }

    /// <summary>Binds the sub-graph's nodes in <paramref name="scope"/>, each under a new name.</summary>
    private void Inline(Subgraph graph, Scope scope, Operator owner)
    {
        foreach (var node in Ordered(graph, owner))
        {
            if (++unrolled > MaxUnrolledNodes)
                throw Unsupported(owner, $"unrolling it makes more than {MaxUnrolledNodes} nodes; loops that long are not supported");
            var outputs = new string[node.Outputs.Length];
            for (int j = 0; j < outputs.Length; j++)
            {
                if (node.Outputs[j].Length == 0) { outputs[j] = ""; continue; }
                outputs[j] = Fresh(scope.Prefix + node.Outputs[j]);
                scope.Bind(node.Outputs[j], outputs[j]);
            }
            var copy = new Node
            {
                Name = scope.Prefix + node.Name, OpType = node.OpType, Domain = node.Domain,
                Inputs = node.Inputs.Select(scope.Resolve).ToArray(), Outputs = outputs, Attributes = node.Attributes,
                Subgraphs = node.Subgraphs, ImplicitInputs = node.ImplicitInputs.Select(scope.Resolve).ToArray(),
            };
            Bind(copy, plan.Model.CreateOperator(copy), scope);
        }
        // Layer applications in the sub-graph are found in this copy under the names the scope gives its values.
        foreach (var node in graph.Nodes) plan.RecordInlined(node, scope.Resolve);
    }

    /// <summary>A scope under <paramref name="parent"/> with the sub-graph's constants bound (once for all the iterations of a loop).</summary>
    private Scope ConstantsScope(Subgraph graph, Scope parent, string prefix)
    {
        var scope = new Scope(parent, prefix);
        foreach (var (name, value) in graph.Constants) scope.Bind(name, Constant(prefix + name, value));
        return scope;
    }

    /// <summary>The sub-graph's nodes so that each value is made before it is read (values it does not make come from outside).</summary>
    private static List<Node> Ordered(Subgraph graph, Operator owner)
    {
        var madeInside = new HashSet<string>(graph.Nodes.SelectMany(n => n.Outputs));
        return OnnxModel.Topological(graph.Nodes, name => !madeInside.Contains(name),
            node => Error(owner, $"sub-graph '{graph.Name}' has a cycle at {node.Describe()}"));
    }

    /// <summary>Makes <paramref name="target"/> the value <paramref name="source"/>: the same sequence, or a view of the same tensor.</summary>
    private void Alias(Node node, string target, string source)
    {
        if (target.Length == 0) return;
        if (nones.Contains(source)) nones.Add(target);
        else if (sequences.TryGetValue(source, out var sequence)) sequences[target] = sequence;
        else Make(node, "Identity", [source], [target]);
    }

    private string Unsqueezed(Node node, string value, long axis)
    {
        string result = Fresh(value + "/unsqueezed");
        Make(node, "Unsqueeze", [value, Constant($"{node.Name}/axes{axis}", new NdArray<long>([1], [axis]))], [result]);
        return result;
    }

    /// <summary>Binds a plain node made for <paramref name="owner"/>'s expansion (named after it).</summary>
    private void Make(Node owner, string opType, string[] inputs, string[] outputs, OperatorAttributes? attributes = null)
    {
        var node = new Node
        {
            Name = $"{owner.Name}/{opType}_{++fresh}", OpType = opType, Domain = "", Inputs = inputs, Outputs = outputs,
            Attributes = attributes ?? new OperatorAttributes(),
        };
        plan.BindNode(node, plan.Model.CreateOperator(node, MadeOpset), pending);
    }

    /// <summary>A value known at plan build, under a new name based on <paramref name="name"/>; returns the name.</summary>
    private string Constant(string name, NdArray value)
    {
        name = Fresh(name);
        plan.AddConstant(name, value);
        return name;
    }

    /// <summary><paramref name="name"/>, or it with a suffix when the plan already has a value so named.</summary>
    private string Fresh(string name)
    {
        string candidate = name;
        while (plan.HasValue(candidate) || sequences.ContainsKey(candidate) || nones.Contains(candidate)) candidate = $"{name}~{++fresh}";
        return candidate;
    }

    /// <summary><paramref name="name"/>, checked to be a value of the plan: a tensor, a sequence or an optional that holds nothing.</summary>
    private string Given(Operator op, string name)
    {
        if (!sequences.ContainsKey(name) && !nones.Contains(name) && !plan.HasValue(name)) throw Error(op, $"input '{name}' is not a value of the model");
        return name;
    }

    private Sequence SequenceOf(Operator op, string name) =>
        sequences.TryGetValue(name, out var sequence) ? sequence
        : throw Error(op, plan.HasValue(name) ? $"input '{name}' is a tensor, not a sequence" : $"input '{name}' is not a value of the model");

    private TensorInfo Tensor(Operator op, string name)
    {
        if (sequences.ContainsKey(name)) throw Error(op, $"input '{name}' is a sequence, not a tensor");
        if (nones.Contains(name)) throw Error(op, $"input '{name}' is an optional value that holds nothing, not a tensor");
        return plan.HasValue(name) ? plan.Info(name) : throw Error(op, $"input '{name}' is not a value of the model");
    }

    /// <summary>The position input <paramref name="input"/> (default <paramref name="absent"/>), checked against a sequence of <paramref name="count"/> and made non-negative.</summary>
    private int Position(Operator op, Node node, int input, int count, int absent, bool inclusiveEnd)
    {
        if (input >= node.Inputs.Length || node.Inputs[input].Length == 0)
            return absent >= 0 ? absent : throw Error(op, "cannot erase from an empty sequence");
        long at = KnownInteger(op, node.Inputs[input], "the position");
        long end = inclusiveEnd ? count : count - 1;
        if (at < -count || at > end) throw Error(op, $"position {at} is out of range for a sequence of {count}");
        return (int)(at < 0 ? at + count : at);
    }

    private long KnownInteger(Operator op, string name, string what)
    {
        var values = KnownInts(op, name, what);
        return values.Length == 1 ? values[0] : throw Error(op, $"{what} ('{name}') must hold one value, got {values.Length}");
    }

    private long[] KnownInts(Operator op, string name, string what) =>
        Tensors.ToLongs(Known(op, name, what)) ?? throw Error(op, $"{what} ('{name}') must be int64 or int32, got {plan.Info(name).Type}");

    private bool KnownBool(Operator op, string name, string what)
    {
        var value = Known(op, name, what);
        if (value.Length != 1) throw Error(op, $"{what} ('{name}') must hold one value, got {value.Length}");
        return value switch
        {
            NdArray<bool> b => b.Data[0],
            _ => Tensors.ToLongs(value) is [long v] ? v != 0 : throw Error(op, $"{what} ('{name}') must be bool, got {value.ElementType}"),
        };
    }

    private NdArray Known(Operator op, string name, string what)
    {
        Tensor(op, name);
        return plan.KnownValue(name) ?? throw Unsupported(op,
            $"{what} ('{name}') must be known when the plan is built, but it depends on the data of the inputs or parameters; control flow that depends on data is not supported");
    }

    private Subgraph Subgraph(Node node, Operator op, string attribute) =>
        node.Subgraphs.TryGetValue(attribute, out var graph) ? graph : throw Error(op, $"attribute '{attribute}' (a graph) is required");

    private static FisherKernelsException Error(Operator op, string message) => FisherKernelsException.Format($"{op.Node}: {message}");

    private static FisherKernelsException Unsupported(Operator op, string message) => FisherKernelsException.Unsupported($"{op.Node}: {message}");
}

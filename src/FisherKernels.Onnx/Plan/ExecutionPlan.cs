using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// The graph bound to one set of concrete input shapes: shape sub-graphs folded to constants (by
/// running the operators' Forward at build time), every other node a step with its input and output
/// arrays bound once. Buffers are pooled by element type and length and reused once their last reader
/// has run (liveness), unless the plan keeps every value for a backward pass. Running the plan
/// allocates nothing.
/// </summary>
public sealed class ExecutionPlan
{
    /// <summary>One node to run: its operator and the arrays it reads and writes, bound at build time.</summary>
    internal sealed record Step(Node Node, Operator Op, NdArray?[] Inputs, NdArray[] Outputs, int[] InputIds, int[] OutputIds);

    /// <summary>A value of the graph: its type and shape, and either its constant or its bound buffer.</summary>
    internal sealed class Value(string name, TensorInfo info)
    {
        public string Name { get; } = name;
        public TensorInfo Info { get; set; } = info;
        public NdArray? Array { get; set; }
        /// <summary>Known at build time (initializer that is not a variable, or folded).</summary>
        public bool IsConstant { get; set; }
        /// <summary>Depends on a variable initializer (derivatives flow through it).</summary>
        public bool DependsOnVariable { get; set; }
        public int Storage { get; set; } = -1;
    }

    private readonly Dictionary<string, int> ids = [];
    private readonly List<Value> values = [];
    private readonly List<Step> steps = [];
    private readonly List<(int Id, NdArray Buffer)> graphInputs = [];
    /// <summary>The tensors the graph's inputs arrive as and its outputs leave as (a sequence's: its elements).</summary>
    private readonly List<string> inputNames = [], outputNames = [];
    private readonly Dictionary<string, int> sequenceLengths = [];
    /// <summary>Graph inputs folded by value (<see cref="OnnxModel.ValueInputs"/>): a run must give these same values.</summary>
    private readonly List<(int Id, NdArray Value)> foldedInputs = [];

    public OnnxModel Model { get; }
    public IReadOnlyDictionary<string, int[]> InputShapes { get; }
    public IReadOnlySet<string> Variables { get; }
    /// <summary>Bytes of the pooled buffers (activations), for memory reports.</summary>
    public long BufferBytes { get; private set; }

    internal IReadOnlyList<Step> Steps => steps;
    /// <summary>The values that leave the plan as graph outputs (a sequence output's elements, each).</summary>
    internal IReadOnlyList<string> OutputValueNames => outputNames;

    /// <summary>The number of elements of graph output <paramref name="output"/> when it is a sequence (read them as
    /// <see cref="ValueInfo.ElementName"/>), or null for a tensor output.</summary>
    public int? SequenceLength(string output) => sequenceLengths.TryGetValue(output, out int n) ? n : null;

    /// <summary>Whether graph output <paramref name="output"/> is an optional value that holds nothing in this plan (it has no value to read).</summary>
    public bool HoldsNothing(string output) => noneOutputs.Contains(output);

    private readonly HashSet<string> noneOutputs = [];
    internal IReadOnlyList<Value> Values => values;

    /// <summary>
    /// Bit i set: input i of <paramref name="step"/> is an initializer, whose data stays the same from run to run
    /// (<see cref="OpContext.ConstantInputs"/>, for the derivative passes).
    /// </summary>
    internal int InitializerInputs(Step step)
    {
        int bits = 0;
        for (int i = 0; i < step.InputIds.Length && i < 32; i++)
            if (step.InputIds[i] >= 0 && Model.Graph.Initializers.ContainsKey(values[step.InputIds[i]].Name)) bits |= 1 << i;
        return bits;
    }

    private ExecutionPlan(OnnxModel model, IReadOnlyDictionary<string, int[]> inputShapes, IReadOnlySet<string> variables)
    {
        Model = model;
        InputShapes = inputShapes;
        Variables = variables;
    }

    /// <summary>
    /// Builds the plan for <paramref name="inputShapes"/> (every graph input given); the graph inputs in
    /// <paramref name="values"/> are folded as those constants (a run must give the same values). Initializers in
    /// <paramref name="variables"/> are not folded into constants (derivatives are taken through them);
    /// with <paramref name="keepAll"/> every value survives the run (the backward pass reads them).
    /// Unless <paramref name="fuse"/> is false, operator chains are fused (<see cref="Fusion"/>; in a plan with
    /// neither, an inference plan, also those without derivatives) and their intermediate values are not computed.
    /// Unsupported operators and shape errors surface here, before anything runs.
    /// </summary>
    internal static ExecutionPlan Build(OnnxModel model, IReadOnlyDictionary<string, int[]> inputShapes,
                                        IReadOnlySet<string> variables, bool keepAll, bool fuse = true,
                                        IReadOnlyDictionary<string, NdArray>? values = null)
    {
        var plan = new ExecutionPlan(model, inputShapes, variables);
        plan.Bind(keepAll, fuse, values ?? new Dictionary<string, NdArray>());
        return plan;
    }

    /// <summary>
    /// <see cref="BufferBytes"/> of the plan <see cref="Build"/> would make, without allocating its buffers (the memory plan
    /// of SPEC §3 states a batch's activations before any runs; in 64 bits, as a long batch's logits pass 2³¹ bytes).
    /// </summary>
    internal static long MeasureBuffers(OnnxModel model, IReadOnlyDictionary<string, int[]> inputShapes, IReadOnlySet<string> variables, bool keepAll,
                                        IReadOnlyDictionary<string, NdArray>? values = null)
    {
        var plan = new ExecutionPlan(model, inputShapes, variables) { measureOnly = true };
        plan.Bind(keepAll, fuse: true, values ?? new Dictionary<string, NdArray>());
        return plan.BufferBytes;
    }

    /// <summary><see cref="MeasureBuffers(OnnxModel, IReadOnlyDictionary{string, int[]}, IReadOnlySet{string}, bool, IReadOnlyDictionary{string, NdArray}?)"/> for these inputs, as <see cref="OnnxModel.GetPlan(IReadOnlyDictionary{string, NdArray}, IReadOnlySet{string}?, bool)"/> builds it.</summary>
    internal static long MeasureBuffers(OnnxModel model, IReadOnlyDictionary<string, NdArray> inputs, IReadOnlySet<string> variables, bool keepAll) =>
        MeasureBuffers(model, inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape), variables, keepAll,
                       inputs.Where(kv => model.ValueInputs.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value));

    private bool measureOnly;

    /// <summary>The index of a value by name; throws naming it when the graph has no such value.</summary>
    internal int Id(string name) => ids.TryGetValue(name, out int id) ? id
        : throw FisherKernelsException.Argument($"model '{Model.Graph.Source}' has no value named '{name}'");

    internal bool HasValue(string name) => ids.ContainsKey(name);

    public TensorInfo Info(string name) => values[Id(name)].Info;

    /// <summary>The array holding <paramref name="name"/> after <see cref="Run"/> (valid until the next run; constants always).</summary>
    public NdArray Get(string name)
    {
        var value = values[Id(name)];
        return value.Array ?? throw new FisherKernelsException(ErrorKind.Internal, $"value '{name}' has no storage in this plan");
    }

    /// <summary>
    /// Copies the graph inputs in and runs every step. Inputs must have the shapes the plan was built for.
    /// With a <paramref name="profile"/> of this plan, each step's time is added to it.
    /// </summary>
    public void Run(OpContext context, IReadOnlyDictionary<string, NdArray> inputs, PlanProfile? profile = null)
    {
        if (profile is not null && profile.Plan != this) throw FisherKernelsException.Argument("the profile belongs to another plan");
        BindInputs(inputs);
        if (profile is null)
        {
            foreach (var step in steps)
                if (!step.Op.IsView) step.Op.Forward(context, step.Inputs, step.Outputs);
            return;
        }
        profile.BeginRun();
        for (int s = 0; s < steps.Count; s++)
        {
            if (steps[s].Op.IsView) continue;
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            steps[s].Op.Forward(context, steps[s].Inputs, steps[s].Outputs);
            profile.Add(s, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        }
    }

    /// <summary>The graph inputs' buffers of this plan (a <see cref="DevicePlan"/> uploads them from there).</summary>
    internal IEnumerable<NdArray> InputBuffers => graphInputs.Select(i => i.Buffer);

    /// <summary>Checks the inputs against the plan's shapes and folded values and copies them into the graph inputs' buffers.</summary>
    internal void BindInputs(IReadOnlyDictionary<string, NdArray> inputs)
    {
        foreach (var (id, value) in foldedInputs)
        {
            string name = values[id].Name;
            if (!inputs.TryGetValue(name, out var given)) throw FisherKernelsException.Argument($"input '{name}' is not given");
            if (!SameValue(given, value))
                throw FisherKernelsException.Argument($"input '{name}' differs from the value this plan was built for (it sets a shape: get the plan for these inputs)");
        }
        foreach (var (id, buffer) in graphInputs)
        {
            var value = values[id];
            if (!inputs.TryGetValue(value.Name, out var given))
                throw FisherKernelsException.Argument($"input '{value.Name}' is not given");
            if (!given.Shape.AsSpan().SequenceEqual(buffer.Shape) || given.ElementType != buffer.ElementType)
                throw FisherKernelsException.Argument($"input '{value.Name}' is {given.ElementType}[{ShapeUtil.Format(given.Shape)}], the plan expects {buffer.ElementType}[{ShapeUtil.Format(buffer.Shape)}]");
            Tensors.CopyElements(given, buffer);
        }
    }

    /// <summary>Every value survives a run (built with keepAll): no buffer is shared by two values.</summary>
    internal bool KeepsAll { get; private set; }

    private void Bind(bool keepAll, bool fuse, IReadOnlyDictionary<string, NdArray> inputValues)
    {
        KeepsAll = keepAll;
        var graph = Model.Graph;
        var sequenceInputs = new List<(string Name, ElementType Type, List<string> Elements)>();
        var noneInputs = new List<string>();
        foreach (var input in graph.Inputs)
        {
            if (input.IsSequence)
            {
                var elementType = input.ElementType ?? throw FisherKernelsException.Unsupported($"model '{graph.Source}': input '{input.Name}' is a sequence of an unsupported type");
                var elements = new List<string>();
                for (int i = 0; InputShapes.TryGetValue(ValueInfo.ElementName(input.Name, i), out var elementShape); i++)
                {
                    elements.Add(ValueInfo.ElementName(input.Name, i));
                    Add(elements[^1], new TensorInfo(elementType, elementShape));
                }
                foreach (var key in InputShapes.Keys)
                    if (key.StartsWith(input.Name + "[", StringComparison.Ordinal) && !elements.Contains(key))
                        throw FisherKernelsException.Argument($"model '{graph.Source}': input '{key}' is given, but sequence '{input.Name}' has its elements 0 to {elements.Count - 1} only (they are numbered from 0, without gaps)");
                if (input.IsOptional && elements.Count == 0)
                {
                    noneInputs.Add(input.Name);
                    continue;
                }
                inputNames.AddRange(elements);
                sequenceInputs.Add((input.Name, elementType, elements));
                continue;
            }
            if (input.IsOptional && !InputShapes.ContainsKey(input.Name))
            {
                noneInputs.Add(input.Name);
                continue;
            }
            inputNames.Add(input.Name);
            if (!InputShapes.TryGetValue(input.Name, out var shape))
                throw FisherKernelsException.Argument($"model '{graph.Source}': input '{input.Name}' is required");
            var type = input.ElementType ?? throw FisherKernelsException.Unsupported($"model '{graph.Source}': input '{input.Name}' has an unsupported element type");
            if (!inputValues.TryGetValue(input.Name, out var given))
            {
                Add(input.Name, new TensorInfo(type, shape));
                continue;
            }
            if (given.ElementType != type || !given.Shape.AsSpan().SequenceEqual(shape))
                throw FisherKernelsException.Argument($"input '{input.Name}' is {given.ElementType}[{ShapeUtil.Format(given.Shape)}], the model declares {type}");
            var value = Tensors.Allocate(type, (int[])shape.Clone());
            Tensors.CopyElements(given, value);
            var folded = Add(input.Name, new TensorInfo(type, value.Shape, value));
            folded.Array = value;
            folded.IsConstant = true;
            foldedInputs.Add((Id(input.Name), value));
        }
        foreach (var (name, array) in graph.Initializers)
        {
            bool variable = Variables.Contains(name);
            var v = Add(name, new TensorInfo(array.ElementType, array.Shape, variable ? null : array));
            v.Array = array;
            v.IsConstant = !variable;
            v.DependsOnVariable = variable;
        }

        var pending = new List<(Node Node, Operator Op)>();
        var expansion = new Expansion(this, pending);
        foreach (var (name, type, elements) in sequenceInputs) expansion.DeclareSequence(name, type, elements);
        foreach (var name in noneInputs) expansion.DeclareNone(name);
        foreach (var node in Model.TopologicalOrder) expansion.Bind(node, Model.OperatorFor(node));
        foreach (var output in graph.Outputs)
        {
            if (expansion.IsNone(output.Name))
            {
                noneOutputs.Add(output.Name);
                continue;
            }
            if (expansion.ElementsOf(output.Name) is not { } elements)
            {
                expansion.CheckTensor(output.Name, $"graph output '{output.Name}'");
                outputNames.Add(output.Name);
                continue;
            }
            // A sequence output's elements are read as name[i]: those names stand for the element values.
            for (int i = 0; i < elements.Count; i++)
            {
                string alias = ValueInfo.ElementName(output.Name, i);
                if (ids.TryGetValue(alias, out int other) && other != Id(elements[i]))
                    throw FisherKernelsException.Unsupported($"model '{graph.Source}': element {i} of output sequence '{output.Name}' would be named '{alias}', which another value has");
                ids[alias] = Id(elements[i]);
                outputNames.Add(elements[i]);
            }
            sequenceLengths[output.Name] = elements.Count;
        }
        if (fuse) pending = Fusion.Apply(this, pending, derivatives: keepAll || Variables.Count > 0);
        AllocateBuffers(pending, keepAll);
    }

    /// <summary>
    /// Binds one plain node: shapes inferred, folded to constants when its inputs are known (or its outputs follow
    /// from their shapes alone), else added to <paramref name="pending"/> to run.
    /// </summary>
    internal void BindNode(Node node, Operator op, List<(Node Node, Operator Op)> pending)
    {
        var inputInfos = new TensorInfo?[node.Inputs.Length];
        bool allConstant = true, dependsOnVariable = false;
        for (int i = 0; i < node.Inputs.Length; i++)
        {
            if (node.Inputs[i].Length == 0) continue;
            var v = values[Id(node.Inputs[i])];
            inputInfos[i] = v.Info;
            allConstant &= v.IsConstant;
            dependsOnVariable |= v.DependsOnVariable;
        }
        TensorInfo[] outputs;
        try { outputs = op.InferShapes(inputInfos); }
        catch (FisherKernelsException e) when (!e.Message.Contains(node.Name, StringComparison.Ordinal))
        {
            throw new FisherKernelsException(e.Kind, $"{op.Node}: {e.Message}", e);
        }
        if (outputs.Length != node.Outputs.Length)
            throw new FisherKernelsException(ErrorKind.Internal, $"{op.Node}: shape inference gave {outputs.Length} outputs for {node.Outputs.Length}");

        // Inputs that are not constant carry no value here (variables included), so an output value that
        // shape inference still knows (Shape, Size, …) does not depend on their data: it folds too.
        bool folded = allConstant || outputs.All(o => o.Value is not null);
        if (!folded && outputs.Any(o => o.Type == ElementType.String))
            throw FisherKernelsException.Unsupported($"{op.Node}: makes a string from values known only when the plan runs; strings are supported where they are known when the plan is built (a Cast to or from string of given or constant values)");
        if (folded && allConstant && outputs.Any(o => o.Value is null))
            outputs = Fold(op, node, inputInfos, outputs);
        for (int j = 0; j < outputs.Length; j++)
        {
            var v = Add(OutputName(node, j), folded ? outputs[j] : outputs[j] with { Value = null });
            v.IsConstant = folded;
            v.DependsOnVariable = dependsOnVariable && !folded;
            if (folded) v.Array = outputs[j].Value;
        }
        if (!folded) pending.Add((node, op));
    }

    /// <summary>Per sub-graph node, the names each inlined copy of its sub-graph (an unrolled iteration, a taken branch) gives its values.</summary>
    private readonly Dictionary<Node, List<Func<string, string>>> inlined = [];
    private readonly Dictionary<Layer, IReadOnlyList<LayerApplication>> applications = [];

    /// <summary>Records that <paramref name="node"/>'s sub-graph was inlined once more, its values named by <paramref name="resolve"/>.</summary>
    internal void RecordInlined(Node node, Func<string, string> resolve)
    {
        if (!inlined.TryGetValue(node, out var copies)) inlined[node] = copies = [];
        copies.Add(resolve);
    }

    /// <summary>
    /// The applications of <paramref name="layer"/> in this plan, under the plan's value names: those of the graph as they
    /// are, and one per inlined copy of an application inside a Loop body or If branch (k for a body unrolled k times, in
    /// iteration order; none for a branch not taken).
    /// </summary>
    public IReadOnlyList<LayerApplication> ApplicationsOf(Layer layer)
    {
        if (applications.TryGetValue(layer, out var known)) return known;
        var result = new List<LayerApplication>();
        foreach (var app in layer.Applications)
        {
            if (!app.InSubgraph) result.Add(app);
            else if (inlined.TryGetValue(app.Node, out var copies))
                result.AddRange(copies.Select(resolve => app with { InputValue = resolve(app.InputValue), OutputValue = resolve(app.OutputValue) }));
        }
        return applications[layer] = result;
    }

    /// <summary>The value of <paramref name="name"/> when it is known at plan build (a constant or folded), else null.</summary>
    internal NdArray? KnownValue(string name) => values[Id(name)] is { IsConstant: true } v ? v.Array : null;

    /// <summary>Adds a value known at plan build (a loop's iteration number, a sequence's length, a split's sizes).</summary>
    internal void AddConstant(string name, NdArray value)
    {
        var v = Add(name, new TensorInfo(value.ElementType, value.Shape, value));
        v.Array = value;
        v.IsConstant = true;
    }

    /// <summary>A value a fused step adds (e.g. a slope kept for the derivative passes), with the type, shape and dependence of <paramref name="like"/>.</summary>
    internal void AddFusedValue(string name, string like)
    {
        var source = values[Id(like)];
        Add(name, source.Info).DependsOnVariable = source.DependsOnVariable;
    }

    /// <summary>Runs a node whose inputs are all known, at build time: its outputs become constants.</summary>
    private TensorInfo[] Fold(Operator op, Node node, TensorInfo?[] inputs, TensorInfo[] outputs)
    {
        var inputArrays = inputs.Select(i => i?.Value).ToArray();
        var outputArrays = outputs.Select(o => Tensors.Allocate(o.Type, o.Shape)).ToArray();
        try { op.Forward(Model.FoldingContext, inputArrays, outputArrays); }
        catch (FisherKernelsException e) when (!e.Message.Contains(node.Name, StringComparison.Ordinal))
        {
            throw new FisherKernelsException(e.Kind, $"{op.Node}: {e.Message}", e);
        }
        return outputs.Select((o, j) => o with { Value = outputArrays[j] }).ToArray();
    }

    /// <summary>An output nobody names (an omitted optional output) still needs a buffer; it gets a private name.</summary>
    private static string OutputName(Node node, int j) => node.Outputs[j].Length > 0 ? node.Outputs[j] : $"\0{node.Name}:{j}";

    private Value Add(string name, TensorInfo info)
    {
        var value = new Value(name, info);
        ids[name] = values.Count;
        values.Add(value);
        return value;
    }

    /// <summary>
    /// Assigns each computed value a buffer from a pool keyed by (element type, length): a buffer goes
    /// back to the pool after the last step that reads any value stored in it (views share their
    /// input's buffer). Graph outputs and, with <paramref name="keepAll"/>, every value keep theirs.
    /// </summary>
    private void AllocateBuffers(List<(Node Node, Operator Op)> pending, bool keepAll)
    {
        // Storage ids: one per non-view computed value; a view output takes its input's.
        var storageOf = new Dictionary<int, int>();
        int storageCount = 0;
        var runInputs = inputNames.Where(name => !values[Id(name)].IsConstant).ToList();
        foreach (var input in runInputs) values[Id(input)].Storage = storageCount++;
        foreach (var (node, op) in pending)
            for (int j = 0; j < node.Outputs.Length; j++)
            {
                var v = values[Id(OutputName(node, j))];
                var source = j == 0 && op.IsView ? values[Id(node.Inputs[0])] : null;
                v.Storage = source is null ? storageCount++ : source.Storage >= 0 ? source.Storage : -2 - Id(node.Inputs[0]);
            }

        // Last step that needs each storage (int.MaxValue = never released).
        var lastUse = new int[storageCount];
        Array.Fill(lastUse, -1);
        void Use(int storage, int step) { if (storage >= 0) lastUse[storage] = Math.Max(lastUse[storage], step); }
        for (int s = 0; s < pending.Count; s++)
        {
            foreach (var name in pending[s].Node.Inputs) if (name.Length > 0) Use(values[Id(name)].Storage, s);
            for (int j = 0; j < pending[s].Node.Outputs.Length; j++) Use(values[Id(OutputName(pending[s].Node, j))].Storage, s);
        }
        foreach (var output in outputNames) Use(values[Id(output)].Storage, int.MaxValue);
        if (keepAll) Array.Fill(lastUse, int.MaxValue);

        var storages = new Array?[storageCount];
        var pool = new Dictionary<(ElementType, long), Stack<Array>>();
        Array Take(TensorInfo info)
        {
            if (pool.TryGetValue((info.Type, info.Length), out var free) && free.Count > 0) return free.Pop();
            if (info.Length > Array.MaxLength)
                throw FisherKernelsException.Unsupported($"a value of shape [{ShapeUtil.Format(info.Shape)}] ({info.Length} elements) is more than one array holds ({Array.MaxLength}): lower --batch-size or the sequence length");
            BufferBytes += info.Length * ElementTypes.SizeOf(info.Type);
            if (measureOnly) return Array.Empty<byte>();
            return Storage(Tensors.Allocate(info.Type, [checked((int)info.Length)]));
        }
        void Release(int storage, TensorInfo info)
        {
            if (!pool.TryGetValue((info.Type, info.Length), out var free)) pool[(info.Type, info.Length)] = free = new Stack<Array>();
            free.Push(storages[storage]!);
        }

        foreach (var input in runInputs)
        {
            var v = values[Id(input)];
            storages[v.Storage] = Take(v.Info);
            if (measureOnly) continue;
            v.Array = Wrap(storages[v.Storage]!, v.Info);
            graphInputs.Add((Id(input), v.Array));
        }
        for (int s = 0; s < pending.Count; s++)
        {
            var (node, op) = pending[s];
            var outputNames = Enumerable.Range(0, node.Outputs.Length).Select(j => OutputName(node, j)).ToArray();
            foreach (var name in outputNames)
            {
                var v = values[Id(name)];
                if (v.Storage >= 0 && storages[v.Storage] is null) storages[v.Storage] = Take(v.Info);
                if (!measureOnly) v.Array = v.Storage >= 0 ? Wrap(storages[v.Storage]!, v.Info) : Wrap(Storage(values[-2 - v.Storage].Array!), v.Info);
            }
            if (!measureOnly) steps.Add(new Step(node, op,
                node.Inputs.Select(n => n.Length == 0 ? null : values[Id(n)].Array).ToArray(),
                outputNames.Select(n => values[Id(n)].Array!).ToArray(),
                node.Inputs.Select(n => n.Length == 0 ? -1 : Id(n)).ToArray(),
                outputNames.Select(Id).ToArray()));
            // Buffers whose last reader is this step go back to the pool (each once).
            var released = new HashSet<int>();
            foreach (var name in node.Inputs.Concat(outputNames))
            {
                if (name.Length == 0) continue;
                var v = values[Id(name)];
                if (v.Storage >= 0 && lastUse[v.Storage] == s && released.Add(v.Storage)) Release(v.Storage, v.Info);
            }
        }
    }

    private static bool SameValue(NdArray a, NdArray b) => a.Shape.AsSpan().SequenceEqual(b.Shape) && (a, b) switch
    {
        (NdArray<long> x, NdArray<long> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<int> x, NdArray<int> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<bool> x, NdArray<bool> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<sbyte> x, NdArray<sbyte> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<byte> x, NdArray<byte> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<short> x, NdArray<short> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<ushort> x, NdArray<ushort> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<uint> x, NdArray<uint> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<ulong> x, NdArray<ulong> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (NdArray<float> x, NdArray<float> y) => x.Data.AsSpan().SequenceEqual(y.Data),
        (StringArray x, StringArray y) => x.Data.AsSpan().SequenceEqual(y.Data),
        _ => false,
    };

    /// <summary>The array behind a value (views and pooled values share one).</summary>
    internal static Array Storage(NdArray array) => array switch
    {
        NdArray<float> a => a.Data,
        NdArray<long> a => a.Data,
        NdArray<int> a => a.Data,
        NdArray<bool> a => a.Data,
        NdArray<sbyte> a => a.Data,
        NdArray<byte> a => a.Data,
        NdArray<short> a => a.Data,
        NdArray<ushort> a => a.Data,
        NdArray<uint> a => a.Data,
        NdArray<ulong> a => a.Data,
        _ => throw FisherKernelsException.Unsupported($"element type {array.ElementType} is not supported by the executor"),
    };

    // By the value's type, not the array's: the runtime lets a byte[] pass as sbyte[] and back.
    private static NdArray Wrap(Array storage, TensorInfo info) => info.Type switch
    {
        ElementType.Float32 => new NdArray<float>(info.Shape, (float[])storage),
        ElementType.Int64 => new NdArray<long>(info.Shape, (long[])storage),
        ElementType.Int32 => new NdArray<int>(info.Shape, (int[])storage),
        ElementType.Bool => new NdArray<bool>(info.Shape, (bool[])storage),
        ElementType.Int8 => new NdArray<sbyte>(info.Shape, (sbyte[])storage),
        ElementType.UInt8 => new NdArray<byte>(info.Shape, (byte[])storage),
        ElementType.Int16 => new NdArray<short>(info.Shape, (short[])storage),
        ElementType.UInt16 => new NdArray<ushort>(info.Shape, (ushort[])storage),
        ElementType.UInt32 => new NdArray<uint>(info.Shape, (uint[])storage),
        ElementType.UInt64 => new NdArray<ulong>(info.Shape, (ulong[])storage),
        _ => throw new FisherKernelsException(ErrorKind.Internal, $"unknown buffer type {info.Type}"),
    };
}

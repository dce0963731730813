using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Onnx;

/// <summary>
/// A causal or masked language model as SPEC §1 sees an ONNX graph: the token input (<c>input_ids</c>,
/// else the first int input), defaults for the other known inputs, and the logits as the first output
/// <c>[batch, seq, vocab]</c>. A graph with a KV cache (Optimum's "with past" exports) runs as a plain forward
/// pass: every <c>past_key_values.*</c> input empty (past length 0), <c>use_cache_branch</c> false (a merged
/// decoder's <c>If</c> on it is replaced by its else-branch); the <c>present.*</c> outputs are computed but not used.
/// </summary>
public sealed class LanguageModel
{
    public LanguageModel(OnnxModel model)
    {
        model.CheckSupported();
        Model = model = WithoutCacheBranch(model);
        model.CheckSupported();
        var graph = model.Graph;
        var token = graph.Inputs.FirstOrDefault(i => i.Name == "input_ids")
                    ?? graph.Inputs.FirstOrDefault(i => i.ElementType is ElementType.Int64 or ElementType.Int32)
                    ?? throw FisherKernelsException.Argument($"model '{graph.Source}' has no token input (no 'input_ids' and no int32/int64 input)");
        TokenInput = token.Name;
        foreach (var input in graph.Inputs)
        {
            if (IsPast(input.Name)) CheckPast(input, graph.Source);
            else if (input.Name != TokenInput && input.Name is not ("attention_mask" or "token_type_ids" or "position_ids" or UseCacheBranch))
                throw FisherKernelsException.Argument($"model '{graph.Source}': input '{input.Name}' is required and has no default (SPEC §1 fills only attention_mask, token_type_ids, position_ids, past_key_values.* and use_cache_branch)");
        }
        LogitsOutput = graph.Outputs[0].Name;
        EmbeddingRows = FindEmbeddingRows(graph, TokenInput);
        PositionRows = FindPositionRows(graph, TokenInput);
    }

    public static LanguageModel Load(string path) => new(OnnxModel.Load(path));

    private const string UseCacheBranch = "use_cache_branch";

    private static bool IsPast(string name) => name.StartsWith("past_key_values.", StringComparison.Ordinal);

    /// <summary>
    /// A merged decoder (Optimum) runs the decoder with a past or the one without behind <c>If(use_cache_branch)</c>.
    /// SPEC §1 runs it with use_cache_branch = false, so every If on that input is replaced by its else-branch, inlined
    /// (its constants become initializers, its outputs Identity nodes): layer discovery, plans and derivatives then see
    /// one plain graph. The model itself when it has no such If (its operators are made, not checked: see
    /// <see cref="OnnxModel.Unsupported"/>).
    /// </summary>
    public static OnnxModel WithoutCacheBranch(OnnxModel model)
    {
        var graph = model.Graph;
        if (!graph.Nodes.Any(IsCacheBranch)) return model;
        var nodes = new List<Node>();
        var initializers = new Dictionary<string, NdArray>(graph.Initializers);
        var order = new List<string>(graph.InitializerOrder);
        foreach (var node in graph.Nodes)
        {
            if (!IsCacheBranch(node)) { nodes.Add(node); continue; }
            var branch = node.Subgraphs["else_branch"];
            foreach (var (name, value) in branch.Constants)
            {
                if (!initializers.TryAdd(name, value))
                    throw FisherKernelsException.Format($"model '{graph.Source}': {node.Describe()}: the else-branch's constant '{name}' has the name of a value outside it");
                order.Add(name);
            }
            nodes.AddRange(branch.Nodes);
            for (int j = 0; j < node.Outputs.Length; j++)
                if (node.Outputs[j].Length > 0)
                    nodes.Add(new Node { Name = $"{node.Name}/else:{j}", OpType = "Identity", Domain = "", Inputs = [branch.Outputs[j]], Outputs = [node.Outputs[j]], Attributes = new OperatorAttributes() });
        }
        return new OnnxModel(new OnnxGraph
        {
            Source = graph.Source, Nodes = nodes, Initializers = initializers, InitializerOrder = order,
            ConstantNodeValues = graph.ConstantNodeValues, Inputs = graph.Inputs, Outputs = graph.Outputs, Opsets = graph.Opsets,
        });
    }

    private static bool IsCacheBranch(Node node) =>
        node.OpType == "If" && node.Domain.Length == 0 && node.Inputs is [UseCacheBranch] && node.Subgraphs.TryGetValue("else_branch", out var branch)
        && branch.Inputs.Count == 0 && branch.Outputs.Count == node.Outputs.Length;

    /// <summary>An empty past needs the declared rank and one dimension that can be 0 (the past length).</summary>
    private static void CheckPast(ValueInfo input, string source)
    {
        if (input.Shape is not { Length: >= 2 } shape || input.ElementType != ElementType.Float32 || shape.Skip(1).All(d => d is not null))
            throw FisherKernelsException.Unsupported($"model '{source}': KV-cache input {input.Describe()} needs a declared float shape with a symbolic past length to be filled with an empty past");
    }

    /// <summary>
    /// An empty past for a KV-cache input: its declared dimensions, the first (batch) set to the batch when symbolic,
    /// every other symbolic one (the past length) 0.
    /// </summary>
    private static NdArray EmptyPast(ValueInfo input, int batch)
    {
        var shape = input.Shape!.Select((d, i) => d ?? (i == 0 ? batch : 0)).ToArray();
        return new NdArray<float>(shape);
    }

    public OnnxModel Model { get; }
    public string TokenInput { get; }
    public string LogitsOutput { get; }

    /// <summary>
    /// Rows of a learned position-embedding table (the longest sequence the model can run, SPEC §1's default context): the
    /// largest table of more than two rows that a Gather reads with indices other than the tokens (two rows or fewer are
    /// token-type tables). Null when there is none (rotary or sinusoidal positions).
    /// </summary>
    public int? PositionRows { get; }

    /// <summary>Rows of the table the token input indexes (the limit on token ids), when a Gather reads it directly.</summary>
    public int? EmbeddingRows { get; }

    /// <summary>
    /// The graph inputs for <paramref name="tokens"/> ([batch, seq], int32 or int64): the tokens in the
    /// input's declared type, then <paramref name="given"/> inputs, then the SPEC §1 defaults.
    /// </summary>
    public Dictionary<string, NdArray> Inputs(NdArray tokens, IReadOnlyDictionary<string, NdArray>? given = null, string what = "tokens")
    {
        var ids = CheckTokens(tokens, what);
        int batch = ids.Shape[0], seq = ids.Shape[1];
        var result = new Dictionary<string, NdArray>();
        foreach (var input in Model.Graph.Inputs)
        {
            var type = input.ElementType ?? ElementType.Int64;
            if (input.Name == TokenInput) result[input.Name] = ConvertInts(ids, type, input.Name);
            else if (IsPast(input.Name)) result[input.Name] = EmptyPast(input, batch);
            else if (input.Name == UseCacheBranch) result[input.Name] = new NdArray<bool>([1], [false]);
            else if (given is not null && given.TryGetValue(input.Name, out var value))
            {
                if (value.Rank != 2 || value.Shape[0] != batch || value.Shape[1] != seq)
                    throw FisherKernelsException.Argument($"input '{input.Name}' has shape [{ShapeUtil.Format(value.Shape)}], the tokens are [{batch}, {seq}]");
                result[input.Name] = ConvertInts(value, type, input.Name);
            }
            else result[input.Name] = Default(input.Name, type, batch, seq);
        }
        return result;
    }

    /// <summary>Logits [batch, seq, vocab] for the tokens (a copy; the plan's buffers are reused by the next run).</summary>
    public NdArray<float> Forward(OpContext context, NdArray tokens, IReadOnlyDictionary<string, NdArray>? given = null, string what = "tokens")
    {
        var inputs = Inputs(tokens, given, what);
        var plan = Model.GetPlan(inputs);
        CheckLogits(plan, tokens.Shape);
        if (context.Backend is ITensorDevice device)
        {
            // Device-resident: the tokens go up, the logits come down (docs/device-plans.md).
            var devicePlan = Model.DevicePlanFor(plan, device, context.Backend.Name);
            devicePlan.Run(inputs);
            return devicePlan.Download(LogitsOutput);
        }
        plan.Run(context, inputs);
        var logits = (NdArray<float>)plan.Get(LogitsOutput);
        return new NdArray<float>((int[])logits.Shape.Clone(), (float[])logits.Data.Clone());
    }

    /// <summary>The logits must be float [batch, seq, vocab].</summary>
    public void CheckLogits(ExecutionPlan plan, int[] tokenShape)
    {
        var info = plan.Info(LogitsOutput);
        if (info.Type != ElementType.Float32 || info.Shape.Length != 3 || info.Shape[0] != tokenShape[0] || info.Shape[1] != tokenShape[1])
            throw FisherKernelsException.Unsupported($"model '{Model.Graph.Source}': the first output '{LogitsOutput}' is {info}, expected float logits [batch, seq, vocab] = [{tokenShape[0]}, {tokenShape[1]}, vocab]");
    }

    private NdArray<long> CheckTokens(NdArray tokens, string what)
    {
        if (tokens.ElementType is not (ElementType.Int64 or ElementType.Int32))
            throw FisherKernelsException.Argument($"{what}: token ids must be int32 or int64, got {tokens.ElementType}");
        if (tokens.Rank != 2 || tokens.Shape[0] == 0 || tokens.Shape[1] == 0)
            throw FisherKernelsException.Argument($"{what}: token ids must have shape [batch, seq] with both at least 1, got [{ShapeUtil.Format(tokens.Shape)}]");
        var ids = tokens as NdArray<long> ?? new NdArray<long>(tokens.Shape, Array.ConvertAll(((NdArray<int>)tokens).Data, v => (long)v));
        long limit = EmbeddingRows ?? long.MaxValue;
        for (int i = 0; i < ids.Data.Length; i++)
        {
            long id = ids.Data[i];
            if (id < 0 || id >= limit)
                throw FisherKernelsException.Argument($"{what}: token id {id} at [{i / ids.Shape[1]}, {i % ids.Shape[1]}] is outside the vocabulary (ids must be in 0..{(EmbeddingRows is int r ? (r - 1).ToString(System.Globalization.CultureInfo.InvariantCulture) : "")}, the embedding table has {EmbeddingRows} rows)");
        }
        return ids;
    }

    private static NdArray Default(string name, ElementType type, int batch, int seq)
    {
        var values = new long[batch * seq];
        if (name == "attention_mask") Array.Fill(values, 1);
        else if (name == "position_ids")
            for (int i = 0; i < values.Length; i++) values[i] = i % seq;
        return ConvertInts(new NdArray<long>([batch, seq], values), type, name);
    }

    private static NdArray ConvertInts(NdArray value, ElementType type, string name) => (value, type) switch
    {
        (NdArray<long> v, ElementType.Int64) => v,
        (NdArray<int> v, ElementType.Int32) => v,
        (NdArray<long> v, ElementType.Int32) => new NdArray<int>(v.Shape, Array.ConvertAll(v.Data, x => checked((int)x))),
        (NdArray<int> v, ElementType.Int64) => new NdArray<long>(v.Shape, Array.ConvertAll(v.Data, x => (long)x)),
        (NdArray<long> v, ElementType.Float32) => new NdArray<float>(v.Shape, Array.ConvertAll(v.Data, x => (float)x)),
        (NdArray<int> v, ElementType.Float32) => new NdArray<float>(v.Shape, Array.ConvertAll(v.Data, x => (float)x)),
        (NdArray<float> v, ElementType.Float32) => v,
        (NdArray<long> v, ElementType.Bool) => new NdArray<bool>(v.Shape, Array.ConvertAll(v.Data, x => x != 0)),
        _ => throw FisherKernelsException.Argument($"input '{name}': cannot use a {value.ElementType} array for a {type} input"),
    };

    /// <summary>The Gather that reads the token input as indices (directly or through Cast) and an initializer table as data.</summary>
    private static int? FindEmbeddingRows(OnnxGraph graph, string tokenInput)
    {
        var frontier = new List<string> { tokenInput };
        for (int depth = 0; depth < 3 && frontier.Count > 0; depth++)
        {
            var next = new List<string>();
            foreach (var value in frontier)
            {
                if (!graph.Consumers.TryGetValue(value, out var consumers)) continue;
                foreach (var node in consumers)
                {
                    if (node.OpType == "Gather" && node.Inputs.Length > 1 && node.Inputs[1] == value && Table(graph, node.Inputs[0]) is { } rows)
                        return rows;
                    if (node.OpType is "Cast" or "Identity") next.Add(node.Outputs[0]);
                }
            }
            frontier = next;
        }
        return null;
    }

    private static int? FindPositionRows(OnnxGraph graph, string tokenInput)
    {
        var fromTokens = new HashSet<string> { tokenInput };
        for (int depth = 0; depth < 3; depth++)
            foreach (var value in fromTokens.ToList())
                if (graph.Consumers.TryGetValue(value, out var consumers))
                    foreach (var node in consumers.Where(n => n.OpType is "Cast" or "Identity")) fromTokens.Add(node.Outputs[0]);
        int? rows = null;
        foreach (var node in graph.Nodes)
            if (node.OpType == "Gather" && node.Inputs.Length > 1 && !fromTokens.Contains(node.Inputs[1])
                && graph.Initializers.TryGetValue(node.Inputs[0], out var table) && table.Rank == 2 && table.Shape[0] > 2)
                rows = Math.Max(rows ?? 0, table.Shape[0]);
        return rows;
    }

    private static int? Table(OnnxGraph graph, string value)
    {
        for (int depth = 0; depth < 4; depth++)
        {
            if (graph.Initializers.TryGetValue(value, out var table)) return table.Rank >= 1 ? table.Shape[0] : null;
            if (!graph.Producers.TryGetValue(value, out var node) || node.OpType is not ("Cast" or "Identity")) return null;
            value = node.Inputs[0];
        }
        return null;
    }
}

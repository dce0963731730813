namespace FisherKernels.Onnx.Operators;

/// <summary>Makes the operator for a node from a table keyed by (domain, op type, opset range).</summary>
public static class OperatorRegistry
{
    public const string MicrosoftDomain = "com.microsoft";

    private readonly record struct Entry(string Domain, string OpType, int SinceOpset, int UntilOpset, Func<OperatorNode, Operator> Create);

    private static readonly Entry[] Table =
    [
        // Linear algebra
        Onnx("MatMul", 1, n => new MatMul(n)),
        Onnx("Gemm", 7, n => new Gemm(n)),
        // Elementwise arithmetic (broadcasting)
        .. new[] { "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min" }.Select(op => Onnx(op, 7, n => new BinaryElementwise(n))),
        .. new[] { "Sqrt", "Reciprocal", "Neg", "Exp", "Log", "Tanh", "Erf", "Sigmoid", "Relu", "Cos", "Sin", "Abs" }.Select(op => Onnx(op, 6, n => new UnaryElementwise(n))),
        Onnx("Gelu", 20, n => new UnaryElementwise(n)),
        Onnx("Clip", 11, n => new Clip(n)),
        Microsoft("FastGelu", n => new UnaryElementwise(n)),
        Microsoft("BiasGelu", n => new UnaryElementwise(n)),
        Microsoft("Gelu", n => new UnaryElementwise(n)),
        Microsoft("QuickGelu", n => new UnaryElementwise(n)),
        Microsoft("BiasAdd", n => new BiasAdd(n)),
        // Normalization
        Onnx("Softmax", 1, n => new Softmax(n)),
        Onnx("LogSoftmax", 1, n => new Softmax(n)),
        Onnx("LayerNormalization", 17, n => new Normalization(n)),
        Onnx("RMSNormalization", 23, n => new Normalization(n)),
        Microsoft("SimplifiedLayerNormalization", n => new Normalization(n)),
        Microsoft("SkipLayerNormalization", n => new Normalization(n)),
        Microsoft("SkipSimplifiedLayerNormalization", n => new Normalization(n)),
        Microsoft("EmbedLayerNormalization", n => new EmbedLayerNormalization(n)),
        Microsoft("RotaryEmbedding", n => new RotaryEmbedding(n)),
        Onnx("RotaryEmbedding", 23, n => new RotaryEmbedding(n)),
        Microsoft("Attention", n => new Attention(n)),
        Microsoft("MultiHeadAttention", n => new MultiHeadAttention(n)),
        Microsoft("GroupQueryAttention", n => new GroupQueryAttention(n)),
        Onnx("Attention", 23, n => new StandardAttention(n)),
        Onnx("CumSum", 11, n => new CumSum(n)),
        .. new[] { "ReduceSum", "ReduceMean", "ReduceMax" }.Select(op => Onnx(op, 1, n => new Reduce(n))),
        // Data movement
        Onnx("Reshape", 5, n => new Reshape(n)),
        .. new[] { "Identity", "Squeeze", "Unsqueeze", "Flatten" }.Select(op => Onnx(op, 1, n => new View(n))),
        Onnx("Dropout", 1, n => new Dropout(n)),
        Onnx("Transpose", 1, n => new Transpose(n)),
        Onnx("Expand", 8, n => new Expand(n)),
        Onnx("Slice", 1, n => new Slice(n)),
        Onnx("Concat", 4, n => new Concat(n)),
        Onnx("Split", 2, n => new Split(n)),
        Onnx("Gather", 1, n => new Gather(n)),
        Onnx("Trilu", 14, n => new Trilu(n)),
        Onnx("Where", 9, n => new Where(n)),
        Onnx("Cast", 6, n => new Cast(n)),
        Onnx("Pad", 2, n => new Pad(n)),
        Onnx("Tile", 6, n => new Tile(n)),
        Onnx("ScatterND", 11, n => new ScatterND(n)),
        // Shapes, constants and masks (not differentiable)
        Onnx("Shape", 1, n => new Shape(n)),
        Onnx("Constant", 1, n => new Constant(n)),
        Onnx("ConstantOfShape", 9, n => new ConstantOfShape(n)),
        Onnx("Range", 11, n => new Range(n)),
        .. new[] { "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor" }.Select(op => Onnx(op, 7, n => new Compare(n))),
        Onnx("Not", 1, n => new Not(n)),
        // Control flow and sequences: rewritten into the operators above when the plan is built
        Onnx("Loop", 11, n => new ExpandedAtPlanBuild(n)),
        Onnx("If", 11, n => new ExpandedAtPlanBuild(n)),
        .. new[] { "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence" }
            .Select(op => Onnx(op, 11, n => new ExpandedAtPlanBuild(n))),
        Onnx("SequenceMap", 17, n => new ExpandedAtPlanBuild(n)),
        .. new[] { "Optional", "OptionalHasElement", "OptionalGetElement" }.Select(op => Onnx(op, 15, n => new ExpandedAtPlanBuild(n))),
    ];

    private static readonly Dictionary<(string Domain, string OpType), Entry[]> ByName =
        Table.GroupBy(e => (e.Domain, e.OpType)).ToDictionary(g => g.Key, g => g.ToArray());

    /// <summary>True for the default ONNX domain ("" or "ai.onnx").</summary>
    public static bool IsOnnxDomain(string domain) => domain.Length == 0 || domain == "ai.onnx";

    /// <summary>Whether some operator handles this op type in this domain at this opset.</summary>
    public static bool IsSupported(string domain, string opType, int opset) => Find(domain, opType, opset) is not null;

    /// <summary>
    /// The operator for <paramref name="node"/>, with its attributes validated. Throws
    /// <see cref="FisherKernelsException"/> (Unsupported) naming the op type, domain, opset and node for an
    /// operator outside the table, and an error prefixed by the node for invalid attributes.
    /// </summary>
    public static Operator Create(OperatorNode node)
    {
        var entry = Find(node.Domain, node.OpType, node.Opset);
        if (entry is null)
        {
            string domain = IsOnnxDomain(node.Domain) ? "ai.onnx" : node.Domain;
            string why = ByName.TryGetValue((Canonical(node.Domain), node.OpType), out var known)
                ? $"is supported for opsets {string.Join(", ", known.Select(e => e.UntilOpset == int.MaxValue ? $"{e.SinceOpset}+" : $"{e.SinceOpset}-{e.UntilOpset}"))}, the model uses opset {node.Opset}"
                : "is not supported";
            throw FisherKernelsException.Unsupported($"operator '{node.OpType}' (domain '{domain}') at node '{node.Name}' {why}");
        }
        try { return entry.Value.Create(node); }
        catch (FisherKernelsException e) when (!e.Message.StartsWith(node.ToString(), StringComparison.Ordinal))
        {
            throw new FisherKernelsException(e.Kind, $"{node}: {e.Message}", e);
        }
    }

    private static Entry? Find(string domain, string opType, int opset)
    {
        if (!ByName.TryGetValue((Canonical(domain), opType), out var entries)) return null;
        foreach (var e in entries)
            if (opset >= e.SinceOpset && opset <= e.UntilOpset) return e;
        return null;
    }

    private static string Canonical(string domain) => IsOnnxDomain(domain) ? "" : domain;

    private static Entry Onnx(string opType, int since, Func<OperatorNode, Operator> create, int until = int.MaxValue) =>
        new("", opType, since, until, create);

    private static Entry Microsoft(string opType, Func<OperatorNode, Operator> create) =>
        new(MicrosoftDomain, opType, 1, int.MaxValue, create);
}

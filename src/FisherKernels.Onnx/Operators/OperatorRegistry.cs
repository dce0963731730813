namespace FisherKernels.Onnx.Operators;

/// <summary>Makes the operator for a node from a table keyed by (domain, op type, opset range).</summary>
public static class OperatorRegistry
{
    public const string MicrosoftDomain = "com.microsoft";

    private readonly record struct Entry(string Domain, string OpType, int SinceOpset, int UntilOpset, Func<OperatorNode, Operator> Create);

    private static readonly Entry[] Table =
    [
        Onnx("MatMul", 1, n => new MatMul(n)),
        Onnx("Add", 7, n => new BinaryElementwise(n)),
        Onnx("Sub", 7, n => new BinaryElementwise(n)),
        Onnx("Mul", 7, n => new BinaryElementwise(n)),
        Onnx("Div", 7, n => new BinaryElementwise(n)),
        Onnx("Pow", 7, n => new BinaryElementwise(n)),
        Onnx("Softmax", 1, n => new Softmax(n)),
        Onnx("LogSoftmax", 1, n => new Softmax(n)),
        Onnx("Reshape", 5, n => new Reshape(n)),
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

using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Onnx.Import;

/// <summary>Reads an ONNX file into an <see cref="OnnxGraph"/> (SPEC §1): opsets 11–23, inline and external initializers, Constant nodes as constants, Loop/If sub-graphs.</summary>
public static class OnnxImporter
{
    public const int MinOpset = 11, MaxOpset = 23;

    public static OnnxGraph Load(string path)
    {
        // Parsed from the file as a stream, not from a byte[] copy of it: a 124M-parameter model is 0.5-0.65 GB, and the
        // file's bytes, the parsed tensors and the float arrays would otherwise all be resident at once.
        ModelProto model;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 20);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e) // an IOException: first
        {
            throw FisherKernelsException.Format($"'{path}' is not a valid ONNX model (truncated or not a protobuf file: {e.Message})");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            string why = e is FileNotFoundException or DirectoryNotFoundException ? "file not found" : e.Message;
            throw FisherKernelsException.Io($"cannot read model '{path}': {why}", e);
        }
        if (model.Graph is null || model.IrVersion <= 0 || model.Graph.Output.Count == 0)
            throw FisherKernelsException.Format($"'{path}' is not a valid ONNX model (no graph, IR version or outputs; truncated or not an ONNX file?)");
        using var external = new ExternalData(path);
        return Convert(model, path, external);
    }

    private static OnnxGraph Convert(ModelProto model, string path, ExternalData external)
    {
        var opsets = new Dictionary<string, long>();
        foreach (var opset in model.OpsetImport) opsets[NormalizeDomain(opset.Domain)] = opset.Version;
        if (!opsets.TryGetValue("", out long version) || version < MinOpset || version > MaxOpset)
            throw FisherKernelsException.Unsupported($"model '{path}' uses ONNX opset {(opsets.ContainsKey("") ? version.ToString(System.Globalization.CultureInfo.InvariantCulture) : "(none)")}; opsets {MinOpset}–{MaxOpset} are supported");

        var graph = model.Graph;
        if (graph.SparseInitializer.Count > 0)
            throw FisherKernelsException.Unsupported($"model '{path}': sparse initializers are not supported ('{graph.SparseInitializer[0].Values?.Name}')");
        var initializers = new Dictionary<string, NdArray>();
        var order = new List<string>();
        long sinceCollect = 0;
        foreach (var tensor in graph.Initializer)
        {
            if (string.IsNullOrEmpty(tensor.Name)) throw FisherKernelsException.Format($"model '{path}': an initializer has no name (corrupt model?)");
            initializers[tensor.Name] = TensorImport.ToArray(tensor, $"model '{path}', initializer '{tensor.Name}'", external);
            // Converted: the parsed bytes go, and every 64 MB the collector reclaims them so that the next arrays reuse
            // that memory; without it a model is resident twice (parsed and converted) until the collector gets to it.
            sinceCollect += tensor.RawData.Length;
            tensor.RawData = ByteString.Empty;
            if (sinceCollect >= 64 << 20)
            {
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true);
                sinceCollect = 0;
            }
            order.Add(tensor.Name);
        }

        var constants = new HashSet<string>();
        var nodes = ConvertNodes(graph.Node, path, external, initializers, constants);

        var inputs = graph.Input.Where(v => !initializers.ContainsKey(v.Name)).Select(ToValueInfo).ToList();
        var outputs = graph.Output.Select(ToValueInfo).ToList();
        var result = new OnnxGraph
        {
            Source = path, Nodes = nodes, Initializers = initializers, InitializerOrder = order,
            ConstantNodeValues = constants, Inputs = inputs, Outputs = outputs, Opsets = opsets,
        };
        CheckComplete(result);
        return result;
    }

    /// <summary>
    /// Variadic Max/Min (opset 8+) as the two-input operator: one input is the identity, n inputs a chain of n − 1
    /// nodes (broadcasting is associative, and so are max and min).
    /// </summary>
    private static IEnumerable<Node> Pairwise(Node node)
    {
        if (node.Inputs.Length == 0) throw FisherKernelsException.Format($"{node.Describe()} has no inputs");
        if (node.Inputs.Length == 1)
        {
            yield return new Node { Name = node.Name, OpType = "Identity", Domain = "", Inputs = node.Inputs, Outputs = node.Outputs, Attributes = node.Attributes };
            yield break;
        }
        string left = node.Inputs[0];
        for (int i = 1; i < node.Inputs.Length; i++)
        {
            string output = i == node.Inputs.Length - 1 ? node.Outputs[0] : $"{node.Outputs[0]}::{node.OpType}{i}";
            yield return new Node { Name = i == 1 ? node.Name : $"{node.Name}::{i}", OpType = node.OpType, Domain = "",
                                    Inputs = [left, node.Inputs[i]], Outputs = [output], Attributes = node.Attributes };
            left = output;
        }
    }

    /// <summary>
    /// The nodes of a graph or sub-graph; Constant nodes become entries of <paramref name="constantValues"/> (their
    /// names also go to <paramref name="constantNames"/>), GRAPH attributes become <see cref="Subgraph"/>s.
    /// </summary>
    private static List<Node> ConvertNodes(IList<NodeProto> protos, string path, ExternalData external,
                                           Dictionary<string, NdArray> constantValues, HashSet<string> constantNames)
    {
        var nodes = new List<Node>();
        for (int index = 0; index < protos.Count; index++)
        {
            var proto = protos[index];
            string name = proto.Name.Length > 0 ? proto.Name : $"{proto.OpType}_{index}";
            string domain = NormalizeDomain(proto.Domain);
            string what = $"model '{path}', {proto.OpType} node '{name}'";
            var attributes = new OperatorAttributes();
            var subgraphs = new Dictionary<string, Subgraph>();
            foreach (var a in proto.Attribute)
            {
                if (a.Type == AttributeProto.Types.AttributeType.Graph && a.G is not null)
                    subgraphs[a.Name] = ConvertSubgraph(a.G, $"{what}, attribute '{a.Name}'", path, external);
                else SetAttribute(attributes, a, what, external);
            }
            if (proto.OpType == "Constant" && domain.Length == 0 && proto.Output.Count == 1)
            {
                constantValues[proto.Output[0]] = ConstantValue(attributes, what);
                constantNames.Add(proto.Output[0]);
                continue;
            }
            var node = new Node
            {
                Name = name, OpType = proto.OpType, Domain = domain,
                Inputs = [.. proto.Input], Outputs = [.. proto.Output], Attributes = attributes,
                Subgraphs = subgraphs,
                ImplicitInputs = subgraphs.Values.SelectMany(g => g.OuterValues).Distinct().ToArray(),
            };
            if (domain.Length == 0 && node.OpType is "Max" or "Min" && node.Inputs.Length != 2 && node.Outputs.Length == 1) nodes.AddRange(Pairwise(node));
            else nodes.Add(node);
        }
        return nodes;
    }

    /// <summary>A Loop body or If branch: its constants, nodes, formal inputs and outputs, and the outer values it reads.</summary>
    private static Subgraph ConvertSubgraph(GraphProto graph, string what, string path, ExternalData external)
    {
        var constants = new Dictionary<string, NdArray>();
        foreach (var tensor in graph.Initializer)
            constants[tensor.Name] = TensorImport.ToArray(tensor, $"{what}, initializer '{tensor.Name}'", external);
        var nodes = ConvertNodes(graph.Node, path, external, constants, []);
        var inputs = graph.Input.Select(v => v.Name).ToList();
        var outputs = graph.Output.Select(v => v.Name).ToList();
        var defined = new HashSet<string>(inputs.Concat(constants.Keys).Concat(nodes.SelectMany(n => n.Outputs)));
        var outer = nodes.SelectMany(n => n.AllInputs).Concat(outputs).Where(v => v.Length > 0 && !defined.Contains(v)).Distinct().ToList();
        return new Subgraph { Name = graph.Name, Inputs = inputs, Outputs = outputs, Nodes = nodes, Constants = constants, OuterValues = outer };
    }

    /// <summary>Every value read must be produced somewhere: a truncated file often still parses but loses nodes or initializers.</summary>
    private static void CheckComplete(OnnxGraph graph)
    {
        var known = new HashSet<string>(graph.Initializers.Keys);
        foreach (var input in graph.Inputs) known.Add(input.Name);
        foreach (var node in graph.Nodes)
            foreach (var output in node.Outputs)
                if (output.Length > 0 && !known.Add(output))
                    throw FisherKernelsException.Format($"model '{graph.Source}': value '{output}' written by {node.Describe()} already has a producer (a node, graph input or initializer; each value has one)");
        foreach (var node in graph.Nodes)
            foreach (var input in node.AllInputs)
                if (input.Length > 0 && !known.Contains(input))
                    throw FisherKernelsException.Format($"model '{graph.Source}': value '{input}' read by {node.Describe()} is never produced (truncated or corrupt model?)");
        foreach (var output in graph.Outputs)
            if (!known.Contains(output.Name))
                throw FisherKernelsException.Format($"model '{graph.Source}': graph output '{output.Name}' is never produced (truncated or corrupt model?)");
    }

    private static string NormalizeDomain(string domain) => domain == "ai.onnx" ? "" : domain;

    private static void SetAttribute(OperatorAttributes attributes, AttributeProto a, string what, ExternalData external)
    {
        switch (a.Type)
        {
            case AttributeProto.Types.AttributeType.Float: attributes.Set(a.Name, a.F); break;
            case AttributeProto.Types.AttributeType.Int: attributes.Set(a.Name, a.I); break;
            case AttributeProto.Types.AttributeType.String: attributes.Set(a.Name, a.S.ToStringUtf8()); break;
            case AttributeProto.Types.AttributeType.Tensor: attributes.Set(a.Name, TensorImport.ToArray(a.T, $"{what}, attribute '{a.Name}'", external)); break;
            case AttributeProto.Types.AttributeType.Floats: attributes.Set(a.Name, a.Floats.ToArray()); break;
            case AttributeProto.Types.AttributeType.Ints: attributes.Set(a.Name, a.Ints.ToArray()); break;
            case AttributeProto.Types.AttributeType.Strings: attributes.Set(a.Name, a.Strings.Select(v => v.ToStringUtf8()).ToArray()); break;
            // GRAPH attributes are read by ConvertNodes; other kinds (sparse tensors, type protos) no supported operator takes.
        }
    }

    private static NdArray ConstantValue(OperatorAttributes attributes, string what)
    {
        try
        {
            if (attributes.GetTensor("value") is { } tensor) return tensor;
            if (attributes.Has("value_float")) return new NdArray<float>([], [attributes.GetFloat("value_float", 0)]);
            if (attributes.GetFloats("value_floats") is { } floats) return new NdArray<float>([floats.Length], floats);
            if (attributes.GetIntOrNull("value_int") is long i) return new NdArray<long>([], [i]);
            if (attributes.GetInts("value_ints") is { } ints) return new NdArray<long>([ints.Length], ints);
        }
        catch (FisherKernelsException e) { throw FisherKernelsException.Format($"{what}: {e.Message}"); }
        throw FisherKernelsException.Unsupported($"{what}: Constant without a supported value (value, value_float(s), value_int(s))");
    }

    private static ValueInfo ToValueInfo(ValueInfoProto v)
    {
        // An optional value is read as its element when given; a sequence as its tensors (ValueInfo.IsSequence).
        var typeProto = v.Type;
        bool isOptional = typeProto?.OptionalType is not null;
        while (typeProto?.OptionalType is { } optional) typeProto = optional.ElemType;
        bool sequence = typeProto?.SequenceType is not null;
        if (sequence) typeProto = typeProto!.SequenceType.ElemType;
        var tensor = typeProto?.TensorType;
        if (tensor is null) return new ValueInfo(v.Name, null, null, null) { IsSequence = sequence, IsOptional = isOptional };
        ElementType? type = TensorImport.ImportedType(tensor.ElemType);
        if (tensor.Shape is null) return new ValueInfo(v.Name, type, null, null) { IsSequence = sequence, IsOptional = isOptional };
        var dims = tensor.Shape.Dim;
        var shape = new int?[dims.Count];
        var names = new string?[dims.Count];
        for (int i = 0; i < dims.Count; i++)
        {
            if (dims[i].ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue && dims[i].DimValue >= 0 && dims[i].DimValue <= int.MaxValue)
                shape[i] = (int)dims[i].DimValue;
            else if (dims[i].ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam)
                names[i] = dims[i].DimParam;
        }
        return new ValueInfo(v.Name, type, shape, names) { IsSequence = sequence, IsOptional = isOptional };
    }
}

using System.Text.Json;
using FisherKernels.Onnx.Proto;
using FisherKernels.Tests.Plan;
using Google.Protobuf;

namespace FisherKernels.Tests.Operators;

/// <summary>Runs one operator case of cases.json in ONNX Runtime, as a one-node model whose inputs are all graph inputs.</summary>
internal static class OnnxRuntimeNode
{
    public static (int[] Shape, double[] Data)[] Run(JsonElement c, NdArray?[] inputs, int outputCount)
    {
        var node = new NodeProto { Name = "n0", OpType = c.GetProperty("op").GetString()!, Domain = c.GetProperty("domain").GetString()! };
        var graph = new GraphProto { Name = "case" };
        var feeds = new Dictionary<string, NdArray>();
        for (int i = 0; i < inputs.Length; i++)
        {
            if (inputs[i] is not { } x) { node.Input.Add(""); continue; }
            string name = $"in{i}";
            node.Input.Add(name);
            feeds[name] = x;
            graph.Input.Add(new ValueInfoProto { Name = name, Type = TensorType(x) });
        }
        for (int j = 0; j < outputCount; j++)
        {
            node.Output.Add($"out{j}");
            graph.Output.Add(new ValueInfoProto { Name = $"out{j}" });
        }
        foreach (var attr in c.GetProperty("attributes").EnumerateObject()) node.Attribute.Add(Attribute(attr.Name, attr.Value));
        graph.Node.Add(node);
        var model = new ModelProto
        {
            IrVersion = 10, Graph = graph,
            OpsetImport = { new OperatorSetIdProto { Version = node.Domain.Length == 0 ? c.GetProperty("opset").GetInt32() : 17 } },
        };
        if (node.Domain.Length > 0) model.OpsetImport.Add(new OperatorSetIdProto { Domain = node.Domain, Version = c.GetProperty("opset").GetInt32() });
        string path = Path.Combine(Path.GetTempPath(), $"fk-ort-case-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            File.WriteAllBytes(path, model.ToByteArray());
            var results = OnnxRuntimeReference.Run(path, feeds);
            return Enumerable.Range(0, outputCount).Select(j => results[$"out{j}"]).ToArray();
        }
        finally { File.Delete(path); }
    }

    private static TypeProto TensorType(NdArray x)
    {
        var shape = new TensorShapeProto();
        foreach (int d in x.Shape) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        int type = x switch { NdArray<float> => 1, NdArray<int> => 6, NdArray<long> => 7, NdArray<bool> => 9, NdArray<sbyte> => 3, NdArray<byte> => 2, NdArray<short> => 5, NdArray<ushort> => 4, NdArray<uint> => 12, NdArray<ulong> => 13, _ => throw new ArgumentException(x.ElementType.ToString()) };
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = type, Shape = shape } };
    }

    private static AttributeProto Attribute(string name, JsonElement encoded)
    {
        var v = encoded[1];
        var a = new AttributeProto { Name = name };
        switch (encoded[0].GetString())
        {
            case "int": a.Type = AttributeProto.Types.AttributeType.Int; a.I = v.GetInt64(); break;
            case "float": a.Type = AttributeProto.Types.AttributeType.Float; a.F = v.GetSingle(); break;
            case "string": a.Type = AttributeProto.Types.AttributeType.String; a.S = ByteString.CopyFromUtf8(v.GetString()); break;
            case "ints": a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.AddRange(v.EnumerateArray().Select(e => e.GetInt64())); break;
            case "floats": a.Type = AttributeProto.Types.AttributeType.Floats; a.Floats.AddRange(v.EnumerateArray().Select(e => e.GetSingle())); break;
            default: throw new ArgumentException($"attribute {name}: {encoded[0]} is not handled by the ONNX Runtime check");
        }
        return a;
    }
}

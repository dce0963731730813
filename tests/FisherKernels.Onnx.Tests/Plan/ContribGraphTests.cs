using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// A graph of the fused operators ONNX Runtime's transformer optimizer emits (Attention with a padding mask,
/// RotaryEmbedding, MultiHeadAttention) mixed with Pad, Tile and ScatterND, through the plan: forward against
/// ONNX Runtime at two input shapes, and forward-mode and reverse-mode derivatives against each other and a
/// central difference.
/// </summary>
public class ContribGraphTests
{
    private readonly OpContext Context = new(new CpuBackend(1)); // per test: subclasses run in parallel and a context is not shareable

    /// <summary>The initializers the derivative test differentiates.</summary>
    protected virtual string[] Variables => ["w_qkv", "b_qkv", "mha_bias", "cos", "fill", "update"];

    private protected virtual ModelProto Model()
    {
        var random = new Random(12);
        TensorProto Floats(string name, params int[] dims)
        {
            var t = new TensorProto { Name = name, DataType = 1 };
            t.Dims.AddRange(dims.Select(d => (long)d));
            for (int i = 0; i < dims.Aggregate(1, (a, b) => a * b); i++) t.FloatData.Add((float)(random.NextDouble() - 0.5));
            return t;
        }
        TensorProto Longs(string name, int[] dims, params long[] values)
        {
            var t = new TensorProto { Name = name, DataType = 7 };
            t.Dims.AddRange(dims.Select(d => (long)d));
            t.Int64Data.AddRange(values);
            return t;
        }
        var angles = Enumerable.Range(0, 16).SelectMany(p => new[] { p * 1.0, p * 0.01 }).ToArray();
        var cos = new TensorProto { Name = "cos", DataType = 1, Dims = { 16, 2 } };
        var sin = new TensorProto { Name = "sin", DataType = 1, Dims = { 16, 2 } };
        cos.FloatData.AddRange(angles.Select(a => (float)Math.Cos(a)));
        sin.FloatData.AddRange(angles.Select(a => (float)Math.Sin(a)));
        var graph = new GraphProto
        {
            Name = "contrib",
            Initializer =
            {
                Floats("w_qkv", 8, 24), Floats("b_qkv", 24), Floats("mha_bias", 24), cos, sin, Floats("fill"), Floats("update", 1, 16),
                Longs("position", [1], 0), Longs("pads", [6], 0, 1, 0, 0, 0, 0), Longs("repeats", [3], 1, 1, 2), Longs("index", [1, 2], 0, -1),
            },
            Input =
            {
                new ValueInfoProto { Name = "x", Type = TensorType(1, "batch", "seq", 8) },
                new ValueInfoProto { Name = "mask", Type = TensorType(6, "batch", "seq") },
            },
            Output = { new ValueInfoProto { Name = "y" } },
        };
        AttributeProto Int(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };
        NodeProto Node(string op, string domain, string[] inputs, string output, params AttributeProto[] attributes) =>
            new() { Name = op + "_" + output, OpType = op, Domain = domain, Input = { inputs }, Output = { output }, Attribute = { attributes } };
        const string ms = OperatorRegistry.MicrosoftDomain;
        graph.Node.Add(Node("Attention", ms, ["x", "w_qkv", "b_qkv", "mask"], "a", Int("num_heads", 2), Int("unidirectional", 1)));
        graph.Node.Add(Node("RotaryEmbedding", ms, ["a", "position", "cos", "sin"], "r"));
        graph.Node.Add(Node("Pad", "", ["r", "pads", "fill"], "p"));
        graph.Node.Add(Node("MultiHeadAttention", ms, ["p", "p", "p", "mha_bias"], "m", Int("num_heads", 2)));
        graph.Node.Add(Node("Tile", "", ["m", "repeats"], "t"));
        graph.Node.Add(new NodeProto
        {
            Name = "scatter", OpType = "ScatterND", Input = { "t", "index", "update" }, Output = { "y" },
            Attribute = { new AttributeProto { Name = "reduction", Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8("add") } },
        });
        return new ModelProto
        {
            IrVersion = 8, Graph = graph,
            OpsetImport = { new OperatorSetIdProto { Version = 18 }, new OperatorSetIdProto { Domain = ms, Version = 1 } },
        };
    }

    private protected static TypeProto TensorType(int elementType, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is string s ? new TensorShapeProto.Types.Dimension { DimParam = s } : new TensorShapeProto.Types.Dimension { DimValue = (int)d });
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elementType, Shape = shape } };
    }

    protected virtual Dictionary<string, NdArray> Inputs(Random random, int batch, int seq)
    {
        var x = new NdArray<float>(batch, seq, 8);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        var mask = new NdArray<int>(batch, seq);
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seq; s++) mask.Data[b * seq + s] = s >= b ? 1 : 0; // left padding growing with the batch index
        return new() { ["x"] = x, ["mask"] = mask };
    }

    [Fact]
    public void ForwardMatchesOnnxRuntimeAtTwoShapes()
    {
        using var temp = new TempFolder();
        string path = temp.File("contrib.onnx");
        File.WriteAllBytes(path, Model().ToByteArray());
        var model = OnnxModel.Load(path);
        var random = new Random(5);
        foreach (var (batch, seq) in new[] { (2, 3), (1, 5) })
        {
            var inputs = Inputs(random, batch, seq);
            var plan = model.GetPlan(inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape));
            plan.Run(Context, inputs);
            OnnxRuntimeReference.AssertPlanMatches(plan, path, inputs, ["y"], 1e-5);
        }
    }

    [Fact]
    public void TangentAndBackwardAgreeWithFiniteDifferences()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("contrib.onnx"), Model().ToByteArray());
        var model = OnnxModel.Load(temp.File("contrib.onnx"));
        var random = new Random(6);
        var inputs = Inputs(random, 2, 3);
        var plan = model.GetPlan(inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape), Variables.ToHashSet(), keepAll: true);
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, Variables, "y", random);
    }

}

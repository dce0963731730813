using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Proto;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// The BERT fusions of ONNX Runtime's transformer optimizer through the plan: EmbedLayerNormalization, whose int32
/// mask_index feeds Attention as per-batch lengths, then SkipLayerNormalization, MatMul, com.microsoft Gelu and QuickGelu.
/// The same checks as <see cref="ContribGraphTests"/>: forward against ONNX Runtime at two shapes, and both derivative
/// modes against each other and a central difference.
/// </summary>
public sealed class BertFusionGraphTests : ContribGraphTests
{
    protected override string[] Variables => ["word", "position", "segment", "gamma", "w_qkv", "skip_gamma", "w_mlp"];

    private protected override ModelProto Model()
    {
        var random = new Random(21);
        TensorProto Floats(string name, params int[] dims)
        {
            var t = new TensorProto { Name = name, DataType = 1 };
            t.Dims.AddRange(dims.Select(d => (long)d));
            for (int i = 0; i < dims.Aggregate(1, (a, b) => a * b); i++) t.FloatData.Add((float)(random.NextDouble() - 0.5));
            return t;
        }
        var graph = new GraphProto
        {
            Name = "bert",
            Initializer =
            {
                Floats("word", 10, 16), Floats("position", 8, 16), Floats("segment", 2, 16), Floats("gamma", 16), Floats("beta", 16),
                Floats("w_qkv", 16, 48), Floats("b_qkv", 48), Floats("skip_gamma", 16), Floats("skip_beta", 16), Floats("w_mlp", 16, 16),
            },
            Input =
            {
                new ValueInfoProto { Name = "ids", Type = TensorType(6, "batch", "seq") },
                new ValueInfoProto { Name = "segments", Type = TensorType(6, "batch", "seq") },
                new ValueInfoProto { Name = "mask", Type = TensorType(6, "batch", "seq") },
            },
            Output = { new ValueInfoProto { Name = "y" } },
        };
        const string ms = OperatorRegistry.MicrosoftDomain;
        NodeProto Node(string op, string[] inputs, string[] outputs, params AttributeProto[] attributes) =>
            new() { Name = op + "_" + outputs[0], OpType = op, Domain = op == "MatMul" ? "" : ms, Input = { inputs }, Output = { outputs }, Attribute = { attributes } };
        graph.Node.Add(Node("EmbedLayerNormalization", ["ids", "segments", "word", "position", "segment", "gamma", "beta", "mask"], ["e", "mask_index"],
                            new AttributeProto { Name = "epsilon", Type = AttributeProto.Types.AttributeType.Float, F = 1e-5f }));
        graph.Node.Add(Node("Attention", ["e", "w_qkv", "b_qkv", "mask_index"], ["a"],
                            new AttributeProto { Name = "num_heads", Type = AttributeProto.Types.AttributeType.Int, I = 2 }));
        graph.Node.Add(Node("SkipLayerNormalization", ["a", "e", "skip_gamma", "skip_beta"], ["s"]));
        graph.Node.Add(Node("MatMul", ["s", "w_mlp"], ["h"]));
        graph.Node.Add(Node("Gelu", ["h"], ["g"]));
        graph.Node.Add(Node("QuickGelu", ["g"], ["y"]));
        return new ModelProto
        {
            IrVersion = 8, Graph = graph,
            OpsetImport = { new OperatorSetIdProto { Version = 17 }, new OperatorSetIdProto { Domain = ms, Version = 1 } },
        };
    }

    protected override Dictionary<string, NdArray> Inputs(Random random, int batch, int seq)
    {
        var ids = new NdArray<int>(batch, seq);
        var segments = new NdArray<int>(batch, seq);
        var mask = new NdArray<int>(batch, seq);
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seq; s++)
            {
                int t = b * seq + s;
                ids.Data[t] = random.Next(10);
                segments.Data[t] = s * 2 >= seq ? 1 : 0;
                mask.Data[t] = s < seq - b ? 1 : 0; // right padding growing with the batch index
            }
        return new() { ["ids"] = ids, ["segments"] = segments, ["mask"] = mask };
    }
}

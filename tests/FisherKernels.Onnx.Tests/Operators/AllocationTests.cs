using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>Hot operators allocate nothing per call once warm (forward, VJP and JVP), as the plan reuses its buffers.</summary>
public sealed class AllocationTests
{
    private readonly Random rng = new(3);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static OperatorAttributes A() => new();

    public static TheoryData<string> Cases() => new(
        "MatMul", "MatMulShared", "Gemm", "AddBias", "MulSame", "PowScalar", "Softmax", "LayerNormalization", "Transpose",
        "Where", "Gather", "Slice", "Split", "Concat", "ReduceMean", "Gelu", "Erf", "Tanh", "Reshape", "Expand",
        "Pad", "Tile", "ScatterND", "RotaryEmbedding", "Attention", "MultiHeadAttention", "OnnxAttention",
        "EmbedLayerNormalization", "QuickGelu", "GroupQueryAttention", "BiasAdd");

    [Theory]
    [MemberData(nameof(Cases))]
    public void NoAllocationPerCall(string name)
    {
        var (op, inputs) = name switch
        {
            "MatMul" => (OpRunner.Create("MatMul", 2), new NdArray?[] { R(2, 3, 4), R(2, 4, 5) }),
            "MatMulShared" => (OpRunner.Create("MatMul", 2), [R(2, 3, 4), R(4, 5)]),
            "Gemm" => (OpRunner.Create("Gemm", 3, attributes: A().Set("transB", 1L)), [R(3, 4), R(5, 4), R(5)]),
            "AddBias" => (OpRunner.Create("Add", 2), [R(2, 3, 4), R(4)]),
            "MulSame" => (OpRunner.Create("Mul", 2), [R(2, 3, 4), R(2, 3, 4)]),
            "PowScalar" => (OpRunner.Create("Pow", 2), [OpRunner.Random(rng, 0.5, 2, 2, 3), new NdArray<float>([], [2f])]),
            "Softmax" => (OpRunner.Create("Softmax", 1), [R(2, 3, 4)]),
            "LayerNormalization" => (OpRunner.Create("LayerNormalization", 3), [R(2, 3, 4), R(4), R(4)]),
            "Transpose" => (OpRunner.Create("Transpose", 1, attributes: A().Set("perm", new long[] { 0, 2, 3, 1 })), [R(2, 3, 2, 4)]),
            "Where" => (OpRunner.Create("Where", 3), [new NdArray<bool>([1, 4], [true, false, true, false]), R(3, 4), R(3, 1)]),
            "Gather" => (OpRunner.Create("Gather", 2), [R(5, 3), OpRunner.Longs(1, 4, 1)]),
            "Slice" => (OpRunner.Create("Slice", 5), [R(4, 6), OpRunner.Longs(1), OpRunner.Longs(5), OpRunner.Longs(1), OpRunner.Longs(2)]),
            "Split" => (OpRunner.Create("Split", 2, outputs: 2, attributes: A().Set("axis", 1L)), [R(2, 6), OpRunner.Longs(2, 4)]),
            "Concat" => (OpRunner.Create("Concat", 2, attributes: A().Set("axis", 1L)), [R(2, 3), R(2, 2)]),
            "ReduceMean" => (OpRunner.Create("ReduceMean", 2, opset: 18), [R(2, 3, 4), OpRunner.Longs(-1)]),
            "Gelu" => (OpRunner.Create("Gelu", 1, opset: 20), [R(2, 40)]),
            "Erf" => (OpRunner.Create("Erf", 1), [R(2, 40)]),
            "Tanh" => (OpRunner.Create("Tanh", 1), [R(2, 40)]),
            "Reshape" => (OpRunner.Create("Reshape", 2), [R(2, 3, 4), OpRunner.Longs(6, -1)]),
            "Pad" => (OpRunner.Create("Pad", 3, opset: 13), [R(2, 3), OpRunner.Longs(1, -1, 0, 2), new NdArray<float>([], [0.5f])]),
            "Tile" => (OpRunner.Create("Tile", 2), [R(2, 3), OpRunner.Longs(2, 2)]),
            "ScatterND" => (OpRunner.Create("ScatterND", 3), [R(4, 3), new NdArray<long>([2, 1], [2, 0]), R(2, 3)]),
            "RotaryEmbedding" => (OpRunner.Create("RotaryEmbedding", 4, opset: 1, domain: OperatorRegistry.MicrosoftDomain), [R(1, 3, 8), OpRunner.Longs(0), R(4, 2), R(4, 2)]),
            "Attention" => (OpRunner.Create("Attention", 4, attributes: A().Set("num_heads", 2L), opset: 1, domain: OperatorRegistry.MicrosoftDomain),
                            [R(2, 3, 4), R(4, 12), R(12), new NdArray<int>([2, 3], [1, 1, 1, 1, 1, 0])]),
            "MultiHeadAttention" => (OpRunner.Create("MultiHeadAttention", 3, attributes: A().Set("num_heads", 2L).Set("unidirectional", 1L), opset: 1, domain: OperatorRegistry.MicrosoftDomain),
                                     [R(1, 3, 4), R(1, 3, 4), R(1, 3, 4)]),
            "OnnxAttention" => (OpRunner.Create("Attention", 4, attributes: A().Set("is_causal", 1L), opset: 23), [R(1, 2, 3, 4), R(1, 1, 3, 4), R(1, 1, 3, 4), R(1, 1, 3, 3)]),
            "EmbedLayerNormalization" => (OpRunner.Create("EmbedLayerNormalization", 8, outputs: 3, opset: 1, domain: OperatorRegistry.MicrosoftDomain),
                                          [new NdArray<int>([1, 3], [2, 0, 2]), new NdArray<int>([1, 3], [0, 1, 1]), R(3, 4), R(3, 4), R(2, 4), R(4), R(4), new NdArray<int>([1, 3], [1, 1, 0])]),
            "GroupQueryAttention" => (OpRunner.Create("GroupQueryAttention", 7, outputs: 3, attributes: A().Set("num_heads", 4L).Set("kv_num_heads", 2L), opset: 1, domain: OperatorRegistry.MicrosoftDomain),
                                      [R(1, 3, 8), R(1, 3, 4), R(1, 3, 4), null, null, new NdArray<int>([1], [2]), new NdArray<int>([], [3])]),
            "BiasAdd" => (OpRunner.Create("BiasAdd", 3, opset: 1, domain: OperatorRegistry.MicrosoftDomain), [R(2, 3, 4), R(4), R(2, 3, 4)]),
            "QuickGelu" => (OpRunner.Create("QuickGelu", 1, opset: 1, domain: OperatorRegistry.MicrosoftDomain), [R(2, 40)]),
            _ => (OpRunner.Create("Expand", 2), [R(3, 1), OpRunner.Longs(2, 3, 4)]),
        };
        var outputs = OpRunner.Allocate(op, inputs);
        var floats = Enumerable.Range(0, inputs.Length).Where(i => inputs[i] is NdArray<float> && op.IsDifferentiable(i)).ToArray();
        var tangents = inputs.Select((x, i) => floats.Contains(i) ? R(x!.Shape) : null).ToArray();
        var grads = inputs.Select((x, i) => floats.Contains(i) ? new NdArray<float>(x!.Shape) : null).ToArray();
        var outTangents = outputs.Select(o => (NdArray<float>?)new NdArray<float>(o.Shape)).ToArray();
        var cotangents = outputs.Select(o => (NdArray<float>?)R(o.Shape)).ToArray();
        var context = OpRunner.Context;
        void Call()
        {
            op.Forward(context, inputs, outputs);
            op.Vjp(context, inputs, outputs, cotangents, grads);
            op.Jvp(context, inputs, outputs, tangents, outTangents);
        }
        Call(); // warm: scratch grows once, JIT
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 3; i++) Call();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{name}: {allocated} bytes allocated in 3 warm forward+VJP+JVP calls");
    }
}

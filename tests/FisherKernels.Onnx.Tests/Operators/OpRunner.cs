using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>Builds one operator the way the graph does and runs it on given arrays.</summary>
internal static class OpRunner
{
    // Test classes run in parallel and a context's scratch is not shareable: one context per thread.
    private static readonly ThreadLocal<OpContext> Contexts = new(() => new OpContext(new CpuBackend(threads: 1)));

    public static OpContext Context => Contexts.Value!;

    public static Operator Create(string opType, int inputs, int outputs = 1, OperatorAttributes? attributes = null,
                                  int opset = 17, string domain = "") =>
        OperatorRegistry.Create(new OperatorNode("n0", opType, domain, opset, attributes ?? new OperatorAttributes(), inputs, outputs));

    /// <summary>Infers shapes (every input known, as at plan time) and runs the forward into fresh outputs.</summary>
    public static NdArray[] Forward(Operator op, params NdArray?[] inputs)
    {
        var outputs = Allocate(op, inputs);
        op.Forward(Context, inputs, outputs);
        return outputs;
    }

    public static NdArray[] Allocate(Operator op, NdArray?[] inputs)
    {
        var infos = Array.ConvertAll(inputs, x => x is null ? null : new TensorInfo(x.ElementType, x.Shape, x));
        var outInfos = op.InferShapes(infos);
        Assert.Equal(op.Node.OutputCount, outInfos.Length);
        return Array.ConvertAll(outInfos, info => Tensors.Allocate(info.Type, info.Shape));
    }

    public static NdArray<float> Random(Random random, params int[] shape)
    {
        var a = new NdArray<float>(shape);
        for (int i = 0; i < a.Data.Length; i++) a.Data[i] = (float)(random.NextDouble() * 2 - 1);
        return a;
    }

    public static NdArray<float> Random(Random random, double low, double high, params int[] shape)
    {
        var a = new NdArray<float>(shape);
        for (int i = 0; i < a.Data.Length; i++) a.Data[i] = (float)(low + random.NextDouble() * (high - low));
        return a;
    }

    public static NdArray<long> Longs(params long[] values) => new([values.Length], values);
}

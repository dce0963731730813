using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace FisherKernels.Tests.Plan;

/// <summary>ONNX Runtime as the reference executor for forward outputs.</summary>
internal static class OnnxRuntimeReference
{
    /// <summary>Each named value of the plan (already run) against ONNX Runtime's run of the same model and inputs.</summary>
    public static void AssertPlanMatches(Onnx.Plan.ExecutionPlan plan, string path, IReadOnlyDictionary<string, NdArray> inputs, IEnumerable<string> names, double tolerance)
    {
        var reference = Run(path, inputs);
        foreach (var name in names)
        {
            var ours = (NdArray<float>)plan.Get(name);
            Assert.Equal(reference[name].Shape, ours.Shape);
            for (int i = 0; i < ours.Data.Length; i++) Assert.Equal(reference[name].Data[i], ours.Data[i], tolerance);
        }
    }

    /// <summary>Every graph output, as float arrays (ints widened), for the given named inputs.</summary>
    public static Dictionary<string, (int[] Shape, double[] Data)> Run(string modelPath, IReadOnlyDictionary<string, NdArray> inputs)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(modelPath, options);
        var feeds = new List<NamedOnnxValue>();
        foreach (var (name, value) in inputs)
        {
            feeds.Add(value switch
            {
                NdArray<long> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(v.Data, v.Shape)),
                NdArray<int> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<int>(v.Data, v.Shape)),
                NdArray<float> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<float>(v.Data, v.Shape)),
                NdArray<bool> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<bool>(v.Data, v.Shape)),
                NdArray<sbyte> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<sbyte>(v.Data, v.Shape)),
                NdArray<byte> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<byte>(v.Data, v.Shape)),
                NdArray<short> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<short>(v.Data, v.Shape)),
                NdArray<ushort> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<ushort>(v.Data, v.Shape)),
                NdArray<uint> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<uint>(v.Data, v.Shape)),
                NdArray<ulong> v => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<ulong>(v.Data, v.Shape)),
                _ => throw new ArgumentException($"input {name}: {value.ElementType}"),
            });
        }
        using var results = session.Run(feeds);
        var outputs = new Dictionary<string, (int[], double[])>();
        foreach (var r in results)
        {
            switch (r.Value)
            {
                case Tensor<float> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<long> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<int> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<bool> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => x ? 1.0 : 0.0).ToArray()); break;
                case Tensor<sbyte> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<byte> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<short> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<ushort> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<uint> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
                case Tensor<ulong> t: outputs[r.Name] = (t.Dimensions.ToArray(), t.ToArray().Select(x => (double)x).ToArray()); break;
            }
        }
        return outputs;
    }
}

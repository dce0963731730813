using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// Integer graph inputs that set shapes, starts and axes (as exporters without constant folding write them, and as ONNX's
/// node tests do) are folded by value into each plan; the plan cache tells their values apart. Against ONNX Runtime.
/// </summary>
public sealed class ValueInputTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    /// <summary>
    /// m = x ⊙ w; r = Reshape(m, shape); s = Slice(r, starts, [100], axes); y = ReduceSum(s, axes, keepdims 0);
    /// z = Reshape(x, Shape(x)) (x's value is not needed: Shape reads only its shape).
    /// </summary>
    private static string WriteModel(TempFolder temp)
    {
        var w = new TensorProto { Name = "w", DataType = 1, Dims = { 6 } };
        for (int i = 0; i < 6; i++) w.FloatData.Add(0.5f + 0.25f * i);
        var ends = new TensorProto { Name = "ends", DataType = 7, Dims = { 1 }, Int64Data = { 100 } };
        var graph = new GraphProto
        {
            Name = "value_inputs",
            Initializer = { w, ends },
            Input = { Input("x", 1, 2), Input("shape", 7, 1), Input("starts", 7, 1), Input("axes", 7, 1) },
            Output = { new ValueInfoProto { Name = "y" }, new ValueInfoProto { Name = "z" } },
        };
        graph.Node.Add(Node("Mul", ["x", "w"], "m"));
        graph.Node.Add(Node("Reshape", ["m", "shape"], "r"));
        graph.Node.Add(Node("Slice", ["r", "starts", "ends", "axes"], "s"));
        graph.Node.Add(new NodeProto { Name = "sum", OpType = "ReduceSum", Input = { "s", "axes" }, Output = { "y" },
                                       Attribute = { new AttributeProto { Name = "keepdims", Type = AttributeProto.Types.AttributeType.Int, I = 0 } } });
        graph.Node.Add(Node("Shape", ["x"], "xs"));
        graph.Node.Add(Node("Reshape", ["x", "xs"], "z"));
        var model = new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
        string path = temp.File("value_inputs.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        return path;
    }

    private static Dictionary<string, NdArray> Inputs(long[] shape, long start, long axis)
    {
        var x = new NdArray<float>(2, 6);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = MathF.Sin(i + 1);
        return new Dictionary<string, NdArray>
        {
            ["x"] = x, ["shape"] = new NdArray<long>([shape.Length], shape),
            ["starts"] = new NdArray<long>([1], [start]), ["axes"] = new NdArray<long>([1], [axis]),
        };
    }

    [Fact]
    public void ShapeOperandsThatArriveAsInputsAreFoldedByValue()
    {
        using var temp = new TempFolder();
        string path = WriteModel(temp);
        var model = OnnxModel.Load(path);
        Assert.Equal(["axes", "shape", "starts"], model.ValueInputs.Order(StringComparer.Ordinal));

        foreach (var (shape, start, axis) in new[] { (new long[] { 3, 4 }, 1L, 0L), ([4, 3], 1, 1), ([2, 2, 3], -2, 2), ([3, 4], 1, 0) })
        {
            var inputs = Inputs(shape, start, axis);
            var plan = model.GetPlan(inputs);
            plan.Run(Context, inputs);
            OnnxRuntimeReference.AssertPlanMatches(plan, path, inputs, ["y", "z"], 1e-5);
        }
        // One plan per value: the same values find the cached plan, others build their own.
        var first = model.GetPlan(Inputs([3, 4], 1, 0));
        Assert.Same(first, model.GetPlan(Inputs([3, 4], 1, 0)));
        Assert.NotSame(first, model.GetPlan(Inputs([3, 4], 2, 0)));
    }

    [Fact]
    public void APlanRefusesOtherValuesAndShapesAloneAreNotEnough()
    {
        using var temp = new TempFolder();
        var model = OnnxModel.Load(WriteModel(temp));
        var plan = model.GetPlan(Inputs([3, 4], 1, 0));
        var e = Assert.Throws<FisherKernelsException>(() => plan.Run(Context, Inputs([4, 3], 1, 0)));
        Assert.Contains("input 'shape' differs", e.Message);
        e = Assert.Throws<FisherKernelsException>(() => model.GetPlan(Inputs([3, 4], 1, 0).ToDictionary(kv => kv.Key, kv => kv.Value.Shape)));
        Assert.Contains("value of input 'axes'", e.Message);
    }

    [Fact]
    public void DerivativesFlowThroughTheFoldedShapes()
    {
        using var temp = new TempFolder();
        var model = OnnxModel.Load(WriteModel(temp));
        var inputs = Inputs([4, 3], 1, 1);
        var plan = model.GetPlan(inputs, new HashSet<string> { "w" }, keepAll: true);
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, ["w"], "y", new Random(6));
    }

    private static ValueInfoProto Input(string name, int type, int rank)
    {
        var shape = new TensorShapeProto();
        for (int d = 0; d < rank; d++) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = $"{name}_{d}" });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = type, Shape = shape } } };
    }

    private static NodeProto Node(string op, string[] inputs, string output) =>
        new() { Name = op + "_" + output, OpType = op, Input = { inputs }, Output = { output } };
}

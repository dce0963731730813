using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.ControlFlow;

/// <summary>
/// Sequence-typed graph inputs and outputs (and an optional sequence): given as their elements x[0], x[1], …, read
/// back as y[0], y[1], …. References are the elements themselves, written out by hand (concatenation and insertion).
/// </summary>
public sealed class SequenceGraphIoTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    private static TypeProto Tensor(int?[] shape)
    {
        var s = new TensorShapeProto();
        foreach (var d in shape) s.Dim.Add(d is int v ? new TensorShapeProto.Types.Dimension { DimValue = v } : new TensorShapeProto.Types.Dimension { DimParam = "n" });
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = s } };
    }

    private static TypeProto SequenceOf(TypeProto element) => new() { SequenceType = new TypeProto.Types.Sequence { ElemType = element } };

    /// <summary>seq (optional sequence of float [n, 2]) and extra [1, 2] → cat = ConcatFromSequence(seq, axis 0), grown = SequenceInsert(seq, extra).</summary>
    private static OnnxModel Model(TempFolder temp)
    {
        var graph = new GraphProto
        {
            Name = "g",
            Input =
            {
                new ValueInfoProto { Name = "seq", Type = new TypeProto { OptionalType = new TypeProto.Types.Optional { ElemType = SequenceOf(Tensor([null, 2])) } } },
                new ValueInfoProto { Name = "extra", Type = Tensor([1, 2]) },
            },
            Node =
            {
                new NodeProto { Name = "cat", OpType = "ConcatFromSequence", Input = { "seq" }, Output = { "cat" },
                                Attribute = { new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = 0 } } },
                new NodeProto { Name = "insert", OpType = "SequenceInsert", Input = { "seq", "extra" }, Output = { "grown" } },
            },
            Output = { new ValueInfoProto { Name = "cat", Type = Tensor([null, 2]) }, new ValueInfoProto { Name = "grown", Type = SequenceOf(Tensor([null, 2])) } },
        };
        var model = new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Domain = "", Version = 17 } }, Graph = graph };
        string path = temp.File("sequences.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        return OnnxModel.Load(path);
    }

    [Fact]
    public void SequenceInputsArriveAsElementsAndSequenceOutputsLeaveAsElements()
    {
        using var temp = new TempFolder();
        var model = Model(temp);
        Assert.True(model.Graph.Inputs[0].IsSequence);
        Assert.Equal("seq (sequence of Float32 [n, 2])", model.Graph.Inputs[0].Describe());
        var inputs = new Dictionary<string, NdArray>
        {
            [ValueInfo.ElementName("seq", 0)] = new NdArray<float>([1, 2], [1, 2]),
            [ValueInfo.ElementName("seq", 1)] = new NdArray<float>([2, 2], [3, 4, 5, 6]),
            ["extra"] = new NdArray<float>([1, 2], [7, 8]),
        };
        var plan = model.GetPlan(inputs);
        plan.Run(Context, inputs);
        Assert.Null(plan.SequenceLength("cat"));
        Assert.Equal([3, 2], plan.Get("cat").Shape);
        Assert.Equal([1f, 2, 3, 4, 5, 6], ((NdArray<float>)plan.Get("cat")).Data);
        Assert.Equal(3, plan.SequenceLength("grown"));
        Assert.Equal([1f, 2], ((NdArray<float>)plan.Get("grown[0]")).Data);
        Assert.Equal([3f, 4, 5, 6], ((NdArray<float>)plan.Get("grown[1]")).Data);
        Assert.Equal([7f, 8], ((NdArray<float>)plan.Get("grown[2]")).Data);

        // Another run with other values of the same shapes reuses the plan, and its outputs follow.
        inputs["extra"] = new NdArray<float>([1, 2], [-1, -2]);
        Assert.Same(plan, model.GetPlan(inputs));
        plan.Run(Context, inputs);
        Assert.Equal([-1f, -2], ((NdArray<float>)plan.Get("grown[2]")).Data);
    }

    [Fact]
    public void ElementsNumberedWithAGapAreRefused()
    {
        using var temp = new TempFolder();
        var inputs = new Dictionary<string, NdArray>
        {
            [ValueInfo.ElementName("seq", 0)] = new NdArray<float>([1, 2], [1, 2]),
            [ValueInfo.ElementName("seq", 2)] = new NdArray<float>([1, 2], [3, 4]),
            ["extra"] = new NdArray<float>([1, 2], [7, 8]),
        };
        var e = Assert.Throws<FisherKernelsException>(() => Model(temp).GetPlan(inputs));
        Assert.Contains("'seq[2]'", e.Message);
    }

    [Fact]
    public void ElementsThatDoNotConcatenateAreRefusedNamingTheNode()
    {
        // A sequence's tensors may differ in shape; concatenating [1, 3] and [1, 2] on axis 0 may not.
        using var temp = new TempFolder();
        var model = Model(temp);
        var inputs = new Dictionary<string, NdArray>
        {
            [ValueInfo.ElementName("seq", 0)] = new NdArray<float>([1, 3], [1, 2, 3]),
            [ValueInfo.ElementName("seq", 1)] = new NdArray<float>([1, 2], [4, 5]),
            ["extra"] = new NdArray<float>([1, 2], [7, 8]),
        };
        var e = Assert.Throws<FisherKernelsException>(() => model.GetPlan(inputs));
        Assert.StartsWith("node 'cat/", e.Message);
    }

    /// <summary>A one-node model with input x of <paramref name="inputType"/> (or none) and initializer w [2], output y.</summary>
    private static OnnxModel OneNode(TempFolder temp, NodeProto node, TypeProto? inputType)
    {
        var graph = new GraphProto { Name = "g", Node = { node }, Output = { new ValueInfoProto { Name = "y" } } };
        if (inputType is not null) graph.Input.Add(new ValueInfoProto { Name = "x", Type = inputType });
        graph.Initializer.Add(new TensorProto { Name = "w", DataType = 1, Dims = { 2 }, FloatData = { 1.5f, -2 } });
        string path = temp.File(node.Name + ".onnx");
        File.WriteAllBytes(path, new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Domain = "", Version = 17 } }, Graph = graph }.ToByteArray());
        return OnnxModel.Load(path);
    }

    [Fact]
    public void AnOptionalInputLeftOutHoldsNothingAndGettingItsElementIsRefusedNamingTheNode()
    {
        using var temp = new TempFolder();
        var optional = new TypeProto { OptionalType = new TypeProto.Types.Optional { ElemType = Tensor([2]) } };
        var has = OneNode(temp, new NodeProto { Name = "has", OpType = "OptionalHasElement", Input = { "x" }, Output = { "y" } }, optional);
        foreach (var (inputs, holds) in new[] { (new Dictionary<string, NdArray>(), false), (new() { ["x"] = new NdArray<float>([2], [1, 2]) }, true) })
        {
            var plan = has.GetPlan(inputs);
            plan.Run(Context, inputs);
            Assert.Equal([holds], ((NdArray<bool>)plan.Get("y")).Data);
        }
        var get = OneNode(temp, new NodeProto { Name = "get", OpType = "OptionalGetElement", Input = { "x" }, Output = { "y" } }, optional);
        var e = Assert.Throws<FisherKernelsException>(() => get.GetPlan(new Dictionary<string, NdArray>()));
        Assert.StartsWith("node 'get'", e.Message);
        Assert.Contains("input 'x' is an optional value that holds nothing", e.Message);
    }

    [Fact]
    public void AStringFromValuesKnownOnlyWhenThePlanRunsIsRefusedNamingTheNode()
    {
        // Cast(w) to string folds while w is a constant; a plan that differentiates by w cannot know it when it is built.
        using var temp = new TempFolder();
        var model = OneNode(temp, new NodeProto
        {
            Name = "text", OpType = "Cast", Input = { "w" }, Output = { "y" },
            Attribute = { new AttributeProto { Name = "to", Type = AttributeProto.Types.AttributeType.Int, I = 8 } },
        }, null);
        var inference = model.GetPlan(new Dictionary<string, NdArray>());
        Assert.Equal(["1.5", "-2.0"], Assert.IsType<StringArray>(inference.Get("y")).Data);
        var e = Assert.Throws<FisherKernelsException>(() => model.GetPlan(new Dictionary<string, NdArray>(), new HashSet<string> { "w" }, keepAll: true));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.StartsWith("node 'text'", e.Message);
        Assert.Contains("makes a string from values known only when the plan runs", e.Message);
    }
}

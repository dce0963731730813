using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Tests.Plan;

namespace FisherKernels.Tests.ControlFlow;

/// <summary>
/// Loop, If and the sequence operators, which the plan builder unrolls and inlines into plain operators. References:
/// ONNX's own backend test cases (inputs and expected outputs from the onnx package's generators, make_onnx_tests.py
/// beside this file), ONNX Runtime for the forward values of a model that sends floats through all of them, and
/// finite differences for its gradients and tangents.
/// </summary>
public sealed class ControlFlowTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));
    private static readonly string Folder = Fixtures.ProjectFile("ControlFlow");
    private static readonly Lazy<Dictionary<string, NdArray>> Arrays = new(LoadArrays);
    private static readonly HashSet<string> Expanded =
        ["Loop", "If", "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
         "SequenceMap", "Optional", "OptionalHasElement", "OptionalGetElement"];

    public static TheoryData<string> OnnxCases()
    {
        var data = new TheoryData<string>();
        foreach (var file in Directory.GetFiles(Folder, "test_*.onnx").Order(StringComparer.Ordinal)) data.Add(Path.GetFileNameWithoutExtension(file));
        return data;
    }

    [Theory]
    [MemberData(nameof(OnnxCases))]
    public void OnnxBackendCaseGivesTheExpectedOutputs(string name)
    {
        var model = OnnxModel.Load(Path.Combine(Folder, name + ".onnx"));
        var inputs = model.Graph.Inputs.Select((input, i) => (input.Name, Value: Engine(Arrays.Value[$"{name}/in{i}"])))
                                       .ToDictionary(p => p.Name, p => p.Value);
        // Trip counts, conditions, positions and split sizes given as inputs are folded by value into the plan.
        var plan = model.GetPlan(inputs);
        AssertPlain(plan);
        plan.Run(Context, inputs);
        for (int j = 0; j < model.Graph.Outputs.Count; j++)
        {
            var expected = Engine(Arrays.Value[$"{name}/out{j}"]);
            var ours = plan.Get(model.Graph.Outputs[j].Name);
            Assert.Equal(expected.Shape, ours.Shape);
            Assert.Equal(expected.ElementType, ours.ElementType);
            double[] e = Fixtures.Doubles(expected), o = Fixtures.Doubles(ours);
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(o[i] - e[i]) <= 1e-6 + 1e-5 * Math.Abs(e[i]), $"{name} output {j}[{i}]: {o[i]}, expected {e[i]}");
        }
    }

    [Fact]
    public void FloatsThroughLoopIfAndSequencesMatchOnnxRuntimeAndFiniteDifferences()
    {
        string path = Path.Combine(Folder, "flow_derivatives.onnx");
        var model = OnnxModel.Load(path);
        var random = new Random(16);
        var x = new NdArray<float>(3, 4);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        var shapes = new Dictionary<string, int[]> { ["x"] = [3, 4] };

        var inference = model.GetPlan(shapes);
        AssertPlain(inference);
        inference.Run(Context, inputs);
        var (shape, reference) = OnnxRuntimeReference.Run(path, inputs)["y"];
        var y = (NdArray<float>)inference.Get("y");
        Assert.Equal(shape, y.Shape);
        for (int i = 0; i < reference.Length; i++) Assert.Equal(reference[i], y.Data[i], 1e-5 * (1 + Math.Abs(reference[i])));

        string[] variables = ["w", "s"];
        var plan = model.GetPlan(shapes, variables.ToHashSet(), keepAll: true);
        AssertPlain(plan);
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, variables, "y", random);
    }

    /// <summary>
    /// SequenceMap and the Optional operators with floats flowing through them (flow_optional_map.onnx): the forward value
    /// against make_onnx_tests.py's float64 computation, derivatives by w and s against each other and central differences.
    /// </summary>
    [Fact]
    public void FloatsThroughSequenceMapAndOptionalsMatchTheReferenceAndFiniteDifferences()
    {
        var model = OnnxModel.Load(Path.Combine(Folder, "flow_optional_map.onnx"));
        var inputs = new Dictionary<string, NdArray> { ["x"] = Engine(Arrays.Value["flow_optional_map/x"]) };
        var shapes = new Dictionary<string, int[]> { ["x"] = [3, 4] };
        var inference = model.GetPlan(shapes);
        AssertPlain(inference);
        inference.Run(Context, inputs);
        double[] expected = Fixtures.Doubles(Arrays.Value["flow_optional_map/y"]), y = Fixtures.Doubles(inference.Get("y"));
        Assert.Equal(expected.Length, y.Length);
        for (int i = 0; i < y.Length; i++) Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-6 * (1 + Math.Abs(expected[i])), $"y[{i}]: {y[i]}, expected {expected[i]}");

        string[] variables = ["w", "s"];
        var plan = model.GetPlan(shapes, variables.ToHashSet(), keepAll: true);
        AssertPlain(plan);
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, variables, "y", new Random(17));
    }

    [Theory]
    [InlineData("flow_data_dependent_if", "node 'branch' (If): the condition ('flag') must be known when the plan is built")]
    [InlineData("flow_data_dependent_loop", "node 'loop' (Loop): the trip count ('trips') must be known when the plan is built")]
    public void ControlFlowThatDependsOnAParameterIsRefusedByName(string file, string message)
    {
        // The condition or trip count follows from w: known in an inference plan, not in one that differentiates by w.
        var model = OnnxModel.Load(Path.Combine(Folder, file + ".onnx"));
        var shapes = new Dictionary<string, int[]> { ["x"] = [3, 4] };
        AssertPlain(model.GetPlan(shapes));
        var e = Assert.Throws<FisherKernelsException>(() => model.GetPlan(shapes, new HashSet<string> { "w", "s" }, keepAll: true));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.StartsWith(message, e.Message);
    }

    [Fact]
    public void ValueThatABodyNeedsIsFoldedFromTheGraphInput()
    {
        // y = 2 · Reshape(x, shape) with the Reshape inside the Loop body and 'shape' a graph input read from the outer scope.
        var model = OnnxModel.Load(Path.Combine(Folder, "flow_value_in_body.onnx"));
        Assert.Contains("shape", model.ValueInputs);
        var x = new NdArray<float>([3, 4], Enumerable.Range(0, 12).Select(i => (float)i).ToArray());
        var inputs = new Dictionary<string, NdArray> { ["x"] = x, ["shape"] = new NdArray<long>([2], [4, 3]) };
        var plan = model.GetPlan(inputs);
        AssertPlain(plan);
        plan.Run(Context, inputs);
        var y = (NdArray<float>)plan.Get("y");
        Assert.Equal([4, 3], y.Shape);
        Assert.Equal(x.Data.Select(v => 2 * v), y.Data);
    }

    [Fact]
    public void UnsupportedOperatorInABodyIsRefusedWhenTheModelLoads()
    {
        var e = Assert.Throws<FisherKernelsException>(() => OnnxModel.Load(Path.Combine(Folder, "flow_unsupported_in_body.onnx")));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("'Mystery' (domain 'com.example') at node 'body_op'", e.Message);
    }

    /// <summary>Fusion, the buffer pool and the derivative passes see plain operators only.</summary>
    private static void AssertPlain(ExecutionPlan plan) =>
        Assert.DoesNotContain(plan.Steps, s => Expanded.Contains(s.Node.OpType));

    private static NdArray Engine(NdArray a) => Fixtures.Engine(a);

    private static Dictionary<string, NdArray> LoadArrays() => Fixtures.ReadNpz(Path.Combine(Folder, "onnx_tests.npz"));
}

using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Tests.NodeTests;

/// <summary>
/// ONNX's own backend node tests (the onnx package's test-case generators, written by make_node_tests.py beside this
/// file) for every case whose operators the engine supports: the model loaded from its bytes, run by the plan on the
/// case's inputs, each output within ONNX's tolerance (|Δ| ≤ atol + rtol·|expected|) of the case's expected output.
/// A case below opset 11 (SPEC §1's floor) must instead be refused with a clear error (never a wrong answer).
/// </summary>
public sealed class OnnxNodeTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));
    private static readonly Lazy<Dictionary<string, NdArray>> Arrays = new(() => Fixtures.ReadNpz(Fixtures.ProjectFile("NodeTests", "node_tests.npz")));
    private static readonly Lazy<Dictionary<string, JsonElement>> Cases = new(() =>
        JsonDocument.Parse(File.ReadAllText(Fixtures.ProjectFile("NodeTests", "node_tests.json"))).RootElement
            .GetProperty("cases").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!));

    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (var name in Cases.Value.Keys) data.Add(name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void MatchesTheOnnxReference(string name)
    {
        if (RefusalOf(name) is { } reason)
        {
            var e = Assert.Throws<FisherKernelsException>(() => Run(name));
            Assert.NotEqual(ErrorKind.Internal, e.Kind);
            Assert.Contains(reason, e.Message);
            return;
        }
        Run(name);
    }

    /// <summary>
    /// Cases a central difference with steps of 1e-2 cannot check: x^y at negative x (NaN), softmax of inputs near 10⁴
    /// (a float32 step there is not 1e-2), √x with x in [0, 1) (the step is a large part of x), the bfloat16 casts (their
    /// inputs hold NaN and ±infinity), the float16 casts (each rounding moves the value by up to 2⁻¹² of it, which over a
    /// 2·1e-2 step is a few percent of the quotient; their derivative is the identity, as for every float cast).
    /// </summary>
    private static readonly HashSet<string> NoCentralDifference =
    [
        "test_pow", "test_sqrt", "test_softmax_large_number", "test_softmax_large_number_expanded",
        "test_logsoftmax_large_number", "test_logsoftmax_large_number_expanded",
        "test_cast_FLOAT_to_BFLOAT16", "test_castlike_FLOAT_to_BFLOAT16_expanded", "test_cast_BFLOAT16_to_FLOAT", "test_castlike_BFLOAT16_to_FLOAT_expanded",
        "test_cast_FLOAT_to_FLOAT16", "test_cast_DOUBLE_to_FLOAT16", "test_castlike_FLOAT_to_FLOAT16_expanded", "test_castlike_DOUBLE_to_FLOAT16_expanded",
    ];

    /// <summary>The cases that run (not refused) whose first output is float and has a differentiable float input.</summary>
    public static TheoryData<string> DifferentiableNames()
    {
        var data = new TheoryData<string>();
        foreach (var name in Cases.Value.Keys)
        {
            if (RefusalOf(name) is not null || NoCentralDifference.Contains(name) || !Arrays.Value.TryGetValue($"{name}/out0", out var first) // a sequence output: no single tensor to difference
                || first is not (NdArray<float> or NdArray<double> or NdArray<Half>)) continue;
            using var temp = new TempFolder();
            if (WithParameters(name, temp).Variables.Count > 0) data.Add(name);
        }
        return data;
    }

    /// <summary>
    /// Reverse and forward mode through the case's graph, with its differentiable float inputs made parameters:
    /// ⟨u, J v⟩ = ⟨Jᵀ u, v⟩ and both equal a central difference (PlanDerivativeCheck, float32 steps of 1e-2).
    /// </summary>
    [Theory]
    [MemberData(nameof(DifferentiableNames))]
    public void DerivativesAgreeWithCentralDifferences(string name)
    {
        using var temp = new TempFolder();
        var (model, inputs, variables) = WithParameters(name, temp);
        var plan = model.GetPlan(inputs, variables.ToHashSet(), keepAll: true);
        Plan.PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, variables,
                                                                         Cases.Value[name].GetProperty("outputs")[0].GetString()!, new Random(name.Length));
    }

    /// <summary>
    /// The case's model with each float input that some node differentiates (and whose value the plan does not need)
    /// turned into an initializer: the parameters. The other inputs are returned to be fed.
    /// </summary>
    private static (OnnxModel Model, Dictionary<string, NdArray> Inputs, List<string> Variables) WithParameters(string name, TempFolder temp)
    {
        var c = Cases.Value[name];
        string path = temp.File(name + ".onnx");
        File.WriteAllBytes(path, ((NdArray<byte>)Arrays.Value[$"{name}/model"]).Data);
        var loaded = OnnxModel.Load(path);
        var graph = loaded.Graph;
        bool Differentiated(string value) => graph.Consumers.TryGetValue(value, out var nodes) && nodes.Any(node =>
        {
            var op = loaded.OperatorFor(node);
            return node.Inputs.Select((input, i) => input == value && (op.IsView ? i == 0 : op.IsDifferentiable(i))).Any(x => x);
        });
        var inputNames = c.GetProperty("inputs").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var inputs = new Dictionary<string, NdArray>();
        var initializers = new Dictionary<string, NdArray>(graph.Initializers);
        var variables = new List<string>();
        for (int i = 0; i < inputNames.Length; i++)
        {
            var declared = graph.Inputs.Single(v => v.Name == inputNames[i]);
            if (IsAbsent(c, i)) continue;
            if (SequenceLength(c, $"in{i}") is int count)
            {
                for (int j = 0; j < count; j++) inputs[Onnx.Graph.ValueInfo.ElementName(inputNames[i], j)] = AsEngineInput(Arrays.Value[$"{name}/in{i}[{j}]"], declared.ElementType);
                continue;
            }
            var value = Strings(c, $"in{i}") ?? AsEngineInput(Arrays.Value[$"{name}/in{i}"], declared.ElementType);
            if (value is NdArray<float> && !loaded.ValueInputs.Contains(inputNames[i]) && Differentiated(inputNames[i]))
            {
                initializers[inputNames[i]] = value;
                variables.Add(inputNames[i]);
            }
            else inputs[inputNames[i]] = value;
        }
        var model = new OnnxModel(new Onnx.Graph.OnnxGraph
        {
            Source = graph.Source, Nodes = graph.Nodes, Initializers = initializers, InitializerOrder = [.. graph.InitializerOrder, .. variables],
            ConstantNodeValues = graph.ConstantNodeValues, Inputs = graph.Inputs.Where(v => !variables.Contains(v.Name)).ToList(),
            Outputs = graph.Outputs, Opsets = graph.Opsets,
        });
        return (model, inputs, variables);
    }

    /// <summary>What the error refusing a case must say, or null for a case that must pass.</summary>
    private static string? RefusalOf(string name) => Cases.Value[name].GetProperty("opset").GetInt32() < 11 ? "opsets 11–23" : null;

    private static void Run(string name)
    {
        var c = Cases.Value[name];
        using var temp = new TempFolder();
        string path = temp.File(name + ".onnx");
        File.WriteAllBytes(path, ((NdArray<byte>)Arrays.Value[$"{name}/model"]).Data);
        var model = OnnxModel.Load(path);
        var inputNames = c.GetProperty("inputs").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var inputs = new Dictionary<string, NdArray>();
        for (int i = 0; i < inputNames.Length; i++)
        {
            // An optional input given as none is left out; a sequence's elements arrive as name[j].
            var declared = model.Graph.Inputs.Single(v => v.Name == inputNames[i]);
            if (IsAbsent(c, i)) continue;
            if (SequenceLength(c, $"in{i}") is int count)
                for (int j = 0; j < count; j++) inputs[Onnx.Graph.ValueInfo.ElementName(inputNames[i], j)] = AsEngineInput(Arrays.Value[$"{name}/in{i}[{j}]"], declared.ElementType);
            else inputs[inputNames[i]] = Strings(c, $"in{i}") ?? AsEngineInput(Arrays.Value[$"{name}/in{i}"], declared.ElementType);
        }
        var plan = model.GetPlan(inputs);
        plan.Run(Context, inputs);
        double rtol = c.GetProperty("rtol").GetDouble(), atol = c.GetProperty("atol").GetDouble();
        var outputNames = c.GetProperty("outputs").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var compared = new List<(string Name, NdArray Expected)>();
        for (int j = 0; j < outputNames.Length; j++)
        {
            Assert.False(plan.HoldsNothing(outputNames[j]), $"{name} output '{outputNames[j]}' holds nothing");
            if (SequenceLength(c, $"out{j}") is not int count) { compared.Add((outputNames[j], Strings(c, $"out{j}") ?? Arrays.Value[$"{name}/out{j}"])); continue; }
            Assert.Equal(count, plan.SequenceLength(outputNames[j]));
            for (int k = 0; k < count; k++) compared.Add((Onnx.Graph.ValueInfo.ElementName(outputNames[j], k), Arrays.Value[$"{name}/out{j}[{k}]"]));
        }
        foreach (var (output, expected) in compared)
        {
            var ours = plan.Get(output);
            Assert.Equal(expected.Shape, ours.Shape);
            if (expected is StringArray text)
            {
                Assert.Equal(text.Data, Assert.IsType<StringArray>(ours).Data);
                continue;
            }
            Assert.True(Kind(expected.ElementType) == Kind(ours.ElementType), $"{name} output '{output}': {ours.ElementType}, expected {expected.ElementType}");
            double[] e = Fixtures.Doubles(expected), a = Fixtures.Doubles(ours);
            for (int k = 0; k < e.Length; k++)
                Assert.True(Math.Abs(a[k] - e[k]) <= atol + rtol * Math.Abs(e[k]) || a[k].Equals(e[k]),
                            $"{name} output '{output}'[{k}]: got {a[k]}, expected {e[k]} (rtol {rtol}, atol {atol})");
        }
    }

    /// <summary>The number of elements of sequence input or output <paramref name="key"/> ("in0", "out1", …), or null for a tensor.</summary>
    private static int? SequenceLength(JsonElement c, string key) =>
        c.TryGetProperty("sequences", out var sequences) && sequences.TryGetProperty(key, out var count) ? count.GetInt32() : null;

    /// <summary>String tensor <paramref name="key"/> ("in0", "out0", …) from the case's JSON (numpy holds strings as objects), or null.</summary>
    private static StringArray? Strings(JsonElement c, string key) =>
        c.TryGetProperty("strings", out var strings) && strings.TryGetProperty(key, out var value)
            ? new StringArray(value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt32()).ToArray(),
                              value.GetProperty("values").EnumerateArray().Select(v => v.GetString()!).ToArray())
            : null;

    /// <summary>Whether optional input <paramref name="i"/> is given as none (left out of the feeds).</summary>
    private static bool IsAbsent(JsonElement c, int i) =>
        c.TryGetProperty("absent_inputs", out var absent) && absent.EnumerateArray().Any(e => e.GetInt32() == i);

    /// <summary>The engine computes in float32: float64 and float16 inputs arrive as float32, as the CLI's run converts them.</summary>
    private static NdArray AsEngineInput(NdArray value, ElementType? declared) => (value, declared) switch
    {
        (NdArray<double> d, ElementType.Float32) => new NdArray<float>(d.Shape, Array.ConvertAll(d.Data, v => (float)v)),
        (NdArray<Half> h, ElementType.Float32) => new NdArray<float>(h.Shape, Array.ConvertAll(h.Data, v => (float)v)),
        _ => value,
    };

    private static char Kind(ElementType type) => type switch
    {
        ElementType.Float32 or ElementType.Float64 or ElementType.Float16 or ElementType.BFloat16 => 'f',
        ElementType.Bool => 'b',
        _ => 'i',
    };
}

using System.Text.Json;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Backends.Ilgpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using FisherKernels.Uncertainty;
using Google.Protobuf;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// Device-resident plans on the ILGPU CPU emulator (the same kernels CUDA runs; small shapes only, it is slow): the
/// fixture models' logits against the float64 torch goldens with the CPU path's tolerance and against the CPU path,
/// a hand-built graph of the data-movement and elementwise steps against the CPU plan, and the error for an
/// operator without a device form.
/// </summary>
public class DevicePlanTests
{
    private static readonly OpContext Cpu = new(new CpuBackend(1));

    /// <summary>One emulator for the class: opening it and compiling kernels costs seconds.</summary>
    private static readonly Lazy<IlgpuBackend> Emulator = new(IlgpuBackend.CreateCpuEmulator);

    private static OpContext Device => new(Emulator.Value);

    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("llama_gqa_tiny")]
    public void FixtureLogitsMatchTheGoldenAndTheCpuPath(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = (NdArray<long>)NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        var logits = lm.Forward(Device, tokens);
        var golden = (NdArray<double>)NpyFile.Read(Fixtures.Path(model + ".logits.npy"));
        ForwardTests.AssertLogits(golden.Shape, golden.Data, logits);
        AssertClose(lm.Forward(Cpu, tokens), logits);

        // A second run on the same device plan (its buffers reused) with other tokens follows them.
        var reversed = new NdArray<long>(tokens.Shape, tokens.Data.Reverse().ToArray());
        AssertClose(lm.Forward(Cpu, reversed), lm.Forward(Device, reversed));
    }

    /// <summary>
    /// A keep-all (derivative) plan on the device: every float value it computes (GELU slopes, unfused attention, …) against
    /// the CPU plan's, and each layer input's A factor accumulated on the device (kernel family 1 on device buffers) against
    /// the CPU backend's AccumulateFactor on the CPU plan's value.
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    public void KeepAllValuesAndLayerInputFactorsMatchTheCpu(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var inputs = lm.Inputs(NpyFile.Read(Fixtures.Path(model + ".tokens.npy")));
        var plan = lm.Model.GetPlan(inputs, keepAll: true);
        plan.Run(Cpu, inputs);
        var computed = plan.Values.Where(v => !v.IsConstant && v.Array is NdArray<float>).ToList();
        var expected = computed.ToDictionary(v => v.Name, v => new NdArray<float>(v.Array!.Shape, ((NdArray<float>)v.Array).Data.ToArray()));
        using var device = DevicePlan.Build(plan, Emulator.Value, "ilgpu-cpu");
        device.Run(inputs);
        Assert.Contains(plan.Steps, s => s.Op is GeluWithSlope || s.Op.Node.OpType == "SimplifiedLayerNormalization");
        foreach (var value in computed)
        {
            var actual = device.Download(value.Name);
            float scale = Math.Max(1f, expected[value.Name].Data.Max(Math.Abs)), worst = 0;
            for (int i = 0; i < actual.Data.Length; i++) worst = Math.Max(worst, Math.Abs(expected[value.Name].Data[i] - actual.Data[i]));
            Assert.True(worst <= 1e-4f * scale, $"value '{value.Name}': max|Δ| = {worst:G3} against the CPU plan, allowed {1e-4f * scale:G3}");
        }
        using var host = new CpuBackend(1);
        foreach (var layer in lm.Model.Layers)
            foreach (var application in layer.Applications)
            {
                var x = (NdArray<float>)plan.Get(application.InputValue);
                int rows = (int)(x.Length / layer.In), dim = layer.In + 1;
                var reference = new float[dim * dim];
                host.AccumulateFactor(x.Data, rows, layer.In, appendOne: true, 1f / rows, 0f, reference);
                using var factor = Emulator.Value.Allocate(dim * dim);
                device.AccumulateFactor(application.InputValue, layer.In, appendOne: true, 1f / rows, 0f, factor);
                var actual = new float[dim * dim];
                Emulator.Value.Download(factor, actual);
                float scale = reference.Max(Math.Abs), worst = reference.Zip(actual, (r, a) => Math.Abs(r - a)).Max();
                Assert.True(worst <= 1e-5f * scale, $"layer {layer.Id}: A factor max|Δ| = {worst:G3}, allowed {1e-5f * scale:G3}");
            }
    }

    /// <summary>
    /// The reverse pass on the device (every VJP of the fixtures' derivative plans as device launches: GEMMs, normalization,
    /// softmax, GELU, broadcast sums, Where, data-movement tables, the embedding's scatter): the gradients of the summed
    /// next-token loss for every float initializer against the float64 torch goldens (SPEC §7, relative error ≤ 1e-3 per
    /// tensor, as the CPU path is held to) and against the cpu backend's gradients (1e-4).
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    public void DeviceLossGradientsMatchTorchAndTheCpu(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        var parameters = LayerDiscovery.AllParameters(lm.Model.Graph);
        var grads = Derivatives.LossGradients(lm, Device, tokens, null, parameters);
        DerivativeTests.AssertClose(SafetensorsFile.Read(Fixtures.Path(model + ".grads_all.safetensors")), grads);
        var cpu = Derivatives.LossGradients(lm, Cpu, tokens, null, parameters);
        foreach (var name in parameters)
        {
            double error = DerivativeTests.RelativeError(Array.ConvertAll(cpu[name].Data, v => (double)v), grads[name].Data);
            Assert.True(error <= 1e-4 || cpu[name].Data.All(v => v == 0), $"{name}: relative error {error:G3} against the cpu backend");
        }
    }

    /// <summary>
    /// The tangent pass on the device (every JVP of the fixtures' derivative plans as device launches): J·V of the logits
    /// along the fixtures' directions (every layer weight and bias, the norms' scales, the embeddings) against the float64
    /// torch goldens (relative error ≤ 1e-3, SPEC §7) and the cpu backend (1e-4); a second run with the direction doubled
    /// gives twice the first (the buffers are reused). The directions cover a layer weight, a bias, a norm scale and the (tied) embedding.
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    public void DeviceJvpMatchesTorchAndTheCpu(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        var file = SafetensorsFile.Read(Fixtures.Path(model + ".direction.safetensors"));
        var direction = file.Names.ToDictionary(n => n, file.GetFloat32);
        var jvp = Derivatives.Jvp(lm, Device, tokens, direction);
        var reference = (NdArray<double>)NpyFile.Read(Fixtures.Path(model + ".jvp.npy"));
        Assert.Equal(reference.Shape, jvp.Shape);
        double toGolden = DerivativeTests.RelativeError(reference.Data, jvp.Data);
        Assert.True(toGolden <= 1e-3, $"relative error {toGolden:G3} against the torch golden");
        var cpu = Derivatives.Jvp(lm, Cpu, tokens, direction);
        double toCpu = DerivativeTests.RelativeError(Array.ConvertAll(cpu.Data, v => (double)v), jvp.Data);
        Assert.True(toCpu <= 1e-4, $"relative error {toCpu:G3} against the cpu backend");
        var doubled = direction.ToDictionary(kv => kv.Key, kv => new NdArray<float>(kv.Value.Shape, kv.Value.Data.Select(x => 2 * x).ToArray()));
        var twice = Derivatives.Jvp(lm, Device, tokens, doubled);
        for (int i = 0; i < jvp.Data.Length; i++) Assert.Equal(2 * jvp.Data[i], twice.Data[i], 1e-5f * (1 + Math.Abs(jvp.Data[i])));
    }

    /// <summary>
    /// fit on the device (forward and reverse passes device-resident, the taps downloaded into kernel family 1 on the same
    /// backend): the empirical-Fisher factors against the float64 torch goldens (relative error ≤ 1e-3, as the CPU fit's
    /// test) and against the cpu backend's fit (1e-4).
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny", true, 1)]
    [InlineData("llama_tiny", false, 2)]
    public void DeviceFitMatchesTheTorchGoldensAndTheCpu(string model, bool withTargets, int batchSize)
    {
        using var temp = new TempFolder();
        FitRequest Request(string output) => new()
        {
            ModelPath = Fixtures.Path(model + ".onnx"), TokensPath = Fixtures.Path(model + ".tokens.npy"),
            TargetsPath = withTargets ? Fixtures.Path(model + ".targets.npy") : null, OutPath = temp.File(output),
            Options = new KfacFitOptions { Fisher = FisherType.Empirical }, BatchSize = batchSize,
        };
        var onDevice = new FitService(Device).Run(Request("device.safetensors")).Curvature!;
        var onCpu = new FitService(Cpu).Run(Request("cpu.safetensors")).Curvature!;
        var golden = SafetensorsFile.Read(Fixtures.Path($"{model}.{(withTargets ? "kfac_targets" : "kfac")}.safetensors"));
        var device = SafetensorsFile.Read(temp.File("device.safetensors"));
        var cpu = SafetensorsFile.Read(temp.File("cpu.safetensors"));
        Assert.Equal(golden.Names.Order(StringComparer.Ordinal), device.Names.Order(StringComparer.Ordinal));
        Assert.Equal(onCpu.Positions, onDevice.Positions);
        foreach (var name in golden.Names)
        {
            var actual = device.GetFloat32(name).Data;
            double toGolden = DerivativeTests.RelativeError(Fixtures.Doubles(golden.Tensors[name]), actual);
            double toCpu = DerivativeTests.RelativeError(Array.ConvertAll(cpu.GetFloat32(name).Data, v => (double)v), actual);
            Assert.True(toGolden <= 1e-3, $"{name}: relative error {toGolden:G3} against the torch golden");
            Assert.True(toCpu <= 1e-4, $"{name}: relative error {toCpu:G3} against the cpu fit");
        }
    }

    /// <summary>
    /// score on the device (forward and reverse passes device-resident, one position a pass; the taps come down into the
    /// scorer, the posterior's quadratic forms run on the same backend), on gpt2_tiny's first sequence (the emulator is slow):
    /// K-FAC per token and per sequence (the torch golden curvature, τ = 1) and isotropic per sequence, against the float64
    /// torch goldens (p within 1e-4, epistemic relative error ≤ 1e-3, as the cpu path's tests) and the cpu backend's (1e-4).
    /// </summary>
    [Fact]
    public void DeviceScoresMatchTheGoldensAndTheCpu()
    {
        using var temp = new TempFolder();
        string curvature = temp.File("c.safetensors");
        File.Copy(Fixtures.Path("gpt2_tiny.kfac.safetensors"), curvature);
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var all = (NdArray<long>)NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var tokens = new NdArray<long>([1, all.Shape[1]], all.Data[..all.Shape[1]]);
        using var golden = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("gpt2_tiny.scores.json")));
        foreach (var method in new[] { ScoreMethod.Kfac, ScoreMethod.Isotropic })
        {
            var options = new ScoreOptions
            {
                Method = method, CurvaturePath = method == ScoreMethod.Kfac ? curvature : null, Posterior = new PosteriorOptions { PriorPrecision = 1.0 },
                Level = method == ScoreMethod.Kfac ? ScoreLevel.Both : ScoreLevel.Sequence,
            };
            var device = new ScoreService(lm, Device).Score(tokens, null, options).Sequences[0];
            var cpu = new ScoreService(lm, Cpu).Score(tokens, null, options).Sequences[0];
            var expected = golden.RootElement.GetProperty(method.Name()).GetProperty("sequences")[0];
            var (reference, got, onCpu) = (new List<double> { expected.GetProperty("epistemic").GetDouble() }, new List<float> { (float)device.Epistemic }, new List<double> { cpu.Epistemic });
            if (method == ScoreMethod.Kfac)
            {
                var tokensExpected = expected.GetProperty("tokens").EnumerateArray().ToList();
                Assert.Equal(tokensExpected.Count, device.Tokens.Count);
                for (int t = 0; t < tokensExpected.Count; t++)
                {
                    Assert.Equal(tokensExpected[t].GetProperty("p").GetDouble(), device.Tokens[t].P, 1e-4);
                    reference.Add(tokensExpected[t].GetProperty("epistemic").GetDouble());
                    got.Add((float)device.Tokens[t].Epistemic);
                    onCpu.Add(cpu.Tokens[t].Epistemic);
                }
            }
            double toGolden = DerivativeTests.RelativeError([.. reference], [.. got]), toCpu = DerivativeTests.RelativeError([.. onCpu], [.. got]);
            Assert.True(toGolden <= 1e-3, $"{method.Name()}: epistemic relative error {toGolden:G3} against the torch golden");
            Assert.True(toCpu <= 1e-4, $"{method.Name()}: epistemic relative error {toCpu:G3} against the cpu backend");
        }
    }

    [Fact]
    public void MovementAndElementwiseStepsMatchTheCpuPlan()
    {
        using var temp = new TempFolder();
        string path = temp.File("steps.onnx");
        File.WriteAllBytes(path, StepsModel().ToByteArray());
        var model = OnnxModel.Load(path);
        var random = new Random(5);
        var x = new NdArray<float>(2, 3, 4);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        var ids = new NdArray<long>([2, 3], [0, 9, 4, 7, 7, 2]);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x, ["ids"] = ids };
        var plan = model.GetPlan(inputs);
        plan.Run(Cpu, inputs);
        var expected = (NdArray<float>)plan.Get("y");
        using var device = DevicePlan.Build(plan, Emulator.Value, "ilgpu-cpu");
        device.Run(inputs);
        AssertClose(expected, device.Download("y"));
    }

    [Fact]
    public void AnOperatorWithoutADeviceFormIsOneLineNamingTheNode()
    {
        using var temp = new TempFolder();
        string path = temp.File("cumsum.onnx");
        var graph = new GraphProto
        {
            Name = "cumsum",
            Initializer = { new TensorProto { Name = "axis", DataType = 7, Int64Data = { 1 } } },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(2, 3) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(2, 3) } },
        };
        graph.Node.Add(new NodeProto { Name = "running_total", OpType = "CumSum", Input = { "x", "axis" }, Output = { "y" } });
        File.WriteAllBytes(path, new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph }.ToByteArray());
        var model = OnnxModel.Load(path);
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [2, 3] });
        var error = Assert.Throws<FisherKernelsException>(() => DevicePlan.Build(plan, Emulator.Value, "ilgpu-cpu"));
        Assert.Equal(ErrorKind.Unsupported, error.Kind);
        Assert.Contains("node 'running_total' (CumSum)", error.Message);
        Assert.Contains("ilgpu-cpu", error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }

    /// <summary>
    /// x [2,3,4], ids [2,3] → Transpose, Slice, Concat, Pad (0.5), Gather of a table by ids, Add, ReduceMean, Sub, Softmax,
    /// Greater, Where, Expand, Mul, Tanh → y [2,3,8]: the steps the fixtures' plans leave unfused, each with a different layout.
    /// </summary>
    private static ModelProto StepsModel()
    {
        var random = new Random(11);
        TensorProto Floats(string name, params int[] dims)
        {
            var t = new TensorProto { Name = name, DataType = 1 };
            foreach (var d in dims) t.Dims.Add(d);
            for (int i = 0; i < dims.Aggregate(1, (a, b) => a * b); i++) t.FloatData.Add((float)(random.NextDouble() * 2 - 1));
            return t;
        }
        TensorProto Longs(string name, params long[] values)
        {
            var t = new TensorProto { Name = name, DataType = 7, Dims = { values.Length } };
            t.Int64Data.Add(values);
            return t;
        }
        var scalar = new TensorProto { Name = "threshold", DataType = 1, FloatData = { 0.1f } };
        var graph = new GraphProto
        {
            Name = "steps",
            Initializer =
            {
                Floats("table", 10, 8), Floats("bias", 8), scalar, new TensorProto { Name = "half", DataType = 1, FloatData = { 0.5f } },
                Longs("starts", 1), Longs("ends", 4), Longs("axes", 1), Longs("pads", 0, 0, 1, 0, 0, 1), Longs("shape", 2, 3, 8),
            },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(2, 3, 4) }, new ValueInfoProto { Name = "ids", Type = LongType(2, 3) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(2, 3, 8) } },
        };
        NodeProto Node(string op, string[] inputs, string output, params AttributeProto[] attributes) =>
            new() { Name = op + "_" + output, OpType = op, Input = { inputs }, Output = { output }, Attribute = { attributes } };
        AttributeProto Ints(string name, params long[] values) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Ints, Ints = { values } };
        AttributeProto Int(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };
        graph.Node.Add(Node("Transpose", ["x"], "t", Ints("perm", 0, 2, 1)));                 // [2,4,3]
        graph.Node.Add(Node("Slice", ["t", "starts", "ends", "axes"], "s"));                   // [2,3,3]
        graph.Node.Add(Node("Concat", ["s", "s"], "c", Int("axis", 2)));                        // [2,3,6]
        graph.Node.Add(Node("Pad", ["c", "pads", "half"], "p"));                                // [2,3,8]
        graph.Node.Add(Node("Gather", ["table", "ids"], "g"));                                  // [2,3,8]
        graph.Node.Add(Node("Add", ["p", "g"], "a"));
        graph.Node.Add(Node("ReduceMean", ["a"], "m", Ints("axes", -1), Int("keepdims", 1)));  // [2,3,1]
        graph.Node.Add(Node("Sub", ["a", "m"], "d"));
        graph.Node.Add(Node("Softmax", ["d"], "sm", Int("axis", -1)));
        graph.Node.Add(Node("Greater", ["sm", "threshold"], "cond"));
        graph.Node.Add(Node("Where", ["cond", "sm", "d"], "w"));
        graph.Node.Add(Node("Expand", ["bias", "shape"], "e"));
        graph.Node.Add(Node("Mul", ["w", "e"], "v"));
        graph.Node.Add(Node("Tanh", ["v"], "y"));
        return new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
    }

    private static TypeProto FloatType(params long[] dims) => TensorType(1, dims);

    private static TypeProto LongType(params long[] dims) => TensorType(7, dims);

    private static TypeProto TensorType(int elementType, long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elementType, Shape = shape } };
    }

    /// <summary>The device against the CPU path: within 1e-5 of the largest magnitude (float32 sums in another order).</summary>
    private static void AssertClose(NdArray<float> expected, NdArray<float> actual)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        float scale = expected.Data.Max(Math.Abs), worst = 0;
        for (int i = 0; i < expected.Data.Length; i++) worst = Math.Max(worst, Math.Abs(expected.Data[i] - actual.Data[i]));
        Assert.True(scale > 0.05f, $"the expected values are all near zero (largest {scale})");
        Assert.True(worst <= 1e-5f * scale, $"max|Δ| = {worst:G3} against the CPU path, allowed {1e-5f * scale:G3}");
    }
}

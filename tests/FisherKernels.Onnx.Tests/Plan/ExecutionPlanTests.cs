using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Plan;

/// <summary>The plan on small hand-built graphs, against ONNX Runtime: folding, buffer reuse, views, errors.</summary>
public class ExecutionPlanTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    /// <summary>x [b, 4] → MatMul W → Add b → Softmax → Reshape(shape from a Constant) → MatMul W2 → Add → Softmax; a chain long enough that buffers are reused.</summary>
    private static ModelProto ChainModel()
    {
        var random = new Random(3);
        TensorProto Floats(string name, params int[] dims)
        {
            var t = new TensorProto { Name = name, DataType = 1 };
            foreach (var d in dims) t.Dims.Add(d);
            int n = dims.Aggregate(1, (a, b) => a * b);
            for (int i = 0; i < n; i++) t.FloatData.Add((float)(random.NextDouble() * 2 - 1));
            return t;
        }
        var graph = new GraphProto
        {
            Name = "chain",
            Initializer = { Floats("w1", 4, 6), Floats("b1", 6), Floats("w2", 3, 5), Floats("b2", 5), Floats("w3", 5, 5) },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(-1, 4) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(-1, 5) }, new ValueInfoProto { Name = "h", Type = FloatType(-1, 6) } },
        };
        graph.Node.Add(new NodeProto { OpType = "Constant", Output = { "shape" }, Attribute = { new AttributeProto { Name = "value_ints", Type = AttributeProto.Types.AttributeType.Ints, Ints = { -1, 3 } } } });
        graph.Node.Add(Node("MatMul", ["x", "w1"], "m1"));
        graph.Node.Add(Node("Add", ["m1", "b1"], "h"));
        graph.Node.Add(Node("Softmax", ["h"], "s1"));
        graph.Node.Add(Node("Reshape", ["s1", "shape"], "r"));
        graph.Node.Add(Node("MatMul", ["r", "w2"], "m2"));
        graph.Node.Add(Node("Add", ["m2", "b2"], "a2"));
        graph.Node.Add(Node("Softmax", ["a2"], "s2"));
        graph.Node.Add(Node("MatMul", ["s2", "w3"], "m3"));
        graph.Node.Add(Node("Add", ["m3", "b2"], "a3"));
        graph.Node.Add(Node("Mul", ["a3", "a3"], "sq"));
        graph.Node.Add(Node("Sub", ["sq", "a3"], "y"));
        return new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
    }

    [Fact]
    public void ChainMatchesOnnxRuntimeAcrossShapesAndRuns()
    {
        using var temp = new TempFolder();
        string path = temp.File("chain.onnx");
        File.WriteAllBytes(path, ChainModel().ToByteArray());
        var model = OnnxModel.Load(path);
        var random = new Random(9);
        foreach (int batch in new[] { 2, 4, 2 })
        {
            var x = new NdArray<float>(batch, 4);
            for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 4 - 2);
            var inputs = new Dictionary<string, NdArray> { ["x"] = x };
            var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = x.Shape });
            plan.Run(Context, inputs);
            OnnxRuntimeReference.AssertPlanMatches(plan, path, inputs, ["y", "h"], 1e-5);
        }
    }

    [Fact]
    public void BuffersAreReusedAndConstantsFolded()
    {
        using var temp = new TempFolder();
        string path = temp.File("chain.onnx");
        File.WriteAllBytes(path, ChainModel().ToByteArray());
        var model = OnnxModel.Load(path);
        var shapes = new Dictionary<string, int[]> { ["x"] = [8, 4] };
        var plan = model.GetPlan(shapes);
        var keepAll = model.GetPlan(shapes, keepAll: true);
        // 11 computed values of 8x6, 16x3, 16x5 floats (and x): without reuse (and fusion) they would need far more.
        long withoutReuse = keepAll.Steps.Sum(s => s.Outputs.Where(o => !s.Op.IsView).Sum(o => o.Length * 4)) + 8 * 4 * 4;
        Assert.True(plan.BufferBytes < withoutReuse, $"{plan.BufferBytes} bytes pooled, {withoutReuse} without reuse");
        Assert.Same(plan, model.GetPlan(shapes));
        Assert.NotSame(plan, keepAll);
        Assert.Equal(withoutReuse, keepAll.BufferBytes);
        // The Reshape (a view) reads the buffer of the Softmax before it.
        var reshape = plan.Steps.Single(s => s.Node.OpType == "Reshape");
        Assert.Same(((NdArray<float>)reshape.Inputs[0]!).Data, ((NdArray<float>)reshape.Outputs[0]).Data);
    }

    [Fact]
    public void UnsupportedOperatorsAreFoundWhenTheModelLoads()
    {
        using var temp = new TempFolder();
        var model = ChainModel();
        model.Graph.Node.Add(new NodeProto { Name = "mystery", OpType = "FrobnicateTensor", Domain = "com.example", Input = { "y" }, Output = { "z" } });
        model.Graph.Node.Add(new NodeProto { Name = "bad_concat", OpType = "Concat", Input = { "y", "y" }, Output = { "c" } });
        model.Graph.Output.Add(new ValueInfoProto { Name = "z" });
        model.Graph.Output.Add(new ValueInfoProto { Name = "c" });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "com.example", Version = 1 });
        File.WriteAllBytes(temp.File("m.onnx"), model.ToByteArray());
        // Before any input is read: the loader refuses the model (a language model's token check never runs).
        foreach (var load in new Action[] { () => OnnxModel.Load(temp.File("m.onnx")), () => Onnx.LanguageModel.Load(temp.File("m.onnx")) })
        {
            var e = Assert.Throws<FisherKernelsException>(load);
            Assert.Equal(ErrorKind.Unsupported, e.Kind);
            Assert.Contains("FrobnicateTensor", e.Message);
            Assert.Contains("com.example", e.Message);
            Assert.Contains("mystery", e.Message);
            Assert.Contains("1 more", e.Message);
        }
        // Opened for inspection, the model lists every node it cannot run.
        var opened = OnnxModel.Open(temp.File("m.onnx"));
        Assert.Equal(["mystery", "bad_concat"], opened.Unsupported.Select(u => u.Node.Name));
        Assert.Contains("'axis'", opened.Unsupported[1].Error.Message);
    }

    [Theory]
    [InlineData("duplicate", "value 'h' written by Mul node 'again' already has a producer")]
    [InlineData("cycle", "cycle")]
    [InlineData("unproduced", "value 'nowhere' read by Add node 'lost' is never produced")]
    public void MalformedGraphsAreRefusedWhenTheModelLoads(string fault, string message)
    {
        using var temp = new TempFolder();
        var model = ChainModel();
        switch (fault)
        {
            case "duplicate": model.Graph.Node.Add(new NodeProto { Name = "again", OpType = "Mul", Input = { "y", "y" }, Output = { "h" } }); break;
            case "cycle":
                model.Graph.Node.Add(new NodeProto { Name = "c1", OpType = "Add", Input = { "y", "c2out" }, Output = { "c1out" } });
                model.Graph.Node.Add(new NodeProto { Name = "c2", OpType = "Neg", Input = { "c1out" }, Output = { "c2out" } });
                break;
            case "unproduced": model.Graph.Node.Add(new NodeProto { Name = "lost", OpType = "Add", Input = { "y", "nowhere" }, Output = { "z" } }); break;
        }
        File.WriteAllBytes(temp.File("m.onnx"), model.ToByteArray());
        var e = Assert.Throws<FisherKernelsException>(() => OnnxModel.Open(temp.File("m.onnx")));
        Assert.Equal(ErrorKind.Format, e.Kind);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void MissingInputIsNamed()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("m.onnx"), ChainModel().ToByteArray());
        var model = OnnxModel.Load(temp.File("m.onnx"));
        var e = Assert.Throws<FisherKernelsException>(() => model.GetPlan(new Dictionary<string, int[]>()));
        Assert.Contains("input 'x'", e.Message);
    }

    [Fact]
    public void BackwardAndTangentAgreeWithFiniteDifferencesAndEachOther()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("m.onnx"), ChainModel().ToByteArray());
        var model = OnnxModel.Load(temp.File("m.onnx"));
        var random = new Random(4);
        var x = new NdArray<float>(2, 4);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        string[] variables = ["w1", "b1", "w2", "b2"];
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [2, 4] }, variables.ToHashSet(), keepAll: true);
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, Context, inputs, variables, "y", random);
    }

    [Fact]
    public void BackwardRunOverwritesEveryGradientWithoutAClear()
    {
        // The chain reuses b2 and reads a3 three times (Mul a3·a3, Sub): fan-out must sum, and a second run
        // over the same seed (no Clear in between) must reproduce the first, not add to it.
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("m.onnx"), ChainModel().ToByteArray());
        var model = OnnxModel.Load(temp.File("m.onnx"));
        var random = new Random(5);
        var x = new NdArray<float>(2, 4);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        string[] variables = ["w1", "b1", "w2", "b2"];
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [2, 4] }, variables.ToHashSet(), keepAll: true);
        var backward = new Backward(plan, ["y"]);
        plan.Run(Context, new Dictionary<string, NdArray> { ["x"] = x });
        var seed = backward.Gradient("y").Data;
        backward.Clear();
        for (int i = 0; i < seed.Length; i++) seed[i] = (float)(random.NextDouble() * 2 - 1);
        var u = (float[])seed.Clone();
        backward.Run(Context);
        string[] names = [.. variables, "h", "r", "s1", "a3"];
        var first = names.ToDictionary(n => n, n => (float[])backward.Gradient(n).Data.Clone());
        Assert.All(first.Values, g => Assert.Contains(g, v => v != 0));

        backward.Run(Context);
        foreach (var n in names) Assert.Equal(first[n], backward.Gradient(n).Data);

        // Another seed in between leaves nothing behind either.
        backward.Clear();
        seed[0] = 1;
        backward.Run(Context);
        backward.Clear();
        u.CopyTo(seed, 0);
        backward.Run(Context);
        foreach (var n in names) Assert.Equal(first[n], backward.Gradient(n).Data);
    }

    [Fact]
    public void ProfilesTimeTheStepsEachWalkRuns()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("m.onnx"), ChainModel().ToByteArray());
        var model = OnnxModel.Load(temp.File("m.onnx"));
        var x = new NdArray<float>(2, 4);
        x.Data.AsSpan().Fill(0.5f);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        string[] variables = ["w1", "b1", "w2", "b2"];
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [2, 4] }, variables.ToHashSet(), keepAll: true);
        var forward = new PlanProfile(plan);
        plan.Run(Context, inputs, forward);
        var forwardRows = forward.ByOperator().ToDictionary(r => r.OpType, r => r.Steps);
        Assert.Equal(3, forwardRows["MatMul"]);
        Assert.False(forwardRows.ContainsKey("Reshape")); // a view costs the forward nothing

        // The reverse walk from a3 (not y): Mul and Sub are off its path, and the Reshape costs nothing (its input's
        // gradient is its output's buffer).
        var backward = new Backward(plan, ["a3"]);
        var reverse = new PlanProfile(plan);
        for (int run = 0; run < 3; run++)
        {
            backward.Clear();
            backward.Gradient("a3").Data.AsSpan().Fill(1f);
            backward.Run(Context, reverse);
        }
        Assert.Equal(3, reverse.Runs);
        var rows = reverse.ByOperator().ToDictionary(r => r.OpType, r => r.Steps);
        Assert.Equal(3, rows["MatMul"]);
        Assert.Equal(2, rows["Softmax"]);
        Assert.Equal(3, rows["Add"]); // the bias gradients
        Assert.False(rows.ContainsKey("Reshape"));
        Assert.False(rows.ContainsKey("Mul"));
        Assert.Contains("MatMul", reverse.Format(), StringComparison.Ordinal);

        var other = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [3, 4] }, variables.ToHashSet(), keepAll: true);
        Assert.Throws<FisherKernelsException>(() => backward.Run(Context, new PlanProfile(other)));
    }

    [Fact]
    public void PassThroughGradientsShareBuffersOnlyWhereExact()
    {
        // m = x·w; r = Reshape(m); r2 = Reshape(r); s = r2 + m (m read twice: its gradient is a sum, not shared);
        // y = s·s − s. r and r2 share s's gradient buffer (views, then Add); every gradient against float64 by hand,
        // on two runs without a Clear, and the taps-only pass (targets m) agrees.
        var w = new TensorProto { Name = "w", DataType = 1, Dims = { 3, 4 } };
        var random = new Random(8);
        for (int i = 0; i < 12; i++) w.FloatData.Add((float)(random.NextDouble() * 2 - 1));
        var graph = new GraphProto
        {
            Name = "alias",
            Initializer = { w },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(2, 3) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(2, 4) } },
        };
        NodeProto Shape(string name, params long[] dims) => new()
        {
            OpType = "Constant", Name = name, Output = { name },
            Attribute = { new AttributeProto { Name = "value_ints", Type = AttributeProto.Types.AttributeType.Ints, Ints = { dims } } },
        };
        graph.Node.Add(Shape("s42", 4, 2));
        graph.Node.Add(Shape("s24", 2, 4));
        graph.Node.Add(Node("MatMul", ["x", "w"], "m"));
        graph.Node.Add(Node("Reshape", ["m", "s42"], "r"));
        graph.Node.Add(Node("Reshape", ["r", "s24"], "r2"));
        graph.Node.Add(Node("Add", ["r2", "m"], "s"));
        graph.Node.Add(Node("Mul", ["s", "s"], "t"));
        graph.Node.Add(Node("Sub", ["t", "s"], "y"));
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.File("m.onnx"), new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph }.ToByteArray());
        var model = OnnxModel.Load(temp.File("m.onnx"));
        var x = new NdArray<float>(2, 3);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)(random.NextDouble() * 2 - 1);
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [2, 3] }, new HashSet<string> { "w" }, keepAll: true);
        plan.Run(Context, new Dictionary<string, NdArray> { ["x"] = x });
        var u = Enumerable.Range(0, 8).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var sValues = ((NdArray<float>)plan.Get("s")).Data;
        var gs = sValues.Select((v, i) => (double)u[i] * 2 * v - u[i]).ToArray();
        var gm = gs.Select(g => 2 * g).ToArray();
        var wData = ((NdArray<float>)model.Graph.Initializers["w"]).Data;
        var gw = new double[12];
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < 3; k++)
                for (int j = 0; j < 4; j++) gw[k * 4 + j] += (double)x.Data[r * 3 + k] * gm[r * 4 + j];

        var backward = new Backward(plan, ["y"]);
        var taps = new Backward(plan, ["y"], targets: ["m"]);
        foreach (var pass in new[] { backward, backward, taps })
        {
            pass.Clear();
            u.CopyTo(pass.Gradient("y").Data, 0);
            pass.Run(Context);
            void Near(double[] expected, string name)
            {
                var actual = pass.Gradient(name).Data;
                for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5 * (1 + Math.Abs(expected[i])), $"{name}[{i}]: {actual[i]} against {expected[i]}");
            }
            Near(gm, "m");
            if (pass == taps) continue;
            Near(gs, "s");
            Near(gs, "r2");
            Near(gs, "r");
            Near(gw, "w");
            Assert.Equal([4, 2], pass.Gradient("r").Shape);
        }
    }

    private static NodeProto Node(string op, string[] inputs, string output) =>
        new() { Name = op + "_" + output, OpType = op, Input = { inputs }, Output = { output } };

    private static TypeProto FloatType(params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d < 0 ? new TensorShapeProto.Types.Dimension { DimParam = "batch" } : new TensorShapeProto.Types.Dimension { DimValue = d });
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = shape } };
    }
}

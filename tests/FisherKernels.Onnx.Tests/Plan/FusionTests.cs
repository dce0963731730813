using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// Plan-time fusions of inference plans: the fused forward against the unfused plan of the same model
/// and against ONNX Runtime (SPEC §7 logits tolerance), which chains fuse, and chains that must not
/// (an intermediate needed elsewhere).
/// </summary>
public class FusionTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));
    private static readonly OpContext TwoThreads = new(new CpuBackend(2));

    public static TheoryData<string, string[]> FixtureFusions() => new()
    {
        // gpt2: 2 LayerNorms per block + final, every Linear with its bias (the MLP's with its tanh GELU), the tied head, causal attention (Where).
        { "gpt2_tiny", ["LayerNormalization", "PackedMatMul+GeluTanh", "PackedMatMul", "FusedAttention"] },
        // llama: RMSNorm (x · 1/√…), the projections without bias, attention after the rotary embedding.
        { "llama_tiny", ["SimplifiedLayerNormalization", "PackedMatMul", "FusedAttention"] },
        // bert: biased projections (the MLP's with its erf GELU, x/√2), attention with an additive mask; its LayerNormalization nodes are already fused in the file.
        { "bert_tiny", ["PackedMatMul+GeluErf", "PackedMatMul", "FusedAttention"] },
        // llama with grouped-query attention: the key/value repeats (Loops over sequences in the file) are unrolled into
        // Split/Expand/Reshape/Concat first, so the same chains fuse; attention reads the repeated keys and values.
        { "llama_gqa_tiny", ["SimplifiedLayerNormalization", "PackedMatMul", "FusedAttention"] },
    };

    [Theory]
    [MemberData(nameof(FixtureFusions))]
    public void FusedFixtureMatchesUnfusedAndOnnxRuntime(string model, string[] fusedTypes)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(ForwardTests.TokensOf(model)));
        var inputs = lm.Inputs(tokens);
        var shapes = inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape);
        var fused = ExecutionPlan.Build(lm.Model, shapes, new HashSet<string>(), keepAll: false);
        var unfused = ExecutionPlan.Build(lm.Model, shapes, new HashSet<string>(), keepAll: false, fuse: false);
        // Packed MatMuls and fused attention need the AVX-512 kernel (PackedGemm.IsSupported); the normalizations fuse anywhere.
        string[] expected = fusedTypes.Where(t => PackedGemm.IsSupported || !(t.StartsWith("PackedMatMul", StringComparison.Ordinal) || t == "FusedAttention")).ToArray();
        foreach (var type in expected) Assert.Contains(fused.Steps, s => Kind(s.Op) == type);
        Assert.DoesNotContain(unfused.Steps, s => s.Op is PackedMatMul);
        if (expected.Length > 0) Assert.True(fused.Steps.Count < unfused.Steps.Count);

        unfused.Run(Context, inputs);
        var reference = (NdArray<float>)unfused.Get(lm.LogitsOutput);
        var ort = OnnxRuntimeReference.Run(Fixtures.Path(model + ".onnx"), inputs)[lm.LogitsOutput];
        foreach (var context in new[] { Context, TwoThreads })
        {
            fused.Run(context, inputs);
            var logits = (NdArray<float>)fused.Get(lm.LogitsOutput);
            ForwardTests.AssertLogits(reference.Shape, Array.ConvertAll(reference.Data, v => (double)v), logits);
            ForwardTests.AssertLogits(ort.Shape, ort.Data, logits);
        }
    }

    /// <summary>
    /// x [2, 5, 8] → MatMul W [8, 12] → Add b → tanh GELU (the GPT-2 export's 8 nodes) → decomposed LayerNorm
    /// (9 nodes) → y. <paramref name="exposed"/> names intermediates that become graph outputs as well.
    /// </summary>
    private static ModelProto LayerModel(params string[] exposed)
    {
        var random = new Random(5);
        var graph = new GraphProto
        {
            Name = "layer",
            Initializer =
            {
                Floats(random, "w", 8, 12), Floats(random, "b", 12), Floats(random, "gamma", 12), Floats(random, "beta", 12),
                Scalar("half", 0.5f), Scalar("three", 3), Scalar("c", 0.044715f), Scalar("k", 0.7978845608f), Scalar("one", 1),
                Scalar("two", 2), Scalar("eps", 1e-5f),
            },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(2, 5, 8) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(2, 5, 12) } },
        };
        foreach (var name in exposed) graph.Output.Add(new ValueInfoProto { Name = name });
        graph.Node.Add(Node("MatMul", ["x", "w"], "xw"));
        graph.Node.Add(Node("Add", ["b", "xw"], "h"));
        AddTanhGelu(graph);
        var mean = Node("ReduceMean", ["g"], "mean");
        mean.Attribute.Add(new AttributeProto { Name = "axes", Type = AttributeProto.Types.AttributeType.Ints, Ints = { -1 } });
        graph.Node.Add(mean);
        graph.Node.Add(Node("Sub", ["g", "mean"], "d"));
        graph.Node.Add(Node("Pow", ["d", "two"], "d2"));
        var variance = Node("ReduceMean", ["d2"], "var");
        variance.Attribute.Add(new AttributeProto { Name = "axes", Type = AttributeProto.Types.AttributeType.Ints, Ints = { -1 } });
        graph.Node.Add(variance);
        graph.Node.Add(Node("Add", ["var", "eps"], "varEps"));
        graph.Node.Add(Node("Sqrt", ["varEps"], "std"));
        graph.Node.Add(Node("Div", ["d", "std"], "normalized"));
        graph.Node.Add(Node("Mul", ["normalized", "gamma"], "scaled"));
        graph.Node.Add(Node("Add", ["scaled", "beta"], "y"));
        return new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
    }

    [Theory]
    [InlineData(new string[0], new[] { "PackedMatMul+GeluTanh", "LayerNormalization" }, new[] { "Gelu", "Add", "Tanh" })]
    // d is read by the LayerNorm chain and is an output: the LayerNorm stays decomposed, the rest fuses.
    [InlineData(new[] { "d" }, new[] { "PackedMatMul+GeluTanh", "ReduceMean" }, new[] { "LayerNormalization" })]
    // tanh's output is needed: no GELU; the MatMul keeps its bias Add, LayerNorm still fuses.
    [InlineData(new[] { "t" }, new[] { "PackedMatMul", "Tanh", "LayerNormalization" }, new[] { "Gelu", "PackedMatMul+GeluTanh" })]
    // The MatMul's own output is needed: it fuses without the bias, the Add and the GELU stay apart.
    [InlineData(new[] { "xw" }, new[] { "PackedMatMul", "Add", "Gelu", "LayerNormalization" }, new[] { "PackedMatMul+GeluTanh" })]
    public void ChainsFuseOnlyWhenTheirIntermediatesStayInside(string[] exposed, string[] present, string[] absent)
    {
        using var temp = new TempFolder();
        string path = temp.File("layer.onnx");
        File.WriteAllBytes(path, LayerModel(exposed).ToByteArray());
        var model = OnnxModel.Load(path);
        var x = OpRandom(new Random(11), 2, 5, 8);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = x.Shape });
        foreach (var type in present) Assert.Contains(plan.Steps, s => Kind(s.Op) == type);
        foreach (var type in absent) Assert.DoesNotContain(plan.Steps, s => Kind(s.Op) == type);
        plan.Run(Context, inputs);
        OnnxRuntimeReference.AssertPlanMatches(plan, path, inputs, exposed.Append("y"), 1e-4);
    }

    /// <summary>
    /// Attention over q, k, v [1, 5, 2, 4] (batch, seq, heads, depth) as exports write it: Transposes to heads first
    /// (Kᵀ directly), MatMul, Div by √depth, a mask (Where with a bool input, or Add of a float input), Softmax,
    /// MatMul by V, Transpose back.
    /// </summary>
    private static ModelProto AttentionModel(bool additiveMask, params string[] exposed) => AttentionModel(additiveMask, 1, 5, 2, 4, exposed);

    private static ModelProto AttentionModel(bool additiveMask, int batch, int seq, int heads, int depth, params string[] exposed)
    {
        var graph = new GraphProto
        {
            Name = "attention",
            Initializer = { Scalar("root", 2), Scalar("fill", -1e9f) },
            Input =
            {
                new ValueInfoProto { Name = "q", Type = FloatType(batch, seq, heads, depth) }, new ValueInfoProto { Name = "k", Type = FloatType(batch, seq, heads, depth) },
                new ValueInfoProto { Name = "v", Type = FloatType(batch, seq, heads, depth) },
                new ValueInfoProto { Name = "mask", Type = additiveMask ? FloatType(batch, 1, 1, seq) : BoolType(1, 1, seq, seq) },
            },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(batch, seq, heads, depth) } },
        };
        foreach (var name in exposed) graph.Output.Add(new ValueInfoProto { Name = name });
        graph.Node.Add(Transpose("q", "qh", 0, 2, 1, 3));
        graph.Node.Add(Transpose("k", "kt", 0, 2, 3, 1));
        graph.Node.Add(Transpose("v", "vh", 0, 2, 1, 3));
        graph.Node.Add(Node("MatMul", ["qh", "kt"], "scores"));
        graph.Node.Add(Node("Div", ["scores", "root"], "scaled"));
        graph.Node.Add(additiveMask ? Node("Add", ["scaled", "mask"], "masked") : Node("Where", ["mask", "scaled", "fill"], "masked"));
        var softmax = Node("Softmax", ["masked"], "p");
        softmax.Attribute.Add(new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = -1 });
        graph.Node.Add(softmax);
        graph.Node.Add(Node("MatMul", ["p", "vh"], "o"));
        graph.Node.Add(Transpose("o", "y", 0, 2, 1, 3));
        return new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
    }

    [Theory]
    [InlineData(false, new string[0], true)]
    [InlineData(true, new string[0], true)]
    // The scores or the probabilities are needed elsewhere: no fusion (they would never be computed).
    [InlineData(false, new[] { "scores" }, false)]
    [InlineData(true, new[] { "p" }, false)]
    // Only the Transpose of K is needed elsewhere: attention still fuses, reading that Transpose's output.
    [InlineData(false, new[] { "kt" }, true)]
    public void AttentionFusesOnlyWhenItsIntermediatesStayInside(bool additiveMask, string[] exposed, bool fuses)
    {
        using var temp = new TempFolder();
        string path = temp.File("attention.onnx");
        File.WriteAllBytes(path, AttentionModel(additiveMask, exposed).ToByteArray());
        var model = OnnxModel.Load(path);
        var random = new Random(2);
        var inputs = new Dictionary<string, NdArray> { ["q"] = OpRandom(random, 1, 5, 2, 4), ["k"] = OpRandom(random, 1, 5, 2, 4), ["v"] = OpRandom(random, 1, 5, 2, 4) };
        if (additiveMask) inputs["mask"] = new NdArray<float>([1, 1, 1, 5], [0, 0, -1e4f, 0, -1e4f]);
        else inputs["mask"] = new NdArray<bool>([1, 1, 5, 5], Enumerable.Range(0, 25).Select(i => i % 5 <= i / 5).ToArray()); // causal
        var plan = model.GetPlan(inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape));
        Assert.Equal(fuses && PackedGemm.IsSupported, plan.Steps.Any(s => s.Op is FusedAttention)); // fused attention needs the AVX-512 kernel
        plan.Run(TwoThreads, inputs);
        OnnxRuntimeReference.AssertPlanMatches(plan, path, inputs, exposed.Append("y"), 1e-5);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LargerAttentionRunsHeadsInParallel(bool additiveMask)
    {
        const int batch = 2, seq = 70, heads = 3, depth = 40; // 70 keys: two full panels and an edge one
        using var temp = new TempFolder();
        string path = temp.File("attention.onnx");
        File.WriteAllBytes(path, AttentionModel(additiveMask, batch, seq, heads, depth).ToByteArray());
        var model = OnnxModel.Load(path);
        var random = new Random(4);
        var inputs = new Dictionary<string, NdArray>
        {
            ["q"] = OpRandom(random, batch, seq, heads, depth), ["k"] = OpRandom(random, batch, seq, heads, depth), ["v"] = OpRandom(random, batch, seq, heads, depth),
            ["mask"] = additiveMask
                ? new NdArray<float>([batch, 1, 1, seq], Enumerable.Range(0, batch * seq).Select(i => i % seq >= seq - 3 * (i / seq + 1) ? -1e4f : 0f).ToArray())
                : new NdArray<bool>([1, 1, seq, seq], Enumerable.Range(0, seq * seq).Select(i => i % seq <= i / seq).ToArray()),
        };
        var plan = model.GetPlan(inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape));
        Assert.Equal(PackedGemm.IsSupported, plan.Steps.Any(s => s.Op is FusedAttention)); // fused attention needs the AVX-512 kernel
        var reference = OnnxRuntimeReference.Run(path, inputs)["y"];
        foreach (var context in new[] { Context, TwoThreads })
        {
            plan.Run(context, inputs);
            var ours = (NdArray<float>)plan.Get("y");
            for (int i = 0; i < ours.Data.Length; i++) Assert.Equal(reference.Data[i], ours.Data[i], 1e-5);
        }
    }

    private static NodeProto Transpose(string input, string output, params long[] perm)
    {
        var node = Node("Transpose", [input], output);
        node.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { perm } });
        return node;
    }

    private static TypeProto BoolType(params long[] dims)
    {
        var type = FloatType(dims);
        type.TensorType.ElemType = 9;
        return type;
    }

    [Theory]
    [InlineData(8, 32, 16, true, 1)]
    [InlineData(13, 37, 70, true, 2)]   // edge rows (13 = 8 + 5) and an edge panel (70 = 2·32 + 6)
    [InlineData(3, 1, 5, false, 2)]
    [InlineData(130, 64, 100, true, 2)] // enough work for the second thread
    public void PackedMatMulMatchesFloat64(int m, int k, int n, bool withBias, int threads)
    {
        var random = new Random(m * 1000 + n);
        var a = OpRandom(random, 1, m, k);
        var w = OpRandom(random, k, n);
        var bias = withBias ? OpRandom(random, n) : null;
        var op = new PackedMatMul(new OperatorNode("linear", "PackedMatMul", "fisherkernels", 1, OperatorAttributes.Empty, withBias ? 3 : 2, 1), w, bias);
        var y = new NdArray<float>(op.InferShapes([new TensorInfo(ElementType.Float32, a.Shape)])[0].Shape);
        Assert.Equal(new[] { 1, m, n }, y.Shape);
        op.Forward(new OpContext(new CpuBackend(threads)), [a, w, bias], [y]);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double expected = bias is null ? 0 : bias.Data[j];
                for (int p = 0; p < k; p++) expected += (double)a.Data[i * k + p] * w.Data[p * n + j];
                Assert.Equal(expected, y.Data[i * n + j], 1e-5 * Math.Sqrt(k));
            }
    }

    /// <summary>The step's operator type, with the activation a <see cref="PackedMatMul"/> applies ("PackedMatMul+GeluTanh").</summary>
    internal static string Kind(Operator op) =>
        op is PackedMatMul { Activation: not Activation.None } p ? $"PackedMatMul+{p.Activation}" : op.Node.OpType;

    internal static NdArray<float> OpRandom(Random random, params int[] shape)
    {
        var array = new NdArray<float>(shape);
        for (int i = 0; i < array.Data.Length; i++) array.Data[i] = (float)(random.NextDouble() * 2 - 1);
        return array;
    }

    internal static TensorProto Floats(Random random, string name, params int[] dims)
    {
        var t = new TensorProto { Name = name, DataType = 1 };
        foreach (var d in dims) t.Dims.Add(d);
        int count = dims.Aggregate(1, (a, b) => a * b);
        for (int i = 0; i < count; i++) t.FloatData.Add((float)(random.NextDouble() * 2 - 1));
        return t;
    }

    /// <summary>GPT-2's tanh GELU as exporters decompose it, from value "h" to "g" (initializers half, three, c, k, one).</summary>
    internal static void AddTanhGelu(GraphProto graph)
    {
        graph.Node.Add(Node("Mul", ["h", "half"], "halfH"));
        graph.Node.Add(Node("Pow", ["h", "three"], "cube"));
        graph.Node.Add(Node("Mul", ["cube", "c"], "cubic"));
        graph.Node.Add(Node("Add", ["h", "cubic"], "inner"));
        graph.Node.Add(Node("Mul", ["inner", "k"], "u"));
        graph.Node.Add(Node("Tanh", ["u"], "t"));
        graph.Node.Add(Node("Add", ["t", "one"], "onePlusT"));
        graph.Node.Add(Node("Mul", ["halfH", "onePlusT"], "g"));
    }

    internal static TensorProto Scalar(string name, float value) => new() { Name = name, DataType = 1, FloatData = { value } };

    internal static NodeProto Node(string op, string[] inputs, string output) =>
        new() { Name = op + "_" + output, OpType = op, Input = { inputs }, Output = { output } };

    internal static TypeProto FloatType(params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = shape } };
    }
}

using System.Text.Json;
using FisherKernels.IO;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Commands;

/// <summary>inspect / forward / run / jvp / score as a user runs them: outputs, one-line errors, nothing left behind.</summary>
public class ModelCommandTests
{
    [Fact]
    public void InspectJsonListsTheLayers()
    {
        var (code, stdout, stderr) = CliRunner.Run("inspect", "--model", Fixtures.Path("bert_tiny.onnx"), "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var layers = json.RootElement.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(14, layers.Count);
        var gemm = Assert.Single(layers, l => l.GetProperty("op").GetString() == "Gemm");
        Assert.Equal("mlm_decoder.weight", gemm.GetProperty("id").GetString());
        Assert.Equal(32, gemm.GetProperty("in").GetInt32());
        Assert.Equal(64, gemm.GetProperty("out").GetInt32());
        Assert.Equal(32 * 64 + 64, gemm.GetProperty("parameters").GetInt64());
        Assert.Equal(layers.Sum(l => l.GetProperty("parameters").GetInt64()), json.RootElement.GetProperty("layer_parameters").GetInt64());
    }

    /// <summary>
    /// SPEC §3's memory plan in inspect --json: under a budget the 64-entry vocabulary side misses, the head's G is low rank
    /// and its bytes are the sketch's; activations are twice the keep-all derivative plan's buffers, measured here by
    /// building that plan for real; the total adds up; a bad --layers pattern is one line.
    /// </summary>
    [Fact]
    public void InspectJsonStatesTheMemoryPlan()
    {
        string model = Fixtures.Path("gpt2_tiny.onnx");
        var (code, stdout, stderr) = CliRunner.Run("inspect", "--model", model, "--json", "--memory-budget", "40000", "--rank", "4", "--batch-size", "2", "--seq", "12");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var plan = json.RootElement.GetProperty("memory_plan");
        var layers = plan.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(9, layers.Count);
        var head = Assert.Single(layers, l => l.GetProperty("id").GetString() == "transformer.wte.weight");
        Assert.Equal("dense", head.GetProperty("a_form").GetString());
        Assert.Equal("lowrank", head.GetProperty("g_form").GetString());
        Assert.Equal(4L * 32 * 32 + 4L * 64 * (12 + 1) + 4L * 64 * 12, head.GetProperty("factor_bytes").GetInt64()); // A dense, G's Y and diag, Ω
        var lm = Onnx.LanguageModel.Load(model);
        // The plan a fit of 2 × 12 tokens builds (its inputs' values as the fit gives them), built for real.
        var inputs = lm.Inputs(new NdArray<long>([2, 12]));
        long buffers = lm.Model.GetPlan(inputs, Onnx.Graph.LayerDiscovery.DefaultParameters(lm.Model.Layers).ToHashSet(), keepAll: true).BufferBytes;
        Assert.Equal(2 * buffers, plan.GetProperty("activation_bytes").GetInt64());
        Assert.Equal(plan.GetProperty("factor_bytes").GetInt64() + plan.GetProperty("eigenbasis_bytes").GetInt64() + plan.GetProperty("activation_bytes").GetInt64()
                     + plan.GetProperty("model_bytes").GetInt64(), plan.GetProperty("total_bytes").GetInt64());
        Assert.Equal(layers.Sum(l => l.GetProperty("factor_bytes").GetInt64()), plan.GetProperty("factor_bytes").GetInt64());

        var (badCode, _, badErr) = CliRunner.Run("inspect", "--model", model, "--json", "--layers", "(");
        Assert.NotEqual(0, badCode);
        Assert.StartsWith("fisherkernels: --layers '(' is not a valid .NET regular expression", badErr.Trim());
        var (smallCode, _, smallErr) = CliRunner.Run("inspect", "--model", model, "--json", "--memory-budget", "100");
        Assert.NotEqual(0, smallCode);
        Assert.Contains("over --memory-budget 100 B: raise --memory-budget, lower --rank, or leave the layer out with --exclude-layers", smallErr);
    }

    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("gpt2_tiny_opset11")]
    [InlineData("gpt2_tiny_merged")] // the layers inside the else-branch of its If (SPEC §1: use_cache_branch = false)
    public void InspectTable(string model)
    {
        var (code, stdout, _) = CliRunner.Run("inspect", "--model", Fixtures.Path(model + ".onnx"));
        Assert.Equal(0, code);
        Assert.Contains("transformer.h.0.attn.c_attn.weight", stdout);
        Assert.Contains("9 layers", stdout);
    }

    /// <summary>gpt2_tiny with one more output made by an operator outside the set.</summary>
    private static string WithUnsupportedNode(TempFolder temp)
    {
        var proto = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Fixtures.Path("gpt2_tiny.onnx")));
        proto.Graph.Node.Add(new NodeProto { Name = "top", OpType = "TopK", Input = { "logits", "k" }, Output = { "values", "indices" } });
        proto.Graph.Initializer.Add(new TensorProto { Name = "k", DataType = 7, Dims = { 1 }, Int64Data = { 2 } });
        proto.Graph.Output.Add(new ValueInfoProto { Name = "values" });
        string path = temp.File("topk.onnx");
        File.WriteAllBytes(path, proto.ToByteArray());
        return path;
    }

    [Fact]
    public void InspectListsUnsupportedNodesAndTheOtherVerbsRefuseThemBeforeReadingTokens()
    {
        using var temp = new TempFolder();
        string model = WithUnsupportedNode(temp);
        var (code, stdout, stderr) = CliRunner.Run("inspect", "--model", model);
        Assert.True(code == 0, stderr);
        Assert.Contains("unsupported  operator 'TopK' (domain 'ai.onnx') at node 'top' is not supported", stdout);
        Assert.Contains("9 layers", stdout);
        (code, stdout, stderr) = CliRunner.Run("inspect", "--model", model, "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal("top", Assert.Single(json.RootElement.GetProperty("unsupported").EnumerateArray()).GetProperty("node").GetString());

        // Tokens outside the vocabulary (64 rows): the operator is the error, found first.
        string tokens = temp.File("oov.npy");
        NpyFile.Write(tokens, new NdArray<long>([1, 3], [1, 500, 2]));
        string output = temp.File("logits.npy");
        (code, _, stderr) = CliRunner.Run("forward", "--model", model, "--tokens", tokens, "--out", output);
        Assert.NotEqual(0, code);
        Assert.Contains("'TopK'", stderr);
        Assert.DoesNotContain("vocabulary", stderr);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void RunTakesShapesAsInputs()
    {
        // y = Reshape(x, shape): the shape arrives as a graph input, as in ONNX's node tests.
        var graph = new GraphProto
        {
            Name = "reshape",
            Input = { Input("x", 1, 2), Input("shape", 7, 1) },
            Output = { new ValueInfoProto { Name = "y" } },
            Node = { new NodeProto { Name = "r", OpType = "Reshape", Input = { "x", "shape" }, Output = { "y" } } },
        };
        using var temp = new TempFolder();
        string model = temp.File("reshape.onnx");
        File.WriteAllBytes(model, new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 14 } }, Graph = graph }.ToByteArray());
        var x = new NdArray<float>([2, 6], Enumerable.Range(0, 12).Select(i => (float)i).ToArray());
        NpyFile.Write(temp.File("x.npy"), x);
        foreach (long[] shape in new[] { new long[] { 3, 4 }, [4, -1, 1] })
        {
            NpyFile.Write(temp.File("shape.npy"), new NdArray<long>([shape.Length], shape));
            string dir = temp.File($"out{shape.Length}");
            var (code, _, stderr) = CliRunner.Run("run", "--model", model, "--input", "x=" + temp.File("x.npy"), "--input", "shape=" + temp.File("shape.npy"), "--out-dir", dir);
            Assert.True(code == 0, stderr);
            var y = (NdArray<float>)NpyFile.Read(Path.Combine(dir, "y.npy"));
            Assert.Equal(shape.Length == 2 ? [3, 4] : new[] { 4, 3, 1 }, y.Shape);
            Assert.Equal(x.Data, y.Data);
        }
    }

    [Fact]
    public void RunTakesAndWritesSequencesAsTheirElements()
    {
        // grown = SequenceInsert(seq, extra), cat = ConcatFromSequence(seq, axis 0).
        var element = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1 } };
        var graph = new GraphProto
        {
            Name = "sequences",
            Input = { new ValueInfoProto { Name = "seq", Type = new TypeProto { SequenceType = new TypeProto.Types.Sequence { ElemType = element } } }, Input("extra", 1, 1) },
            Output = { new ValueInfoProto { Name = "cat" }, new ValueInfoProto { Name = "grown" } },
            Node =
            {
                new NodeProto { Name = "c", OpType = "ConcatFromSequence", Input = { "seq" }, Output = { "cat" },
                                Attribute = { new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = 0 } } },
                new NodeProto { Name = "i", OpType = "SequenceInsert", Input = { "seq", "extra" }, Output = { "grown" } },
            },
        };
        using var temp = new TempFolder();
        string model = temp.File("sequences.onnx");
        File.WriteAllBytes(model, new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph }.ToByteArray());
        NpyFile.Write(temp.File("a.npy"), new NdArray<float>([2], [1, 2]));
        NpyFile.Write(temp.File("b.npy"), new NdArray<float>([1], [3]));
        NpyFile.Write(temp.File("e.npy"), new NdArray<float>([1], [9]));
        string dir = temp.File("out");
        var (code, _, stderr) = CliRunner.Run("run", "--model", model, "--input", "seq[0]=" + temp.File("a.npy"), "--input", "seq[1]=" + temp.File("b.npy"),
                                              "--input", "extra=" + temp.File("e.npy"), "--out-dir", dir);
        Assert.True(code == 0, stderr);
        Assert.Equal([1f, 2, 3], ((NdArray<float>)NpyFile.Read(Path.Combine(dir, "cat.npy"))).Data);
        Assert.Equal([1f, 2], ((NdArray<float>)NpyFile.Read(Path.Combine(dir, "grown[0].npy"))).Data);
        Assert.Equal([3f], ((NdArray<float>)NpyFile.Read(Path.Combine(dir, "grown[1].npy"))).Data);
        Assert.Equal([9f], ((NdArray<float>)NpyFile.Read(Path.Combine(dir, "grown[2].npy"))).Data);
        Assert.Equal(4, Directory.GetFiles(dir).Length);

        // An element after a gap: one line naming it, nothing written.
        (code, _, stderr) = CliRunner.Run("run", "--model", model, "--input", "seq[1]=" + temp.File("b.npy"), "--input", "extra=" + temp.File("e.npy"), "--out-dir", temp.File("gap"));
        Assert.NotEqual(0, code);
        Assert.Contains("'seq[1]'", stderr);
        Assert.False(Directory.Exists(temp.File("gap")));
    }

    private static ValueInfoProto Input(string name, int type, int rank)
    {
        var shape = new TensorShapeProto();
        for (int d = 0; d < rank; d++) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = $"{name}_{d}" });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = type, Shape = shape } } };
    }

    [Fact]
    public void ForwardWritesTheLogits()
    {
        using var temp = new TempFolder();
        string output = temp.File("logits.npy");
        var (code, _, stderr) = CliRunner.Run("forward", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--out", output);
        Assert.True(code == 0, stderr);
        AssertGpt2Logits(output);
    }

    /// <summary>The npy file holds gpt2_tiny's logits of its fixture tokens, within 1e-4 of the largest of the float64 golden.</summary>
    private static void AssertGpt2Logits(string output)
    {
        var logits = (NdArray<float>)NpyFile.Read(output);
        var golden = (NdArray<double>)NpyFile.Read(Fixtures.Path("gpt2_tiny.logits.npy"));
        Assert.Equal(golden.Shape, logits.Shape);
        double max = golden.Data.Max(Math.Abs);
        for (int i = 0; i < golden.Data.Length; i++) Assert.True(Math.Abs(golden.Data[i] - logits.Data[i]) <= 1e-4 * max);
    }

    /// <summary>
    /// forward, fit and jvp --backend ilgpu-cpu run device-resident (on the emulator): the golden's logits, the empirical-Fisher
    /// factors of gpt2_tiny and its J·V against the torch goldens (1e-3); a verb without a device form refuses in one line
    /// naming itself, and writes nothing.
    /// </summary>
    [Fact]
    public void ForwardFitAndJvpRunOnTheDeviceBackend()
    {
        using var temp = new TempFolder();
        string output = temp.File("logits.npy");
        var (code, _, stderr) = CliRunner.Run("forward", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--out", output, "--backend", "ilgpu-cpu");
        Assert.True(code == 0, stderr);
        AssertGpt2Logits(output);

        string curvature = temp.File("c.safetensors");
        (code, _, stderr) = CliRunner.Run("fit", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
            "--targets", Fixtures.Path("gpt2_tiny.targets.npy"), "--fisher", "empirical", "--batch-size", "2", "--out", curvature, "--backend", "ilgpu-cpu");
        Assert.True(code == 0, stderr);
        KfacCommandTests.AssertFactorsMatch(Fixtures.Path("gpt2_tiny.kfac_targets.safetensors"), curvature, 1e-3);

        string jvp = temp.File("jvp.npy");
        (code, _, stderr) = CliRunner.Run("jvp", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
            "--direction", Fixtures.Path("gpt2_tiny.direction.safetensors"), "--out", jvp, "--backend", "ilgpu-cpu");
        Assert.True(code == 0, stderr);
        var reference = (NdArray<double>)NpyFile.Read(Fixtures.Path("gpt2_tiny.jvp.npy"));
        var values = (NdArray<float>)NpyFile.Read(jvp);
        Assert.Equal(reference.Shape, values.Shape);
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Data.Length; i++) (diff, norm) = (diff + Math.Pow(reference.Data[i] - values.Data[i], 2), norm + reference.Data[i] * reference.Data[i]);
        Assert.True(Math.Sqrt(diff / norm) <= 1e-3, $"jvp relative error {Math.Sqrt(diff / norm):G3} against the torch golden");

        string direction = temp.File("natgrad.safetensors");
        (code, _, stderr) = CliRunner.Run("natgrad", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
            "--curvature", Fixtures.Path("gpt2_tiny.kfac.safetensors"), "--out", direction, "--backend", "ilgpu-cpu");
        Assert.NotEqual(0, code);
        Assert.Equal("fisherkernels: --backend ilgpu-cpu: natgrad runs on the cpu backend only (its plans have no device form yet; forward, fit, score and jvp also run on cuda, opencl and ilgpu-cpu)", stderr.Trim());
        Assert.False(File.Exists(direction));
    }

    [Fact]
    public void RunWritesEveryOutputInItsType()
    {
        using var temp = new TempFolder();
        string dir = temp.File("out");
        var (code, _, stderr) = CliRunner.Run("run", "--model", Fixtures.Path("bert_tiny.onnx"),
            "--input", "input_ids=" + Fixtures.Path("bert_tiny.tokens.npy"),
            "--input", "attention_mask=" + Fixtures.Path("bert_tiny.attention_mask.npy"),
            "--input", "token_type_ids=" + Fixtures.Path("bert_tiny.token_type_ids.npy"),
            "--out-dir", dir);
        Assert.True(code == 0, stderr);
        var logits = (NdArray<float>)NpyFile.Read(Path.Combine(dir, "logits.npy"));
        var golden = (NdArray<double>)NpyFile.Read(Fixtures.Path("bert_tiny.masked_logits.npy"));
        double max = golden.Data.Max(Math.Abs);
        for (int i = 0; i < golden.Data.Length; i++) Assert.True(Math.Abs(golden.Data[i] - logits.Data[i]) <= 1e-4 * max);
        Assert.Equal(new[] { 2, 12, 32 }, NpyFile.Read(Path.Combine(dir, "last_hidden_state.npy")).Shape);
    }

    [Fact]
    public void RunNamesAMissingInput()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run("run", "--model", Fixtures.Path("bert_tiny.onnx"),
            "--input", "input_ids=" + Fixtures.Path("bert_tiny.tokens.npy"), "--out-dir", temp.File("out"));
        Assert.NotEqual(0, code);
        Assert.Contains("attention_mask", stderr);
        Assert.False(Directory.Exists(temp.File("out")));
    }

    [Fact]
    public void JvpAndScoreWriteTheirFiles()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run("jvp", "--model", Fixtures.Path("llama_tiny.onnx"), "--tokens", Fixtures.Path("llama_tiny.tokens.npy"),
            "--direction", Fixtures.Path("llama_tiny.direction.safetensors"), "--out", temp.File("j.npy"));
        Assert.True(code == 0, stderr);
        var jvp = (NdArray<float>)NpyFile.Read(temp.File("j.npy"));
        var golden = (NdArray<double>)NpyFile.Read(Fixtures.Path("llama_tiny.jvp.npy"));
        double diff = 0, norm = 0;
        for (int i = 0; i < golden.Data.Length; i++) { diff += Math.Pow(golden.Data[i] - jvp.Data[i], 2); norm += golden.Data[i] * golden.Data[i]; }
        Assert.True(Math.Sqrt(diff / norm) <= 1e-3);

        (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
            "--method", "isotropic", "--out", temp.File("s.csv"));
        Assert.True(code == 0, stderr);
        var lines = File.ReadAllLines(temp.File("s.csv"));
        Assert.Equal("sequence,position,target,p,epistemic,aleatoric", lines[0]);
        Assert.Equal(1 + 2 * 11, lines.Length);
    }

    public static TheoryData<string[], string> BadInvocations()
    {
        string model = Fixtures.Path("gpt2_tiny.onnx"), tokens = Fixtures.Path("gpt2_tiny.tokens.npy");
        return new()
        {
            { ["forward", "--model", "/no/such/model.onnx", "--tokens", tokens], "/no/such/model.onnx" },
            { ["forward", "--model", model, "--tokens", "/no/such/tokens.npy"], "/no/such/tokens.npy" },
            { ["forward", "--model", Fixtures.Path("gpt2_tiny.targets.npy"), "--tokens", tokens], "gpt2_tiny.targets.npy" },
            { ["forward", "--model", model, "--tokens", Fixtures.Path("gpt2_tiny.logits.npy")], "int32 or int64" },
            { ["forward", "--model", model, "--tokens", tokens, "--bogus", "1"], "--bogus" },
            { ["jvp", "--model", model, "--tokens", tokens, "--direction", Fixtures.Path("llama_tiny.direction.safetensors")], "model.embed_tokens.weight" },
            { ["score", "--model", model, "--tokens", tokens, "--targets", Fixtures.Path("llama_tiny.logits.npy")], "targets" },
            { ["score", "--model", model, "--tokens", tokens, "--params", Fixtures.Path("gpt2_tiny.layers.json")], "gpt2_tiny.layers.json" },
        };
    }

    [Theory]
    [MemberData(nameof(BadInvocations))]
    public void BadInputIsOneLineNamingTheCulpritAndLeavesNoOutput(string[] args, string named)
    {
        using var temp = new TempFolder();
        string output = temp.File(args[0] == "score" ? "s.json" : "o.npy");
        var (code, stdout, stderr) = CliRunner.Run([.. args, "--out", output]);
        Assert.NotEqual(0, code);
        Assert.Contains(named, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", stderr);
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path));
        Assert.Empty(stdout);
    }

    [Fact]
    public void UnwritableOutputLeavesNothing()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run("forward", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--out", temp.File("missing/dir/logits.npy"));
        Assert.NotEqual(0, code);
        Assert.Contains("missing/dir", stderr);
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path));
    }
}

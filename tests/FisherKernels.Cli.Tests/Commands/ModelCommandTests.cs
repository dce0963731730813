using System.Text.Json;
using FisherKernels.IO;

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

    [Fact]
    public void InspectTable()
    {
        var (code, stdout, _) = CliRunner.Run("inspect", "--model", Fixtures.Path("gpt2_tiny.onnx"));
        Assert.Equal(0, code);
        Assert.Contains("transformer.h.0.attn.c_attn.weight", stdout);
        Assert.Contains("9 layers", stdout);
    }

    [Fact]
    public void ForwardWritesTheLogits()
    {
        using var temp = new TempFolder();
        string output = temp.File("logits.npy");
        var (code, _, stderr) = CliRunner.Run("forward", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--out", output);
        Assert.True(code == 0, stderr);
        var logits = (NdArray<float>)NpyFile.Read(output);
        var golden = (NdArray<double>)NpyFile.Read(Fixtures.Path("gpt2_tiny.logits.npy"));
        Assert.Equal(golden.Shape, logits.Shape);
        double max = golden.Data.Max(Math.Abs);
        for (int i = 0; i < golden.Data.Length; i++) Assert.True(Math.Abs(golden.Data[i] - logits.Data[i]) <= 1e-4 * max);
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

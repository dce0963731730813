using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Plan;

/// <summary>Fixture models' logits against the float64 torch goldens (SPEC §7) and against ONNX Runtime.</summary>
public class ForwardTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    [Theory]
    [InlineData("gpt2_tiny", "gpt2_tiny")]
    [InlineData("gpt2_tiny_external", "gpt2_tiny")]
    [InlineData("gpt2_tiny_opset11", "gpt2_tiny")]
    [InlineData("gpt2_tiny_past", "gpt2_tiny")]
    [InlineData("gpt2_tiny_merged", "gpt2_tiny")]
    [InlineData("llama_tiny", "llama_tiny")]
    [InlineData("llama_tiny_fp16", "llama_tiny_fp16")]
    [InlineData("llama_tiny_bf16", "llama_tiny_bf16")]
    [InlineData("bert_tiny", "bert_tiny")]
    [InlineData("llama_gqa_tiny", "llama_gqa_tiny")]
    public void LogitsMatchTheFloat64Golden(string model, string golden)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(TokensOf(model)));
        var logits = lm.Forward(Context, tokens);
        var reference = (NdArray<double>)NpyFile.Read(Fixtures.Path(golden + ".logits.npy"));
        AssertLogits(reference.Shape, reference.Data, logits);
    }

    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("gpt2_tiny_opset11")]
    [InlineData("gpt2_tiny_past")]
    [InlineData("gpt2_tiny_merged")]
    [InlineData("llama_tiny")]
    [InlineData("llama_tiny_bf16")]
    [InlineData("bert_tiny")]
    [InlineData("llama_gqa_tiny")]
    public void LogitsMatchOnnxRuntime(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(TokensOf(model)));
        var logits = lm.Forward(Context, tokens);
        var ort = OnnxRuntimeReference.Run(Fixtures.Path(model + ".onnx"), lm.Inputs(tokens));
        var (shape, data) = ort[lm.LogitsOutput];
        AssertLogits(shape, data, logits);
    }

    [Fact]
    public void BertWithExplicitMaskAndTokenTypes()
    {
        var lm = LanguageModel.Load(Fixtures.Path("bert_tiny.onnx"));
        var tokens = NpyFile.Read(Fixtures.Path("bert_tiny.tokens.npy"));
        var given = new Dictionary<string, NdArray>
        {
            ["attention_mask"] = NpyFile.Read(Fixtures.Path("bert_tiny.attention_mask.npy")),
            ["token_type_ids"] = NpyFile.Read(Fixtures.Path("bert_tiny.token_type_ids.npy")),
        };
        var logits = lm.Forward(Context, tokens, given);
        var reference = (NdArray<double>)NpyFile.Read(Fixtures.Path("bert_tiny.masked_logits.npy"));
        AssertLogits(reference.Shape, reference.Data, logits);
        // Not the unmasked logits: the mask and token types changed them.
        var plain = lm.Forward(Context, tokens);
        Assert.NotEqual(plain.Data, logits.Data);
        var ort = OnnxRuntimeReference.Run(Fixtures.Path("bert_tiny.onnx"), lm.Inputs(tokens, given));
        AssertLogits(ort[lm.LogitsOutput].Shape, ort[lm.LogitsOutput].Data, logits);
    }

    [Fact]
    public void PlansPerShapeGiveTheSameRows()
    {
        // A shorter sequence through its own plan gives the causal prefix of the longer one.
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var tokens = (NdArray<long>)NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var full = lm.Forward(Context, tokens);
        var prefix = new NdArray<long>([1, 5], tokens.Data[..5]);
        var part = lm.Forward(Context, prefix);
        int vocab = full.Shape[2];
        for (int i = 0; i < 5 * vocab; i++) Assert.Equal(full.Data[i], part.Data[i], 1e-4f);
        // Running the first shape again (cached plan, reused buffers) reproduces it exactly.
        Assert.Equal(full.Data, lm.Forward(Context, tokens).Data);
    }

    [Theory]
    [InlineData(64, "64")]
    [InlineData(-1, "-1")]
    public void TokenOutsideTheVocabularyIsNamed(long id, string shown)
    {
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var tokens = new NdArray<long>([1, 3], [1, id, 2]);
        var e = Assert.Throws<FisherKernelsException>(() => lm.Forward(Context, tokens));
        Assert.Contains($"token id {shown}", e.Message);
        Assert.Contains("64 rows", e.Message);
    }

    [Fact]
    public void TokensOfTheWrongTypeOrRank()
    {
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        Assert.Contains("int32 or int64", Assert.Throws<FisherKernelsException>(() => lm.Forward(Context, new NdArray<float>(1, 3))).Message);
        Assert.Contains("[batch, seq]", Assert.Throws<FisherKernelsException>(() => lm.Forward(Context, new NdArray<long>(3))).Message);
        // int32 tokens are accepted and give the int64 result.
        var tokens = (NdArray<long>)NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var narrow = new NdArray<int>(tokens.Shape, Array.ConvertAll(tokens.Data, v => (int)v));
        Assert.Equal(lm.Forward(Context, tokens).Data, lm.Forward(Context, narrow).Data);
    }

    internal static string TokensOf(string model) =>
        (model == "llama_gqa_tiny" ? model : model.StartsWith("llama", StringComparison.Ordinal) ? "llama_tiny" : model.StartsWith("gpt2", StringComparison.Ordinal) ? "gpt2_tiny" : "bert_tiny") + ".tokens.npy";

    /// <summary>SPEC §7: max|Δ| ≤ 1e-4 · max|ref|.</summary>
    internal static void AssertLogits(int[] shape, double[] reference, NdArray<float> logits)
    {
        Assert.Equal(shape, logits.Shape);
        double maxRef = reference.Max(Math.Abs), maxDiff = 0;
        for (int i = 0; i < reference.Length; i++) maxDiff = Math.Max(maxDiff, Math.Abs(reference[i] - logits.Data[i]));
        Assert.True(maxDiff <= 1e-4 * maxRef, $"max|Δ| = {maxDiff:G3}, allowed {1e-4 * maxRef:G3}");
        Assert.True(maxRef > 0.1);
    }
}

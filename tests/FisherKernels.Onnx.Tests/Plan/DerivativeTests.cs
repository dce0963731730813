using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Plan;

/// <summary>Whole-model gradients and JVPs against the float64 torch goldens in tests/fixtures (SPEC §7: relative error ≤ 1e-3).</summary>
public class DerivativeTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    [Theory]
    [InlineData("gpt2_tiny", "gpt2_tiny.grads", false, false)]
    [InlineData("gpt2_tiny", "gpt2_tiny.grads_targets", true, false)]
    [InlineData("gpt2_tiny", "gpt2_tiny.grads_all", false, true)]
    [InlineData("gpt2_tiny_external", "gpt2_tiny.grads", false, false)]
    [InlineData("gpt2_tiny_opset11", "gpt2_tiny.grads", false, false)]
    [InlineData("gpt2_tiny_opset11", "gpt2_tiny.grads_all", false, true)]
    [InlineData("gpt2_tiny_past", "gpt2_tiny.grads_targets", true, false)]
    [InlineData("gpt2_tiny_past", "gpt2_tiny.grads_all", false, true)]
    [InlineData("gpt2_tiny_merged", "gpt2_tiny.grads", false, false)]
    [InlineData("gpt2_tiny_merged", "gpt2_tiny.grads_all", false, true)]
    [InlineData("llama_tiny", "llama_tiny.grads", false, false)]
    [InlineData("llama_tiny", "llama_tiny.grads_targets", true, false)]
    [InlineData("llama_tiny", "llama_tiny.grads_all", false, true)]
    [InlineData("llama_tiny_fp16", "llama_tiny_fp16.grads", false, false)]
    [InlineData("llama_tiny_bf16", "llama_tiny_bf16.grads", false, false)]
    [InlineData("bert_tiny", "bert_tiny.grads", false, false)]
    [InlineData("bert_tiny", "bert_tiny.grads_targets", true, false)]
    [InlineData("bert_tiny", "bert_tiny.grads_all", false, true)]
    [InlineData("llama_gqa_tiny", "llama_gqa_tiny.grads", false, false)]
    [InlineData("llama_gqa_tiny", "llama_gqa_tiny.grads_targets", true, false)]
    [InlineData("llama_gqa_tiny", "llama_gqa_tiny.grads_all", false, true)]
    public void LossGradientsMatchTorch(string model, string golden, bool givenTargets, bool all)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(ForwardTests.TokensOf(model)));
        NdArray? targets = givenTargets ? NpyFile.Read(Fixtures.Path(ForwardTests.TokensOf(model).Replace("tokens", "targets", StringComparison.Ordinal))) : null;
        var parameters = all ? LayerDiscovery.AllParameters(lm.Model.Graph) : LayerDiscovery.DefaultParameters(lm.Model.Layers);
        var grads = Derivatives.LossGradients(lm, Context, tokens, targets, parameters);
        var reference = SafetensorsFile.Read(Fixtures.Path(golden + ".safetensors"));
        Assert.Equal(reference.Names.Order(StringComparer.Ordinal), grads.Keys.Order(StringComparer.Ordinal));
        AssertClose(reference, grads);
    }

    [Theory]
    [InlineData("gpt2_tiny", "gpt2_tiny")]
    [InlineData("gpt2_tiny_opset11", "gpt2_tiny")]
    [InlineData("gpt2_tiny_past", "gpt2_tiny")]
    [InlineData("gpt2_tiny_merged", "gpt2_tiny")]
    [InlineData("llama_tiny", "llama_tiny")]
    [InlineData("bert_tiny", "bert_tiny")]
    [InlineData("llama_gqa_tiny", "llama_gqa_tiny")]
    public void JvpMatchesTorch(string model, string golden)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(ForwardTests.TokensOf(model)));
        var file = SafetensorsFile.Read(Fixtures.Path(golden + ".direction.safetensors"));
        var direction = file.Names.ToDictionary(n => n, file.GetFloat32);
        var jvp = Derivatives.Jvp(lm, Context, tokens, direction);
        var reference = (NdArray<double>)NpyFile.Read(Fixtures.Path(golden + ".jvp.npy"));
        Assert.Equal(reference.Shape, jvp.Shape);
        Assert.True(RelativeError(reference.Data, jvp.Data) <= 1e-3, $"relative error {RelativeError(reference.Data, jvp.Data):G3}");

        // The tangent buffers are reused across calls: a doubled direction doubles J·V, and the first result comes back exactly.
        var doubled = direction.ToDictionary(kv => kv.Key, kv => new NdArray<float>(kv.Value.Shape, kv.Value.Data.Select(x => 2 * x).ToArray()));
        var twice = Derivatives.Jvp(lm, Context, tokens, doubled);
        for (int i = 0; i < jvp.Data.Length; i++) Assert.Equal(2 * jvp.Data[i], twice.Data[i], 1e-5f * (1 + Math.Abs(jvp.Data[i])));
        Assert.Equal(jvp.Data, Derivatives.Jvp(lm, Context, tokens, direction).Data);
    }

    [Fact]
    public void DirectionErrorsNameTheInitializer()
    {
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var tokens = NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var unknown = new Dictionary<string, NdArray<float>> { ["no.such.weight"] = new(2, 2) };
        Assert.Contains("no.such.weight", Assert.Throws<FisherKernelsException>(() => Derivatives.Jvp(lm, Context, tokens, unknown)).Message);
        var wrongShape = new Dictionary<string, NdArray<float>> { ["transformer.wte.weight"] = new(3, 2) };
        Assert.Contains("transformer.wte.weight", Assert.Throws<FisherKernelsException>(() => Derivatives.Jvp(lm, Context, tokens, wrongShape)).Message);
    }

    /// <summary>Per tensor relative error ≤ 1e-3, with a floor of 1e-3 × the norm of all gradients for tensors whose gradient is zero (README: BERT key biases).</summary>
    internal static void AssertClose(SafetensorsFile reference, IReadOnlyDictionary<string, NdArray<float>> actual)
    {
        double total = 0;
        foreach (var name in reference.Names) total += SumSquares(Fixtures.Doubles(reference.Tensors[name]));
        double floor = 1e-3 * Math.Sqrt(total);  // the scale below which a tensor counts as zero
        foreach (var name in reference.Names)
        {
            double[] expected = Fixtures.Doubles(reference.Tensors[name]);
            var got = actual[name];
            Assert.Equal(reference.Tensors[name].Shape, got.Shape);
            double diff = 0;
            for (int i = 0; i < expected.Length; i++) diff += (expected[i] - got.Data[i]) * (expected[i] - got.Data[i]);
            double norm = Math.Sqrt(SumSquares(expected));
            Assert.True(Math.Sqrt(diff) <= 1e-3 * Math.Max(norm, floor),
                $"{name}: |Δ| = {Math.Sqrt(diff):G3}, |ref| = {norm:G3}");
        }
    }

    internal static double RelativeError(double[] expected, float[] actual)
    {
        double diff = 0;
        for (int i = 0; i < expected.Length; i++) diff += (expected[i] - actual[i]) * (expected[i] - actual[i]);
        return Math.Sqrt(diff / SumSquares(expected));
    }

    private static double SumSquares(double[] v) => v.Sum(x => x * x);
}

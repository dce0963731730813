using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>com.microsoft Attention and MultiHeadAttention: VJP and JVP against finite differences (DerivativeChecker)
/// for every float input, and refusals. Forward values are in cases.json (numpy and ONNX Runtime).</summary>
public sealed class ContribAttentionTests
{
    private readonly Random rng = new(41);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static Operator Create(string op, int inputs, OperatorAttributes attributes, int outputs = 1) =>
        OpRunner.Create(op, inputs, outputs, attributes, opset: 1, domain: OperatorRegistry.MicrosoftDomain);

    private static OperatorAttributes Heads(long n) => new OperatorAttributes().Set("num_heads", n);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AttentionDerivatives(bool unidirectional)
    {
        var attributes = Heads(2).Set("unidirectional", unidirectional ? 1L : 0L);
        var mask = new NdArray<int>([2, 3], [1, 1, 1, 0, 1, 1]); // left padding in batch 1
        DerivativeChecker.Check(Create("Attention", 4, attributes), [R(2, 3, 4), R(4, 12), R(12), mask]);
    }

    [Fact]
    public void AttentionWithSeparateValueWidthAndNoBias() =>
        DerivativeChecker.Check(Create("Attention", 2, Heads(2).Set("qkv_hidden_sizes", new long[] { 4, 4, 6 })), [R(2, 3, 5), R(5, 14)]);

    [Fact]
    public void MultiHeadAttentionCrossDerivatives()
    {
        var lengths = new NdArray<int>([2], [4, 2]);
        DerivativeChecker.Check(Create("MultiHeadAttention", 5, Heads(2)), [R(2, 3, 4), R(2, 4, 4), R(2, 4, 6), R(14), lengths]);
    }

    [Fact]
    public void MultiHeadAttentionCausalDerivatives() =>
        DerivativeChecker.Check(Create("MultiHeadAttention", 3, Heads(2).Set("unidirectional", 1L).Set("scale", 0.4f)), [R(1, 4, 4), R(1, 4, 4), R(1, 4, 4)]);

    [Fact]
    public void OnnxAttentionGroupedCausalDerivatives() =>
        DerivativeChecker.Check(OpRunner.Create("Attention", 3, opset: 23,
                                                attributes: new OperatorAttributes().Set("q_num_heads", 4L).Set("kv_num_heads", 2L).Set("is_causal", 1L)),
                                [R(2, 3, 8), R(2, 4, 4), R(2, 4, 6)]);

    [Fact]
    public void OnnxAttentionFloatMaskIsDifferentiable() =>
        DerivativeChecker.Check(OpRunner.Create("Attention", 4, opset: 23), [R(2, 2, 3, 4), R(2, 1, 5, 4), R(2, 1, 5, 3), R(2, 1, 1, 5)]);

    [Fact]
    public void MasksAreNotDifferentiable()
    {
        Assert.False(Create("Attention", 4, Heads(2)).IsDifferentiable(3));
        Assert.False(Create("MultiHeadAttention", 5, Heads(2)).IsDifferentiable(4));
    }

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void RefusesPastStateAndAttentionBiasNamingThem()
    {
        var attention = Create("Attention", 6, Heads(2));
        var e = Refused(() => OpRunner.Forward(attention, R(1, 2, 4), R(4, 12), R(12), null, R(2, 1, 2, 0, 2), null));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("past", e.Message);
        e = Refused(() => OpRunner.Forward(attention, R(1, 2, 4), R(4, 12), R(12), null, null, R(1, 2, 2, 2)));
        Assert.Contains("attention_bias", e.Message);
        var mha = Create("MultiHeadAttention", 8, Heads(2));
        e = Refused(() => OpRunner.Forward(mha, R(1, 2, 4), R(1, 2, 4), R(1, 2, 4), null, null, null, R(1, 2, 1, 2), R(1, 2, 1, 2)));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("past_key", e.Message);
        var onnx = OpRunner.Create("Attention", 5, opset: 23);
        e = Refused(() => OpRunner.Forward(onnx, R(1, 2, 2, 4), R(1, 2, 2, 4), R(1, 2, 2, 4), null, R(1, 2, 1, 4)));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("past_key", e.Message);
        Assert.Equal(ErrorKind.Unsupported, Refused(() => OpRunner.Create("Attention", 3, opset: 23, attributes: new OperatorAttributes().Set("softcap", 30f))).Kind);
        Assert.Contains("broadcast", Refused(() => OpRunner.Forward(OpRunner.Create("Attention", 4, opset: 23), R(1, 2, 2, 4), R(1, 2, 2, 4), R(1, 2, 2, 4), R(3, 2, 2))).Message);
    }

    [Fact]
    public void RefusesPresentOutputsPackedFormsAndUnsupportedMasks()
    {
        Assert.Equal(ErrorKind.Unsupported, Refused(() => Create("Attention", 2, Heads(2), outputs: 2)).Kind);
        Assert.Equal(ErrorKind.Unsupported, Refused(() => Create("Attention", 2, Heads(2).Set("do_rotary", 1L))).Kind);
        Assert.Contains("packed", Refused(() => OpRunner.Forward(Create("MultiHeadAttention", 1, Heads(2)), R(1, 2, 2, 3, 2))).Message);
        var megatron = new NdArray<int>([1, 1, 2, 2], [1, 1, 1, 1]);
        Assert.Contains("mask of shape [1, 1, 2, 2]", Refused(() => OpRunner.Forward(Create("Attention", 4, Heads(2)), R(1, 2, 4), R(4, 12), R(12), megatron)).Message);
        Assert.Contains("num_heads", Refused(() => Create("Attention", 2, new OperatorAttributes())).Message);
        Assert.Contains("multiple of num_heads", Refused(() => OpRunner.Forward(Create("Attention", 2, Heads(5)), R(1, 2, 4), R(4, 12))).Message);
    }
}

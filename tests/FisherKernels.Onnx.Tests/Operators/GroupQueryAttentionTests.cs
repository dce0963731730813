using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>com.microsoft GroupQueryAttention (prompt, no cache): VJP and JVP against finite differences through the output
/// and the present key/value, and refusals by name. Forward values are in cases.json (numpy and ONNX Runtime).</summary>
public sealed class GroupQueryAttentionTests
{
    private readonly Random rng = new(61);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static NdArray<int> Ints(params int[] values) => new([values.Length], values);

    private static NdArray<int> Total(int total) => new([], [total]);

    private static OperatorAttributes Heads(long heads, long kv) => new OperatorAttributes().Set("num_heads", heads).Set("kv_num_heads", kv);

    private static Operator Gqa(OperatorAttributes attributes, int inputs = 7, int outputs = 3) =>
        OpRunner.Create("GroupQueryAttention", inputs, outputs, attributes, opset: 1, domain: OperatorRegistry.MicrosoftDomain);

    [Fact]
    public void DerivativesThroughOutputAndPresent() =>
        DerivativeChecker.Check(Gqa(Heads(4, 2)), [R(2, 3, 16), R(2, 3, 8), R(2, 3, 8), null, null, Ints(2, 1), Total(3)]);

    [Fact]
    public void DerivativesOfOutputAloneWithScale() =>
        DerivativeChecker.Check(Gqa(Heads(2, 1).Set("scale", 0.4f), outputs: 1), [R(1, 4, 6), R(1, 4, 3), R(1, 4, 3), null, null, Ints(3), Total(4)]);

    [Fact]
    public void LengthsAreNotDifferentiable()
    {
        var op = Gqa(Heads(2, 1));
        Assert.All(new[] { 5, 6 }, i => Assert.False(op.IsDifferentiable(i)));
        Assert.All(new[] { 0, 1, 2 }, i => Assert.True(op.IsDifferentiable(i)));
    }

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void RefusesTheCacheAndOtherFormsByName()
    {
        var op = Gqa(Heads(2, 1), inputs: 9);
        var e = Refused(() => OpRunner.Forward(op, R(1, 2, 4), R(1, 2, 2), R(1, 2, 2), R(1, 1, 3, 2), R(1, 1, 3, 2), Ints(4), Total(5), null, null));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("past_key", e.Message);
        Assert.Contains("cos_cache", Refused(() => OpRunner.Forward(op, R(1, 2, 4), R(1, 2, 2), R(1, 2, 2), null, null, Ints(1), Total(2), R(4, 1), null)).Message);
        Assert.Contains("key and value are required", Refused(() => OpRunner.Forward(op, R(1, 2, 8), null, null, null, null, Ints(1), Total(2), null, null)).Message);
        e = Refused(() => OpRunner.Forward(Gqa(Heads(2, 1)), R(1, 2, 4), R(1, 2, 2), R(1, 2, 2), null, null, Ints(1), Total(5)));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("total_sequence_length 5", e.Message);
        Assert.Contains("seqlens_k[0] = 2", Refused(() => OpRunner.Forward(Gqa(Heads(2, 1)), R(1, 2, 4), R(1, 2, 2), R(1, 2, 2), null, null, Ints(2), Total(2))).Message);
        Assert.Contains("do_rotary", Refused(() => Gqa(Heads(2, 1).Set("do_rotary", 1L))).Message);
        Assert.Contains("softcap", Refused(() => Gqa(Heads(2, 1).Set("softcap", 50f))).Message);
        Assert.Contains("local_window_size", Refused(() => Gqa(Heads(2, 1).Set("local_window_size", 8L))).Message);
        Assert.Contains("output_qk", Refused(() => Gqa(Heads(2, 1), outputs: 4)).Message);
        Assert.Contains("kv_num_heads", Refused(() => Gqa(new OperatorAttributes().Set("num_heads", 2L))).Message);
    }
}

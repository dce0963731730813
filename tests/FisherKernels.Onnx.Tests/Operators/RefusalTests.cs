using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>Bad nodes and inputs: one FisherKernelsException whose message names the node and what is wrong.</summary>
public sealed class RefusalTests
{
    private readonly Random rng = new(5);

    private static OperatorAttributes A() => new();

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void GatherIndexOutsideTheTableNamesIndexAndLimit()
    {
        var op = OpRunner.Create("Gather", 2);
        var table = OpRunner.Random(rng, 5, 3);
        var e = Refused(() => OpRunner.Forward(op, table, OpRunner.Longs(1, 7)));
        Assert.Contains("index 7", e.Message);
        Assert.Contains("[-5, 4]", e.Message);
        // Indices only known at run time are checked by the forward as well.
        var outputs = new NdArray[] { new NdArray<float>(2, 3) };
        e = Refused(() => op.Forward(OpRunner.Context, [table, OpRunner.Longs(0, -6)], outputs));
        Assert.Contains("index -6", e.Message);
    }

    [Fact]
    public void SliceRefusesZeroStep() =>
        Assert.Contains("steps", Refused(() => OpRunner.Forward(OpRunner.Create("Slice", 5), OpRunner.Random(rng, 3), OpRunner.Longs(0), OpRunner.Longs(2), OpRunner.Longs(0), OpRunner.Longs(0))).Message);

    [Fact]
    public void SplitRefusesSizesThatDoNotAddUp() =>
        Assert.Contains("split", Refused(() => OpRunner.Forward(OpRunner.Create("Split", 2, outputs: 2), OpRunner.Random(rng, 5), OpRunner.Longs(2, 2))).Message);

    [Fact]
    public void ConcatRefusesMismatchedShapes() =>
        Assert.Contains("does not match", Refused(() => OpRunner.Forward(OpRunner.Create("Concat", 2, attributes: A().Set("axis", 0L)), OpRunner.Random(rng, 2, 3), OpRunner.Random(rng, 2, 4))).Message);

    [Fact]
    public void ConcatNeedsAnAxis() => Assert.Contains("'axis'", Refused(() => OpRunner.Create("Concat", 2)).Message);

    [Fact]
    public void GeluRefusesUnknownApproximation() =>
        Assert.Contains("approximate", Refused(() => OpRunner.Create("Gelu", 1, attributes: A().Set("approximate", "fast"), opset: 20)).Message);

    [Fact]
    public void CastToComplexIsUnsupported() =>
        Assert.Contains("element type 14", Refused(() => OpRunner.Create("Cast", 1, attributes: A().Set("to", 14L))).Message);

    [Fact]
    public void CastBetweenBoolAndStringIsUnsupported() =>
        Assert.Contains("between bool and string", Refused(() => OpRunner.Forward(OpRunner.Create("Cast", 1, attributes: A().Set("to", 8L)), new NdArray<bool>([1], [true]))).Message);

    [Fact]
    public void SqueezeRefusesAxisOfSizeAboveOne() =>
        Assert.Contains("cannot squeeze", Refused(() => OpRunner.Forward(OpRunner.Create("Squeeze", 2), OpRunner.Random(rng, 2, 3), OpRunner.Longs(1))).Message);

    [Fact]
    public void TransposeRefusesABadPermutation() =>
        Assert.Contains("perm", Refused(() => OpRunner.Forward(OpRunner.Create("Transpose", 1, attributes: A().Set("perm", new long[] { 0, 0 })), OpRunner.Random(rng, 2, 3))).Message);

    [Fact]
    public void LayerNormalizationRefusesAMismatchedScale() =>
        Refused(() => OpRunner.Forward(OpRunner.Create("LayerNormalization", 2), OpRunner.Random(rng, 2, 4), OpRunner.Random(rng, 3)));

    [Fact]
    public void NegativeAxisOutOfRangeIsRefused() =>
        Assert.Contains("out of range", Refused(() => OpRunner.Forward(OpRunner.Create("Softmax", 1, attributes: A().Set("axis", -3L)), OpRunner.Random(rng, 2, 3))).Message);

    [Fact]
    public void RangeNeedsKnownScalars()
    {
        var op = OpRunner.Create("Range", 3);
        var info = new TensorInfo(ElementType.Int64, []);
        Assert.Contains("known when the plan is built", Refused(() => op.InferShapes([info, info, info])).Message);
    }
}

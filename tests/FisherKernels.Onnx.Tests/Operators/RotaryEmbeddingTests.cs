using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>com.microsoft RotaryEmbedding: VJP and JVP against finite differences (input and both caches), and refusals.
/// Forward values are in cases.json (numpy and ONNX Runtime).</summary>
public sealed class RotaryEmbeddingTests
{
    private readonly Random rng = new(31);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static Operator Rotary(OperatorAttributes? attributes = null) =>
        OpRunner.Create("RotaryEmbedding", 4, attributes: attributes, domain: OperatorRegistry.MicrosoftDomain, opset: 1);

    [Theory]
    [InlineData(0, 0)]
    [InlineData(1, 0)]
    [InlineData(0, 4)]
    public void Derivatives(long interleaved, long rotaryDim)
    {
        var attributes = new OperatorAttributes().Set("interleaved", interleaved);
        if (rotaryDim > 0) attributes.Set("rotary_embedding_dim", rotaryDim).Set("num_heads", 2L);
        int half = rotaryDim > 0 ? (int)rotaryDim / 2 : 3;
        // Repeated positions: several tokens read one cache row, so the cache gradients sum.
        DerivativeChecker.Check(Rotary(attributes), [R(2, 3, 12), new NdArray<long>([2, 3], [0, 1, 1, 4, 2, 0]), R(5, half), R(5, half)]);
    }

    [Fact]
    public void DerivativesTransposedWithOffset() =>
        DerivativeChecker.Check(Rotary(), [R(1, 2, 3, 6), OpRunner.Longs(1), R(4, 3), R(4, 3)]);

    [Fact]
    public void PositionIdsAreNotDifferentiable()
    {
        Assert.False(Rotary().IsDifferentiable(1));
        Assert.False(OpRunner.Create("RotaryEmbedding", 4, opset: 23).IsDifferentiable(3));
        Assert.True(OpRunner.Create("RotaryEmbedding", 4, opset: 23).IsDifferentiable(1));
    }

    [Fact]
    public void Opset23DerivativesWithPositionIdsAndWideCache() =>
        DerivativeChecker.Check(OpRunner.Create("RotaryEmbedding", 4, opset: 23,
                                                attributes: new OperatorAttributes().Set("num_heads", 2L).Set("rotary_embedding_dim", 4L)),
                                [R(2, 3, 12), R(5, 3), R(5, 3), new NdArray<long>([2, 3], [0, 1, 1, 4, 2, 0])]);

    [Fact]
    public void Opset23DerivativesWithPerTokenCaches() =>
        DerivativeChecker.Check(OpRunner.Create("RotaryEmbedding", 3, opset: 23, attributes: new OperatorAttributes().Set("interleaved", 1L)),
                                [R(2, 2, 3, 6), R(2, 3, 3), R(2, 3, 3)]);

    [Fact]
    public void Opset23NeedsNumHeadsFor3DInput() =>
        Assert.Contains("num_heads", Refused(() => OpRunner.Forward(OpRunner.Create("RotaryEmbedding", 3, opset: 23), R(1, 2, 6), R(1, 2, 3), R(1, 2, 3))).Message);

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void RefusesPositionsOutsideTheCaches() =>
        Assert.Contains("position 4", Refused(() => OpRunner.Forward(Rotary(), R(1, 2, 6), new NdArray<long>([1, 2], [0, 4]), R(4, 3), R(4, 3))).Message);

    [Fact]
    public void RefusesMismatchedCachesAndPackedBatching()
    {
        Assert.Contains("cache", Refused(() => OpRunner.Forward(Rotary(), R(1, 2, 6), OpRunner.Longs(0), R(4, 3), R(4, 2))).Message);
        Assert.Contains("num_heads", Refused(() => Rotary(new OperatorAttributes().Set("rotary_embedding_dim", 4L))).Message);
        Assert.Equal(ErrorKind.Unsupported, Refused(() => Rotary(new OperatorAttributes().Set("is_packed_batching", 1L))).Kind);
    }
}

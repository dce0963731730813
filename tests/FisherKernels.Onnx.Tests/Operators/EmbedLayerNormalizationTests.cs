using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>com.microsoft EmbedLayerNormalization, the com.microsoft GELU forms and BiasAdd: VJP and JVP against finite differences
/// (DerivativeChecker) and refusals. Forward values are in cases.json (numpy and ONNX Runtime).</summary>
public sealed class EmbedLayerNormalizationTests
{
    private readonly Random rng = new(53);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static NdArray<int> Ints(int rows, params int[] values) => new([rows, values.Length / rows], values);

    private static Operator Embed(int inputs, int outputs = 3, OperatorAttributes? attributes = null) =>
        OpRunner.Create("EmbedLayerNormalization", inputs, outputs, attributes ?? new OperatorAttributes().Set("epsilon", 1e-5f),
                        opset: 1, domain: OperatorRegistry.MicrosoftDomain);

    [Fact]
    public void DerivativesThroughOutputAndEmbeddingSum()
    {
        // Repeated word, position and segment rows: the table gradients sum over the tokens that read them.
        var ids = Ints(2, 1, 4, 1, 0, 3, 3, 4, 1);
        var segments = Ints(2, 0, 0, 1, 1, 0, 1, 1, 1);
        var mask = Ints(2, 1, 1, 1, 0, 1, 1, 0, 0);
        DerivativeChecker.Check(Embed(8), [ids, segments, R(5, 6), R(4, 6), R(2, 6), R(6), R(6), mask]);
    }

    [Fact]
    public void DerivativesWithoutSegmentsAndWithBroadcastPositionIds() =>
        DerivativeChecker.Check(Embed(9, outputs: 1), [Ints(2, 2, 0, 2, 1, 1, 2), null, R(3, 6), R(5, 6), null, R(6), R(6), null, Ints(1, 4, 0, 4)]);

    [Fact]
    public void IdsAndMasksAreNotDifferentiable()
    {
        var op = Embed(9);
        Assert.All(new[] { 0, 1, 7, 8 }, i => Assert.False(op.IsDifferentiable(i)));
        Assert.All(new[] { 2, 3, 4, 5, 6 }, i => Assert.True(op.IsDifferentiable(i)));
    }

    [Fact]
    public void QuickGeluDerivatives() =>
        DerivativeChecker.Check(OpRunner.Create("QuickGelu", 1, attributes: new OperatorAttributes().Set("alpha", 1.3f), opset: 1, domain: OperatorRegistry.MicrosoftDomain),
                                [OpRunner.Random(rng, -3.0, 3.0, 2, 20)]);

    [Fact]
    public void BiasAddDerivatives() =>
        DerivativeChecker.Check(OpRunner.Create("BiasAdd", 3, opset: 1, domain: OperatorRegistry.MicrosoftDomain), [R(2, 3, 4), R(4), R(2, 3, 4)]);

    [Fact]
    public void BiasAddRefusesMismatchedShapes() =>
        Assert.Contains("bias [5]", Refused(() => OpRunner.Forward(OpRunner.Create("BiasAdd", 3, opset: 1, domain: OperatorRegistry.MicrosoftDomain), R(1, 2, 4), R(5), R(1, 2, 4))).Message);

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void RefusesIdsOutsideTheTablesNamingIdAndRows()
    {
        var e = Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 5), null, R(5, 4), R(3, 4), null, R(4), R(4)));
        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("input_ids 5 at [0, 1]", e.Message);
        Assert.Contains("word_embedding (rows 0 to 4)", e.Message);
        Assert.Contains("segment_ids 2", Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 1), Ints(1, 0, 2), R(5, 4), R(3, 4), R(2, 4), R(4), R(4))).Message);
        Assert.Contains("position 3", Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 1, 2, 3), null, R(5, 4), R(3, 4), null, R(4), R(4))).Message);
        Assert.Contains("position_ids -1", Refused(() => OpRunner.Forward(Embed(9, 1), Ints(1, 0, 1), null, R(5, 4), R(3, 4), null, R(4), R(4), null, Ints(1, 0, -1))).Message);
    }

    [Fact]
    public void RefusesMismatchedInputs()
    {
        Assert.Contains("together", Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 1), Ints(1, 0, 0), R(5, 4), R(3, 4), null, R(4), R(4))).Message);
        Assert.Contains("int32", Refused(() => OpRunner.Forward(Embed(7, 1), new NdArray<long>([1, 2], [0, 1]), null, R(5, 4), R(3, 4), null, R(4), R(4))).Message);
        Assert.Contains("gamma must be [4]", Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 1), null, R(5, 4), R(3, 4), null, R(5), R(4))).Message);
        Assert.Contains("position_embedding", Refused(() => OpRunner.Forward(Embed(7, 1), Ints(1, 0, 1), null, R(5, 4), R(3, 5), null, R(4), R(4))).Message);
        Assert.Contains("mask", Refused(() => OpRunner.Forward(Embed(8, 1), Ints(1, 0, 1), null, R(5, 4), R(3, 4), null, R(4), R(4), Ints(1, 1, 1, 1))).Message);
        Assert.Contains("expects 7 to 9 inputs", Refused(() => Embed(6)).Message);
    }
}

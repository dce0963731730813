using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>Pad, Tile and ScatterND: VJP and JVP against finite differences (DerivativeChecker), and refusals.
/// Forward values are in cases.json (numpy and ONNX Runtime).</summary>
public sealed class PadTileScatterTests
{
    private readonly Random rng = new(23);

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private static OperatorAttributes A() => new();

    [Theory]
    [InlineData("constant")]
    [InlineData("reflect")]
    [InlineData("edge")]
    [InlineData("wrap")]
    public void PadDerivatives(string mode)
    {
        // Mixed pads: grow, crop, and with reflect/edge/wrap several outputs reading one input (the VJP sums them).
        var op = OpRunner.Create("Pad", 3, attributes: A().Set("mode", mode), opset: 19);
        var value = new NdArray<float>([], [0.7f]);
        DerivativeChecker.Check(op, [R(3, 4), OpRunner.Longs(2, -1, 1, 3), mode == "constant" ? value : null]);
    }

    [Fact]
    public void PadWithAxesDerivatives() =>
        DerivativeChecker.Check(OpRunner.Create("Pad", 4, attributes: A().Set("mode", "reflect"), opset: 18),
                                [R(2, 3, 4), OpRunner.Longs(1, 2, 3, 1), null, OpRunner.Longs(-1, 1)]);

    [Fact]
    public void PadMarksPadsAndAxesNotDifferentiable()
    {
        var op = OpRunner.Create("Pad", 4, opset: 18);
        Assert.True(op.IsDifferentiable(0));
        Assert.False(op.IsDifferentiable(1));
        Assert.True(op.IsDifferentiable(2)); // the fill value of constant mode
        Assert.False(op.IsDifferentiable(3));
        Assert.False(OpRunner.Create("Pad", 3, attributes: A().Set("mode", "edge"), opset: 13).IsDifferentiable(2));
    }

    [Fact]
    public void TileDerivatives() => DerivativeChecker.Check(OpRunner.Create("Tile", 2, opset: 13), [R(2, 1, 3), OpRunner.Longs(2, 3, 1)]);

    [Theory]
    [InlineData("none")]
    [InlineData("add")]
    [InlineData("mul")]
    [InlineData("max")]
    [InlineData("min")]
    public void ScatterNDDerivatives(string reduction)
    {
        var op = OpRunner.Create("ScatterND", 3, attributes: A().Set("reduction", reduction), opset: 18);
        // The reductions combine a repeated index in order; "none" takes distinct ones.
        var indices = new NdArray<long>([3, 2], reduction != "none" ? [1, 0, 3, -1, 1, 0] : [1, 0, 3, -1, 0, 2]);
        DerivativeChecker.Check(op, [R(4, 3, 2), indices, R(3, 2)]);
        Assert.False(op.IsDifferentiable(1));
    }

    private static FisherKernelsException Refused(Action action)
    {
        var e = Assert.Throws<FisherKernelsException>(action);
        Assert.StartsWith("node 'n0'", e.Message);
        return e;
    }

    [Fact]
    public void PadRefusesUnknownModeAndWrapBeforeOpset19()
    {
        Assert.Contains("'mirror'", Refused(() => OpRunner.Create("Pad", 2, attributes: A().Set("mode", "mirror"), opset: 13)).Message);
        Assert.Contains("'wrap'", Refused(() => OpRunner.Create("Pad", 2, attributes: A().Set("mode", "wrap"), opset: 18)).Message);
    }

    [Fact]
    public void PadRefusesWrongPadCountsAndOverCropping()
    {
        var op = OpRunner.Create("Pad", 2, opset: 13);
        Assert.Contains("expected 4", Refused(() => OpRunner.Forward(op, R(2, 3), OpRunner.Longs(1, 1))).Message);
        Assert.Contains("remove more", Refused(() => OpRunner.Forward(op, R(2, 3), OpRunner.Longs(0, -2, 0, -2))).Message);
        Assert.Contains("twice", Refused(() => OpRunner.Forward(OpRunner.Create("Pad", 4, opset: 18), R(2, 3), OpRunner.Longs(1, 1, 0, 0), null, OpRunner.Longs(1, -1))).Message);
        var edge = OpRunner.Create("Pad", 2, attributes: A().Set("mode", "edge"), opset: 13);
        Assert.Contains("empty axis", Refused(() => OpRunner.Forward(edge, new NdArray<float>(0, 2), OpRunner.Longs(1, 0, 0, 0))).Message);
    }

    [Fact]
    public void PadNeedsKnownPads()
    {
        var op = OpRunner.Create("Pad", 2, opset: 13);
        var e = Refused(() => op.InferShapes([new TensorInfo(ElementType.Float32, [2, 3]), new TensorInfo(ElementType.Int64, [4])]));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
    }

    [Fact]
    public void TileRefusesRepeatsOfTheWrongLength() =>
        Assert.Contains("repeats", Refused(() => OpRunner.Forward(OpRunner.Create("Tile", 2), R(2, 3), OpRunner.Longs(2))).Message);

    [Fact]
    public void ScatterNDRefusesReductionsBeforeTheirOpsetDuplicatesAndBadIndices()
    {
        Assert.Contains("opset 16", Refused(() => OpRunner.Create("ScatterND", 3, attributes: A().Set("reduction", "mul"), opset: 13)).Message);
        Assert.Contains("opset 16", Refused(() => OpRunner.Create("ScatterND", 3, attributes: A().Set("reduction", "add"), opset: 13)).Message);
        Assert.Contains("opset 18", Refused(() => OpRunner.Create("ScatterND", 3, attributes: A().Set("reduction", "max"), opset: 16)).Message);
        Assert.Contains("not a ScatterND reduction", Refused(() => OpRunner.Create("ScatterND", 3, attributes: A().Set("reduction", "prod"), opset: 18)).Message);
        var op = OpRunner.Create("ScatterND", 3, opset: 13);
        Assert.Contains("duplicate", Refused(() => OpRunner.Forward(op, R(4, 2), new NdArray<long>([2, 1], [1, -3]), R(2, 2))).Message);
        Assert.Contains("index 4", Refused(() => OpRunner.Forward(op, R(4, 2), new NdArray<long>([1, 1], [4]), R(1, 2))).Message);
        Assert.Contains("updates has shape", Refused(() => OpRunner.Forward(op, R(4, 2), new NdArray<long>([1, 1], [0]), R(1, 3))).Message);
    }
}

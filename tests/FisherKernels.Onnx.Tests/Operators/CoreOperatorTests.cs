using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>Derivatives (finite differences, adjoint consistency) and refusals of MatMul, the binary arithmetic ops, Softmax and Reshape.</summary>
public sealed class CoreOperatorTests
{
    private readonly Random Rng = new(42); // xunit makes one instance per test: deterministic inputs

    [Theory]
    [InlineData(new[] { 3, 4 }, new[] { 4, 5 })]
    [InlineData(new[] { 2, 3, 4 }, new[] { 2, 4, 5 })]
    [InlineData(new[] { 2, 3, 4 }, new[] { 4, 5 })]
    [InlineData(new[] { 3, 4 }, new[] { 2, 4, 5 })]
    [InlineData(new[] { 2, 1, 3, 4 }, new[] { 1, 3, 4, 2 })]
    [InlineData(new[] { 4 }, new[] { 2, 4, 3 })]
    [InlineData(new[] { 2, 3, 4 }, new[] { 4 })]
    [InlineData(new[] { 4 }, new[] { 4 })]
    public void MatMulDerivatives(int[] a, int[] b) =>
        DerivativeChecker.Check(OpRunner.Create("MatMul", 2), [OpRunner.Random(Rng, a), OpRunner.Random(Rng, b)]);

    [Theory]
    [InlineData("Add", new[] { 2, 3, 4 }, new[] { 4 })]
    [InlineData("Sub", new[] { 2, 1, 4 }, new[] { 3, 1 })]
    [InlineData("Mul", new[] { 2, 3 }, new int[0])]
    [InlineData("Mul", new[] { 2, 2, 3, 3 }, new[] { 2, 1, 3, 3 })]
    [InlineData("Div", new[] { 3, 4 }, new[] { 3, 1 })]
    [InlineData("Div", new int[0], new[] { 3, 2 })]
    [InlineData("Pow", new[] { 2, 3 }, new[] { 3 })]
    public void BinaryDerivatives(string op, int[] a, int[] b)
    {
        // Div and Pow: keep the denominator and the base away from 0.
        var x = op == "Pow" ? OpRunner.Random(Rng, 0.5, 2, a) : OpRunner.Random(Rng, a);
        var y = op == "Div" ? OpRunner.Random(Rng, 0.5, 1.5, b) : OpRunner.Random(Rng, b);
        DerivativeChecker.Check(OpRunner.Create(op, 2), [x, y]);
    }

    [Fact]
    public void PowSquareDerivative() =>
        DerivativeChecker.Check(OpRunner.Create("Pow", 2), [OpRunner.Random(Rng, 0.5, 2, 2, 3), new NdArray<float>([], [2f])]);

    [Theory]
    [InlineData("Softmax", -1, 17)]
    [InlineData("Softmax", 1, 17)]
    [InlineData("Softmax", -3, 13)]
    [InlineData("LogSoftmax", -1, 17)]
    [InlineData("LogSoftmax", 0, 17)]
    [InlineData("Softmax", 1, 11)]
    [InlineData("LogSoftmax", 1, 11)]
    public void SoftmaxDerivatives(string op, int axis, int opset) =>
        DerivativeChecker.Check(OpRunner.Create(op, 1, attributes: new OperatorAttributes().Set("axis", (long)axis), opset: opset),
                                [OpRunner.Random(Rng, 2, 3, 4)]);

    [Theory]
    [InlineData("Softmax")]
    [InlineData("LogSoftmax")]
    public void SoftmaxOnLargeLogitsIsFiniteAndDifferentiable(string opType)
    {
        // Logits near 1000 overflow exp() without the max subtraction; the step is relative to the logits' spread.
        var x = OpRunner.Random(Rng, 2, 6);
        var big = new NdArray<float>(x.Shape, x.Data.Select(v => 1000 + 3 * v).ToArray());
        var op = OpRunner.Create(opType, 1);
        var y = (NdArray<float>)OpRunner.Forward(op, big)[0];
        Assert.All(y.Data, v => Assert.True(float.IsFinite(v)));
        DerivativeChecker.Check(op, [big], step: 1e-2, finiteDifferenceTolerance: 5e-3);
    }

    [Fact]
    public void ReshapeDerivatives() =>
        DerivativeChecker.Check(OpRunner.Create("Reshape", 2), [OpRunner.Random(Rng, 2, 3, 4), OpRunner.Longs(0, -1)]);

    [Fact]
    public void UnknownOperatorNamesOpDomainAndNode()
    {
        var node = new OperatorNode("attn/Foo_3", "FancyAttention", "com.example", 1, new OperatorAttributes(), 1, 1);
        var e = Assert.Throws<FisherKernelsException>(() => OperatorRegistry.Create(node));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains("FancyAttention", e.Message);
        Assert.Contains("com.example", e.Message);
        Assert.Contains("attn/Foo_3", e.Message);
    }

    [Fact]
    public void OperatorOutsideItsOpsetRangeIsRefused()
    {
        var node = new OperatorNode("r", "Reshape", "", 1, new OperatorAttributes(), 2, 1);
        var e = Assert.Throws<FisherKernelsException>(() => OperatorRegistry.Create(node));
        Assert.Contains("opset 1", e.Message);
    }

    [Fact]
    public void WrongAttributeKindNamesNodeAndAttribute()
    {
        var attributes = new OperatorAttributes().Set("axis", "last");
        var e = Assert.Throws<FisherKernelsException>(() => OpRunner.Create("Softmax", 1, attributes: attributes));
        Assert.Contains("node 'n0' (Softmax)", e.Message);
        Assert.Contains("'axis'", e.Message);
    }

    [Theory]
    [InlineData(new[] { 3, 4 }, new[] { 5, 6 })]
    [InlineData(new[] { 2, 3, 4 }, new[] { 3, 4, 5 })]
    public void MatMulRefusesMismatchedShapes(int[] a, int[] b)
    {
        var op = OpRunner.Create("MatMul", 2);
        var e = Assert.Throws<FisherKernelsException>(() => OpRunner.Forward(op, OpRunner.Random(Rng, a), OpRunner.Random(Rng, b)));
        Assert.Contains("cannot be multiplied", e.Message);
    }

    [Fact]
    public void BroadcastRefusesIncompatibleShapes()
    {
        var e = Assert.Throws<FisherKernelsException>(() => OpRunner.Forward(OpRunner.Create("Add", 2), OpRunner.Random(Rng, 2, 3), OpRunner.Random(Rng, 4)));
        Assert.Contains("do not broadcast", e.Message);
    }

    [Theory]
    [InlineData(new long[] { 5, -1 })]
    [InlineData(new long[] { -1, -1 })]
    [InlineData(new long[] { 0, 0, 0, 0 })]
    public void ReshapeRefusesImpossibleShapes(long[] shape)
    {
        var e = Assert.Throws<FisherKernelsException>(() => OpRunner.Forward(OpRunner.Create("Reshape", 2), OpRunner.Random(Rng, 2, 3, 4), OpRunner.Longs(shape)));
        Assert.StartsWith("node 'n0' (Reshape)", e.Message);
    }

    [Fact]
    public void ReshapeNeedsAKnownShape()
    {
        var op = OpRunner.Create("Reshape", 2);
        var e = Assert.Throws<FisherKernelsException>(() => op.InferShapes([new TensorInfo(ElementType.Float32, [2, 3]), new TensorInfo(ElementType.Int64, [2])]));
        Assert.Contains("known when the plan is built", e.Message);
    }
}

using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>VJP and JVP of every differentiable operator family against finite differences and each other (DerivativeChecker).</summary>
public sealed class FamilyDerivativeTests
{
    private readonly Random rng = new(11); // one instance per test: deterministic inputs

    private NdArray<float> R(params int[] shape) => OpRunner.Random(rng, shape);

    private NdArray<float> Positive(params int[] shape) => OpRunner.Random(rng, 0.5, 2, shape);

    private static OperatorAttributes A() => new();

    [Theory]
    [InlineData("Sqrt")]
    [InlineData("Reciprocal")]
    [InlineData("Log")]
    public void PositiveDomainUnary(string op) => DerivativeChecker.Check(OpRunner.Create(op, 1), [Positive(3, 4)]);

    [Theory]
    [InlineData("Neg")]
    [InlineData("Exp")]
    [InlineData("Tanh")]
    [InlineData("Erf")]
    [InlineData("Sigmoid")]
    [InlineData("Relu")]
    [InlineData("Cos")]
    [InlineData("Sin")]
    [InlineData("Abs")]
    public void Unary(string op)
    {
        // Relu, Abs: keep inputs off the kink at 0, where finite differences straddle it.
        var x = R(3, 4);
        for (int i = 0; i < x.Data.Length; i++) if (MathF.Abs(x.Data[i]) < 0.05f) x.Data[i] = 0.3f;
        DerivativeChecker.Check(OpRunner.Create(op, 1), [x]);
    }

    [Fact]
    public void Clip()
    {
        // Elements on both sides of both bounds, none within a finite-difference step of one.
        var x = R(4, 5);
        for (int i = 0; i < x.Data.Length; i++)
            if (MathF.Abs(x.Data[i] + 0.5f) < 0.05f || MathF.Abs(x.Data[i] - 0.4f) < 0.05f) x.Data[i] = 0f;
        Assert.Contains(x.Data, v => v < -0.5f);
        Assert.Contains(x.Data, v => v > 0.4f);
        DerivativeChecker.Check(OpRunner.Create("Clip", 3, opset: 13), [x, new NdArray<float>([], [-0.5f]), new NdArray<float>([], [0.4f])]);
    }

    [Theory]
    [InlineData("Max")]
    [InlineData("Min")]
    public void MaxMinBroadcast(string op) =>
        DerivativeChecker.Check(OpRunner.Create(op, 2, opset: 13), [R(2, 3, 4), R(4)]); // random operands: no ties

    [Theory]
    [InlineData("none")]
    [InlineData("tanh")]
    public void Gelu(string approximate) =>
        DerivativeChecker.Check(OpRunner.Create("Gelu", 1, attributes: A().Set("approximate", approximate), opset: 20), [R(2, 3, 5)]);

    [Theory]
    [InlineData("FastGelu", 2)]
    [InlineData("FastGelu", 1)]
    [InlineData("BiasGelu", 2)]
    public void MicrosoftGelu(string op, int inputs) =>
        DerivativeChecker.Check(OpRunner.Create(op, inputs, domain: OperatorRegistry.MicrosoftDomain, opset: 1),
                                inputs == 2 ? [R(2, 3, 4), R(4)] : [R(2, 3, 4)]);

    [Theory]
    [InlineData(0, 0, 5)]
    [InlineData(0, 1, 5)]
    [InlineData(1, 0, 1)]
    [InlineData(1, 1, 0)]
    public void Gemm(int transA, int transB, int cKind)
    {
        var a = transA == 1 ? R(4, 3) : R(3, 4);
        var b = transB == 1 ? R(5, 4) : R(4, 5);
        NdArray<float> c = cKind switch { 5 => R(5), 1 => R(3, 1), _ => R(3, 5) };
        var attributes = A().Set("transA", (long)transA).Set("transB", (long)transB).Set("alpha", 0.7f).Set("beta", 1.3f);
        DerivativeChecker.Check(OpRunner.Create("Gemm", 3, attributes: attributes), [a, b, c]);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(1)]
    public void LayerNormalization(int axis)
    {
        var x = R(2, 3, 6);
        var scaleShape = axis == -1 ? new[] { 6 } : new[] { 3, 6 };
        DerivativeChecker.Check(OpRunner.Create("LayerNormalization", 3, attributes: A().Set("axis", (long)axis)),
                                [x, R(scaleShape), R(scaleShape)], finiteDifferenceTolerance: 2e-3);
    }

    [Fact]
    public void SimplifiedLayerNormalization() =>
        DerivativeChecker.Check(OpRunner.Create("SimplifiedLayerNormalization", 2, domain: OperatorRegistry.MicrosoftDomain, opset: 1),
                                [R(2, 3, 6), R(6)], finiteDifferenceTolerance: 2e-3);

    [Fact]
    public void RmsNormalization() =>
        DerivativeChecker.Check(OpRunner.Create("RMSNormalization", 2, opset: 23), [R(2, 3, 6), R(6)], finiteDifferenceTolerance: 2e-3);

    [Fact]
    public void SkipLayerNormalizationThroughOutputAndSum() =>
        DerivativeChecker.Check(OpRunner.Create("SkipLayerNormalization", 5, outputs: 4, domain: OperatorRegistry.MicrosoftDomain, opset: 1),
                                [R(2, 3, 6), R(3, 6), R(6), R(6), R(6)], finiteDifferenceTolerance: 2e-3);

    [Fact]
    public void SkipSimplifiedLayerNormalization() =>
        DerivativeChecker.Check(OpRunner.Create("SkipSimplifiedLayerNormalization", 4, domain: OperatorRegistry.MicrosoftDomain, opset: 1),
                                [R(2, 3, 6), R(2, 3, 6), R(6), R(6)], finiteDifferenceTolerance: 2e-3);

    [Theory]
    [InlineData("ReduceSum", 18)]
    [InlineData("ReduceMean", 18)]
    [InlineData("ReduceMax", 18)]
    [InlineData("ReduceSum", 13)]
    public void ReduceAxesInput(string op, int opset) =>
        DerivativeChecker.Check(OpRunner.Create(op, 2, attributes: A().Set("keepdims", 0L), opset: opset), [R(2, 3, 4), OpRunner.Longs(-1, 0)]);

    [Theory]
    [InlineData("ReduceMean")]
    [InlineData("ReduceMax")]
    public void ReduceAxesAttribute(string op) =>
        DerivativeChecker.Check(OpRunner.Create(op, 1, attributes: A().Set("axes", new long[] { 1 }), opset: 13), [R(2, 3, 4)]);

    [Fact]
    public void ReduceAll() => DerivativeChecker.Check(OpRunner.Create("ReduceMean", 1, opset: 18), [R(2, 3, 4)]);

    [Theory]
    [InlineData(0L, 0L)]
    [InlineData(1L, 1L)]
    public void CumSum(long exclusive, long reverse) =>
        DerivativeChecker.Check(OpRunner.Create("CumSum", 2, attributes: A().Set("exclusive", exclusive).Set("reverse", reverse)),
                                [R(2, 5, 3), new NdArray<long>([], [1])]);

    [Fact]
    public void Transpose() =>
        DerivativeChecker.Check(OpRunner.Create("Transpose", 1, attributes: A().Set("perm", new long[] { 0, 2, 3, 1 })), [R(2, 3, 2, 4)]);

    [Fact]
    public void Expand() => DerivativeChecker.Check(OpRunner.Create("Expand", 2), [R(3, 1), OpRunner.Longs(2, 3, 4)]);

    [Theory]
    [InlineData(1)]
    [InlineData(-2)]
    public void Slice(long step) =>
        DerivativeChecker.Check(OpRunner.Create("Slice", 5), [R(4, 5, 6), OpRunner.Longs(-1, 1), OpRunner.Longs(-100, 5), OpRunner.Longs(2, 1), OpRunner.Longs(step < 0 ? step : -1, 2)]);

    [Fact]
    public void Concat() =>
        DerivativeChecker.Check(OpRunner.Create("Concat", 3, attributes: A().Set("axis", -2L)), [R(2, 1, 3), R(2, 2, 3), R(2, 3, 3)]);

    [Fact]
    public void Split() =>
        DerivativeChecker.Check(OpRunner.Create("Split", 2, outputs: 2, attributes: A().Set("axis", 1L)), [R(2, 6), OpRunner.Longs(2, 4)]);

    [Fact]
    public void GatherWithRepeatedIndices() =>
        DerivativeChecker.Check(OpRunner.Create("Gather", 2), [R(5, 3), new NdArray<long>([2, 3], [0, 4, 4, -1, 2, 4])]);

    [Fact]
    public void GatherAxis1() =>
        DerivativeChecker.Check(OpRunner.Create("Gather", 2, attributes: A().Set("axis", 1L)), [R(2, 5, 3), OpRunner.Longs(3, 0, 3)]);

    [Fact]
    public void Trilu() => DerivativeChecker.Check(OpRunner.Create("Trilu", 2), [R(2, 4, 5), new NdArray<long>([], [1])]);

    [Fact]
    public void WhereBroadcast()
    {
        var condition = new NdArray<bool>([2, 1, 4], [true, false, true, true, false, false, true, false]);
        DerivativeChecker.Check(OpRunner.Create("Where", 3), [condition, R(3, 4), R(2, 3, 1)]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WhereMaskGradientGoesOnlyToTheSelectedSide(bool fullY)
    {
        // An attention mask: the condition [1, 1, L, L] broadcast over heads, X full, Y a scalar fill or full;
        // L = 5 leaves a tail after the 8-lane blocks. Each gradient element is one float addition, so exact.
        var random = new Random(11);
        int heads = 3, l = 5;
        var condition = new NdArray<bool>([1, 1, l, l], Enumerable.Range(0, l * l).Select(i => i % l <= i / l).ToArray());
        var x = R(1, heads, l, l);
        NdArray<float> y = fullY ? R(1, heads, l, l) : new NdArray<float>([], [-1e9f]);
        var op = OpRunner.Create("Where", 3);
        var outputs = OpRunner.Forward(op, [condition, x, y]);
        var g = OpRunner.Random(random, [1, heads, l, l]);
        var gx = OpRunner.Random(random, x.Shape);
        var gy = OpRunner.Random(random, y.Shape);
        var gx0 = (float[])gx.Data.Clone();
        var gy0 = (float[])gy.Data.Clone();
        op.Vjp(OpRunner.Context, [condition, x, y], outputs, [g], [null, gx, gy]);
        double fill = gy0[0];
        for (int i = 0; i < g.Data.Length; i++)
        {
            bool c = condition.Data[i % (l * l)];
            Assert.Equal(c ? gx0[i] + g.Data[i] : gx0[i], gx.Data[i]);
            if (fullY) Assert.Equal(c ? gy0[i] : gy0[i] + g.Data[i], gy.Data[i]);
            else if (!c) fill += g.Data[i];
        }
        if (!fullY) Assert.Equal(fill, gy.Data[0], 1e-5);
    }

    [Fact]
    public void SplitWritesFreshGradientsWhole()
    {
        // A fresh gradient (OpContext.FreshGradients) holds garbage: the VJP must equal the one added onto zeros,
        // exactly, including a part without a cotangent (its slice becomes zero); along the last axis and an inner one.
        var last = OpRunner.Create("Split", 2, outputs: 3, attributes: A().Set("axis", -1L));
        var inner = OpRunner.Create("Split", 2, outputs: 3, attributes: A().Set("axis", 1L));
        foreach (var (op, inputs, dropped) in new[] { (last, new NdArray?[] { R(2, 7, 12), OpRunner.Longs(4, 3, 5) }, 1), (inner, new NdArray?[] { R(2, 7, 5), OpRunner.Longs(2, 4, 1) }, 2) })
        {
            var outputs = OpRunner.Forward(op, inputs);
            var cotangents = outputs.Select((o, j) => j == dropped ? null : OpRunner.Random(rng, o.Shape)).ToArray();
            var added = new NdArray<float>(inputs[0]!.Shape);
            op.Vjp(OpRunner.Context, inputs, outputs, cotangents, [added, null]);
            var fresh = R(inputs[0]!.Shape);
            var context = new OpContext(OpRunner.Context.Backend) { FreshGradients = 1 };
            op.Vjp(context, inputs, outputs, cotangents, [fresh, null]);
            Assert.Equal(added.Data, fresh.Data);
            if (dropped >= 0) Assert.Contains(added.Data, v => v == 0);
        }
    }

    [Theory]
    [InlineData("Identity", 1)]
    [InlineData("Flatten", 1)]
    [InlineData("Dropout", 1)]
    public void Views(string op, int inputs) => DerivativeChecker.Check(OpRunner.Create(op, inputs), [R(2, 3, 4)]);

    [Fact]
    public void SqueezeAndUnsqueeze()
    {
        DerivativeChecker.Check(OpRunner.Create("Squeeze", 2), [R(2, 1, 3), OpRunner.Longs(1)]);
        DerivativeChecker.Check(OpRunner.Create("Unsqueeze", 2), [R(2, 3), OpRunner.Longs(-1)]);
    }

    [Fact]
    public void CastFloatToFloat() => DerivativeChecker.Check(OpRunner.Create("Cast", 1, attributes: A().Set("to", 1L)), [R(2, 3)]);

    [Fact]
    public void NonDifferentiableOperatorsSaySo()
    {
        foreach (var (op, inputs) in new[] { ("Shape", 1), ("Equal", 2), ("Less", 2), ("Greater", 2), ("Not", 1), ("Range", 3), ("ConstantOfShape", 1) })
        {
            var o = OpRunner.Create(op, inputs);
            for (int i = 0; i < inputs; i++) Assert.False(o.IsDifferentiable(i), $"{op} input {i}");
        }
        Assert.False(OpRunner.Create("Cast", 1, attributes: A().Set("to", 7L)).IsDifferentiable(0));
        Assert.False(OpRunner.Create("Gather", 2).IsDifferentiable(1));
        Assert.False(OpRunner.Create("Where", 3).IsDifferentiable(0));
    }
}

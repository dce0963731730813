using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// Training-mode Dropout: its generator against numpy's, its derivatives against finite differences, how many
/// elements it keeps, and its refusals. Forward values against numpy's are in cases.json (dropout_training_*).
/// </summary>
public sealed class DropoutTests
{
    private static readonly NdArray<bool> Training = new([], [true]);

    private static NdArray<float> Scalar(float value) => new([], [value]);

    [Fact]
    public void MersenneTwisterMatchesNumpysRandomState()
    {
        // np.random.RandomState(5489).randint(0, 2**32, 3, dtype=np.uint64): mt19937ar's reference outputs for its default seed.
        var reference = new MersenneTwister(5489);
        Assert.Equal([3499211612u, 581869302u, 3890346734u], [reference.NextUInt32(), reference.NextUInt32(), reference.NextUInt32()]);
        // np.random.RandomState(0).random_sample(3) and RandomState(2**32 - 1).random_sample(2), printed with repr.
        var zero = new MersenneTwister(0);
        Assert.Equal([0.5488135039273248, 0.7151893663724195, 0.6027633760716439], [zero.NextDouble(), zero.NextDouble(), zero.NextDouble()]);
        var top = new MersenneTwister(uint.MaxValue);
        Assert.Equal([0.0976320289940138, 0.9123828453026218], [top.NextDouble(), top.NextDouble()]);
    }

    [Fact]
    public void TrainingModeDerivativesAreTheMaskScaled()
    {
        var op = OpRunner.Create("Dropout", 3, attributes: new OperatorAttributes().Set("seed", 11L), opset: 13);
        var x = OpRunner.Random(new Random(5), 4, 5, 6);
        DerivativeChecker.Check(op, [x, Scalar(0.4f), Training]);
        Assert.False(op.IsView);
        Assert.False(op.IsDifferentiable(1));
    }

    [Fact]
    public void TrainingModeKeepsAboutOneMinusRatioWithoutASeed()
    {
        // No seed attribute: one is drawn at load. 10⁵ Bernoulli(0.7) draws: the kept fraction's standard deviation is 0.0014.
        var op = OpRunner.Create("Dropout", 3, outputs: 2, opset: 13);
        var x = new NdArray<float>([100_000]);
        x.Span.Fill(2);
        var outputs = OpRunner.Forward(op, x, Scalar(0.3f), Training);
        var y = ((NdArray<float>)outputs[0]).Data;
        var keep = ((NdArray<bool>)outputs[1]).Data;
        Assert.InRange(keep.Count(k => k) / 1e5, 0.7 - 0.0075, 0.7 + 0.0075);
        for (int i = 0; i < y.Length; i++) Assert.Equal(keep[i] ? 2 / 0.7f : 0, y[i], 6);
        // The same node draws the same mask on every run (forward and derivative passes agree).
        Assert.Equal(keep, ((NdArray<bool>)OpRunner.Forward(op, x, Scalar(0.3f), Training)[1]).Data);
    }

    [Fact]
    public void RatioOutsideZeroToOneIsRefused()
    {
        var op = OpRunner.Create("Dropout", 3, opset: 13);
        var e = Assert.Throws<FisherKernelsException>(() => OpRunner.Forward(op, new NdArray<float>([2]), Scalar(1f), Training));
        Assert.StartsWith("node 'n0'", e.Message);
        Assert.Contains("outside [0, 1)", e.Message);
    }
}

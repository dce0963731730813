using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.IO;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// The tangent pass's fast paths against their definitions: Where's masked select (exact), Softmax's row pass
/// (float64, one vs two threads identical) and the tangents shared through x + c (the same J·V, bit for bit,
/// as when the constant carries a zero tangent and the Add runs).
/// </summary>
public sealed class TangentFastPathTests
{
    private static NdArray<float> R(Random random, params int[] shape) => OpRunner.Random(random, shape);

    [Theory]
    [InlineData(true, false)]
    [InlineData(true, true)]
    [InlineData(false, true)]
    public void WhereMaskTangentIsTheSelectedSidesTangent(bool withX, bool withY)
    {
        // An attention mask [1, 1, L, L] broadcast over heads; L = 13 leaves a tail after the 8-lane blocks.
        var random = new Random(5);
        int heads = 3, l = 13;
        var condition = new NdArray<bool>([1, 1, l, l], Enumerable.Range(0, l * l).Select(i => i % l <= i / l).ToArray());
        var x = R(random, 1, heads, l, l);
        var y = R(random, 1, heads, l, l);
        var op = OpRunner.Create("Where", 3);
        var outputs = OpRunner.Forward(op, [condition, x, y]);
        var tx = R(random, x.Shape);
        var ty = R(random, y.Shape);
        var t = R(random, x.Shape); // overwritten
        op.Jvp(OpRunner.Context, [condition, x, y], outputs, [null, withX ? tx : null, withY ? ty : null], [t]);
        for (int i = 0; i < t.Data.Length; i++)
            Assert.Equal(condition.Data[i % (l * l)] ? (withX ? tx.Data[i] : 0) : (withY ? ty.Data[i] : 0), t.Data[i]);
    }

    [Fact]
    public void SoftmaxRowTangentsMatchFloat64()
    {
        // Causal rows (exact zeros in y) and rows enough for the two-thread split.
        var random = new Random(9);
        int rows = 2 * 4 * 96, length = 96;
        var x = R(random, 2, 4, 96, length);
        for (int r = 0; r < rows; r++)
            for (int j = (r % 96) + 1; j < length; j++) x.Data[r * length + j] = float.NegativeInfinity;
        var op = OpRunner.Create("Softmax", 1, attributes: new OperatorAttributes().Set("axis", -1L), opset: 13);
        var y = (NdArray<float>)OpRunner.Forward(op, [x])[0];
        var tx = R(random, x.Shape);
        float[]? oneThread = null;
        foreach (int threads in new[] { 1, 2 })
        {
            var ty = R(random, x.Shape);
            op.Jvp(new OpContext(new CpuBackend(threads)), [x], [y], [tx], [ty]);
            for (int r = 0; r < rows; r++)
            {
                double dot = 0;
                for (int j = 0; j < length; j++) dot += (double)tx.Data[r * length + j] * y.Data[r * length + j];
                for (int j = 0; j < length; j++)
                {
                    int i = r * length + j;
                    double expected = y.Data[i] * (tx.Data[i] - dot);
                    Assert.True(Math.Abs(expected - ty.Data[i]) <= 1e-5 * (1 + Math.Abs(expected)), $"element {i}: {ty.Data[i]} against {expected}");
                }
            }
            oneThread ??= ty.Data;
            Assert.Equal(oneThread, ty.Data);
        }
    }

    [Fact]
    public void AddAndSubOfAConstantPassTheTangentThrough()
    {
        var random = new Random(3);
        var x = R(random, 2, 3);
        var row = R(random, 3);
        var full = R(random, 2, 3);
        int[] shape = [2, 3];
        var add = OpRunner.Create("Add", 2);
        var sub = OpRunner.Create("Sub", 2);
        Assert.Equal(0, add.TangentPassesThrough([x, null], shape));
        Assert.Equal(1, add.TangentPassesThrough([null, x], shape));
        Assert.Equal(-1, add.TangentPassesThrough([x, full], shape)); // both have tangents: the Add runs
        Assert.Equal(-1, add.TangentPassesThrough([row, null], shape)); // broadcast into the output: the tangent must be expanded
        Assert.Equal(0, sub.TangentPassesThrough([x, null], shape));
        Assert.Equal(-1, sub.TangentPassesThrough([null, x], shape)); // c − x: the tangent is negated
        Assert.Equal(-1, OpRunner.Create("Mul", 2).TangentPassesThrough([x, null], shape));
    }

    [Fact]
    public void ModelJvpThroughSharedBiasTangentsIsTheJvpWithZeroBiasDirections()
    {
        // The layer weights only: every bias Add passes its input's tangent through. With zero directions on the
        // biases every Add runs instead (both inputs have tangents), adding exact zeros: the same bits.
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(Plan.ForwardTests.TokensOf("gpt2_tiny")));
        var random = new Random(4);
        var weights = lm.Model.Layers.ToDictionary(l => l.Id, l => R(random, lm.Model.Graph.Initializers[l.Id].Shape));
        var withBiases = new Dictionary<string, NdArray<float>>(weights);
        foreach (var layer in lm.Model.Layers)
            if (layer.Bias is { } bias) withBiases[bias] = new NdArray<float>(lm.Model.Graph.Initializers[bias].Shape);
        Assert.True(withBiases.Count > weights.Count, "the model must have biases");
        var context = new OpContext(new CpuBackend(1));
        Assert.Equal(Derivatives.Jvp(lm, context, tokens, withBiases).Data, Derivatives.Jvp(lm, context, tokens, weights).Data);
    }

    [Theory]
    [InlineData(new[] { 2, 3, 13, 21 }, new long[] { 0, 1, 3, 2 })] // Kᵀ: 8×8 blocks and their edges
    [InlineData(new[] { 16, 24 }, null)] // rank 2, the default (reversed) permutation
    [InlineData(new[] { 2, 8, 16 }, new long[] { 1, 0, 2 })] // not a swap of the last two: the strided copies
    public void TransposeForwardAndTangentMoveEveryElementWhereThePermutationSays(int[] shape, long[]? perm)
    {
        var random = new Random(shape.Sum());
        var attributes = new OperatorAttributes();
        if (perm is not null) attributes.Set("perm", perm);
        var op = OpRunner.Create("Transpose", 1, attributes: attributes);
        var x = R(random, shape);
        var y = (NdArray<float>)OpRunner.Forward(op, [x])[0];
        var tx = R(random, shape);
        var ty = R(random, y.Shape); // overwritten
        op.Jvp(OpRunner.Context, [x], [y], [tx], [ty]);
        int rank = shape.Length;
        var axes = perm?.Select(a => (int)a).ToArray() ?? Enumerable.Range(0, rank).Reverse().ToArray();
        var index = new int[rank];
        for (int i = 0; i < x.Data.Length; i++)
        {
            for (int d = rank - 1, rest = i; d >= 0; d--) { index[d] = rest % shape[d]; rest /= shape[d]; }
            int target = 0;
            for (int d = 0; d < rank; d++) target = target * y.Shape[d] + index[axes[d]];
            Assert.Equal(x.Data[i], y.Data[target]);
            Assert.Equal(tx.Data[i], ty.Data[target]);
        }
    }
}

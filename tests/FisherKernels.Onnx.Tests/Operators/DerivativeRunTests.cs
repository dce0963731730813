using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// The SIMD derivative runs of Div and Pow against the elementwise rule (DA/DB) they replace, on random
/// runs of every operand layout (span or broadcast scalar), lengths off the vector width, and with either
/// gradient or tangent missing; then the whole operators against finite differences with those layouts.
/// </summary>
public sealed class DerivativeRunTests
{
    private const int Length = 37; // not a multiple of any vector width

    public static TheoryData<int, int, bool, bool> Layouts()
    {
        var data = new TheoryData<int, int, bool, bool>();
        foreach (int stepA in new[] { 0, 1 })
            foreach (int stepB in new[] { 0, 1 })
                foreach (bool first in new[] { true, false })
                    foreach (bool second in new[] { true, false })
                        data.Add(stepA, stepB, first, second);
        return data;
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void DivRunsMatchTheElementwiseRule(int stepA, int stepB, bool withA, bool withB)
    {
        var random = new Random(3 + 4 * stepA + 2 * stepB + (withA ? 1 : 0));
        float[] a = Values(random, -1, 1), b = Values(random, 0.5, 1.5);
        Check<DivOp>(random, a, b, stepA, stepB, withA, withB);
    }

    [Theory]
    [InlineData(1f, true)]
    [InlineData(2f, true)]
    [InlineData(3f, true)]
    [InlineData(0.5f, true)]
    [InlineData(2f, false)]
    public void PowRunsWithAConstantExponentMatchTheElementwiseRule(float exponent, bool withBase)
    {
        var random = new Random(5);
        float[] a = Values(random, 0.5, 2), b = Enumerable.Repeat(exponent, Length).ToArray();
        Check<PowOp>(random, a, b, stepA: 1, stepB: 0, withBase, false);
    }

    [Fact]
    public void PowRunsLeaveOtherCasesToTheElementwiseRule()
    {
        float[] a = Values(new Random(6), 0.5, 2), b = Values(new Random(7), 1, 2), y = new float[Length], g = new float[Length];
        Assert.False(PowOp.Vjp(new RunMath.Run(0, 0, 1, 0, 0, Length), a, [1.7f], y, g, new float[Length], null)); // exponent 1.7
        Assert.False(PowOp.Vjp(new RunMath.Run(0, 0, 1, 0, 1, Length), a, b, y, g, new float[Length], null));      // exponent per element
        Assert.False(PowOp.Vjp(new RunMath.Run(0, 0, 1, 0, 0, Length), a, [2f], y, g, null, new float[1]));     // exponent gradient
    }

    [Theory]
    [InlineData(new[] { 2, 3, 17 }, new[] { 2, 3, 1 })]   // normalization: one divisor per row
    [InlineData(new[] { 2, 3, 17 }, new int[0])]          // a constant scale
    [InlineData(new[] { 2, 1, 17 }, new[] { 3, 17 })]     // both broadcast
    [InlineData(new int[0], new[] { 3, 17 })]             // scalar over a span
    public void DivDerivativesWithBroadcasting(int[] a, int[] b)
    {
        var random = new Random(8);
        DerivativeChecker.Check(OpRunner.Create("Div", 2), [OpRunner.Random(random, a), OpRunner.Random(random, 0.5, 1.5, b)]);
    }

    [Theory]
    [InlineData(1f)]
    [InlineData(3f)]
    [InlineData(0.5f)]
    public void PowDerivativesWithAConstantExponent(float exponent) =>
        DerivativeChecker.Check(OpRunner.Create("Pow", 2), [OpRunner.Random(new Random(9), 0.5, 2, 2, 3, 17), new NdArray<float>([], [exponent])]);

    /// <summary>One run of <typeparamref name="TOp"/>: the SIMD VJP and JVP against DA/DB element by element (a step-0 operand's gradient sums the run).</summary>
    private static void Check<TOp>(Random random, float[] a, float[] b, int stepA, int stepB, bool withA, bool withB) where TOp : IBinaryOp
    {
        int offsetA = stepA == 0 ? 5 : 0, offsetB = stepB == 0 ? 7 : 0;
        var run = new RunMath.Run(0, offsetA, stepA, offsetB, stepB, Length);
        var y = new float[Length];
        for (int i = 0; i < Length; i++) y[i] = TOp.Apply(a[offsetA + i * stepA], b[offsetB + i * stepB]);
        float[] g = Values(random, -1, 1), startA = Values(random, -1, 1), startB = Values(random, -1, 1);

        float[]? ga = withA ? (float[])startA.Clone() : null, gb = withB ? (float[])startB.Clone() : null;
        Assert.True(TOp.Vjp(run, a, b, y, g, ga, gb));
        double[] expectedA = startA.Select(v => (double)v).ToArray(), expectedB = startB.Select(v => (double)v).ToArray();
        for (int i = 0; i < Length; i++)
        {
            float ai = a[offsetA + i * stepA], bi = b[offsetB + i * stepB];
            expectedA[offsetA + i * stepA] += (double)g[i] * TOp.DA(ai, bi, y[i]);
            expectedB[offsetB + i * stepB] += (double)g[i] * TOp.DB(ai, bi, y[i]);
        }
        if (ga is not null) AssertClose(expectedA, ga);
        if (gb is not null) AssertClose(expectedB, gb);

        float[]? ta = withA ? Values(random, -1, 1) : null, tb = withB ? Values(random, -1, 1) : null;
        var ty = Values(random, -1, 1); // overwritten
        Assert.True(TOp.Jvp(run, a, b, y, ta, tb, ty));
        var expectedT = new double[Length];
        for (int i = 0; i < Length; i++)
        {
            float ai = a[offsetA + i * stepA], bi = b[offsetB + i * stepB];
            if (ta is not null) expectedT[i] += (double)ta[offsetA + i * stepA] * TOp.DA(ai, bi, y[i]);
            if (tb is not null) expectedT[i] += (double)tb[offsetB + i * stepB] * TOp.DB(ai, bi, y[i]);
        }
        AssertClose(expectedT, ty);
    }

    private static float[] Values(Random random, double low, double high) =>
        Enumerable.Range(0, Length).Select(_ => (float)(low + (high - low) * random.NextDouble())).ToArray();

    private static void AssertClose(double[] expected, float[] actual)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5 * (1 + Math.Abs(expected[i])), $"element {i}: {actual[i]} against {expected[i]}");
    }
}

/// <summary>
/// MatMul by a 2-D B large enough for the packed AVX-512 kernel (two products for the JVP, Bᵀ and Aᵀ by 8×8
/// transposes): forward, VJP (which adds) and JVP (which overwrites) against float64 products, with sizes off the
/// 8-row, 32-column and 8×8 blocks, on one and two threads. Elsewhere the same test covers the backend path.
/// </summary>
public sealed class PackedMatMulDerivativeTests
{
    [Theory]
    [InlineData(new[] { 2, 45, 70 }, 100, 1)]
    [InlineData(new[] { 96, 64 }, 96, 2)]
    [InlineData(new[] { 1, 2, 33, 130 }, 67, 2)]
    public void MatchFloat64Products(int[] aShape, int n, int threads)
    {
        var random = new Random(aShape.Sum() + n);
        int k = aShape[^1], rows = aShape.Aggregate(1, (x, y) => x * y) / k;
        Assert.True(2L * rows * k * n >= 1 << 20, "the case must be large enough for the packed path");
        var a = OpRunner.Random(random, aShape);
        var b = OpRunner.Random(random, k, n);
        var op = OpRunner.Create("MatMul", 2);
        var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(threads));
        var y = (NdArray<float>)OpRunner.Allocate(op, [a, b])[0];
        op.Forward(context, [a, b], [y]);
        AssertClose(Product(a.Data, rows, k, b.Data, n, transposeB: false, null), y.Data);
        var gy = OpRunner.Random(random, y.Shape);

        var ga = OpRunner.Random(random, aShape);
        var gb = OpRunner.Random(random, k, n);
        float[] ga0 = (float[])ga.Data.Clone(), gb0 = (float[])gb.Data.Clone();
        op.Vjp(context, [a, b], [y], [gy], [ga, gb]);
        AssertClose(Product(gy.Data, rows, n, b.Data, k, transposeB: true, ga0), ga.Data); // gY [rows×n]·Bᵀ, B stored [k×n]
        AssertClose(ProductAtB(a.Data, gy.Data, rows, k, n, gb0), gb.Data);

        // Fresh gradients (the backward pass's first write) are overwritten, whatever they held.
        context.FreshGradients = 3;
        op.Vjp(context, [a, b], [y], [gy], [ga, gb]);
        context.FreshGradients = 0;
        AssertClose(Product(gy.Data, rows, n, b.Data, k, transposeB: true, null), ga.Data);
        AssertClose(ProductAtB(a.Data, gy.Data, rows, k, n, new float[k * n]), gb.Data);

        var ta = OpRunner.Random(random, aShape);
        var tb = OpRunner.Random(random, k, n);
        foreach (var (withA, withB) in new[] { (true, true), (true, false), (false, true) })
        {
            var ty = OpRunner.Random(random, y.Shape); // overwritten
            op.Jvp(context, [a, b], [y], [withA ? ta : null, withB ? tb : null], [ty]);
            var expected = new double[rows * n];
            if (withA) expected = Product(ta.Data, rows, k, b.Data, n, transposeB: false, null);
            if (withB) expected = Add(expected, Product(a.Data, rows, k, tb.Data, n, transposeB: false, null));
            AssertClose(expected, ty.Data);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void BatchedProductsMatchFloat64PerBatch(int threads)
    {
        // Attention's shape of product: A [.., M, K] and B [.., K, N] with the same batches, one packed product per batch.
        const int batches = 4, m = 64, k = 72, n = 120;
        var random = new Random(threads);
        var a = OpRunner.Random(random, 2, 2, m, k);
        var b = OpRunner.Random(random, 2, 2, k, n);
        var op = OpRunner.Create("MatMul", 2);
        var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(threads));
        var y = (NdArray<float>)OpRunner.Allocate(op, [a, b])[0];
        op.Forward(context, [a, b], [y]);
        var gy = OpRunner.Random(random, y.Shape);
        var ga = OpRunner.Random(random, a.Shape);
        var gb = OpRunner.Random(random, b.Shape);
        float[] ga0 = (float[])ga.Data.Clone(), gb0 = (float[])gb.Data.Clone();
        op.Vjp(context, [a, b], [y], [gy], [ga, gb]);
        var ta = OpRunner.Random(random, a.Shape);
        var tb = OpRunner.Random(random, b.Shape);
        var ty = OpRunner.Random(random, y.Shape);
        op.Jvp(context, [a, b], [y], [ta, tb], [ty]);
        for (int i = 0; i < batches; i++)
        {
            float[] A(float[] x) => x[(i * m * k)..((i + 1) * m * k)];
            float[] B(float[] x) => x[(i * k * n)..((i + 1) * k * n)];
            float[] Y(float[] x) => x[(i * m * n)..((i + 1) * m * n)];
            AssertClose(Product(A(a.Data), m, k, B(b.Data), n, transposeB: false, null), Y(y.Data));
            AssertClose(Product(Y(gy.Data), m, n, B(b.Data), k, transposeB: true, A(ga0)), A(ga.Data));
            AssertClose(ProductAtB(A(a.Data), Y(gy.Data), m, k, n, B(gb0)), B(gb.Data));
            AssertClose(Add(Product(A(ta.Data), m, k, B(b.Data), n, transposeB: false, null), Product(A(a.Data), m, k, B(tb.Data), n, transposeB: false, null)), Y(ty.Data));
        }
    }

    [Fact]
    public void ZeroBlocksAreSkippedWithoutChangingTheResult()
    {
        // Attention's derivatives under a causal mask, in a score's pass that stops at row 61: P·V with P lower
        // triangular and dO zero after row 61 (dV = Pᵀ·dO: tiles of Pᵀ start late, panels of dO end early), and
        // Q·Kᵀ with dS lower triangular (dQ = dS·K: tiles end early; dK = Qᵀ·dS: panels start late). Sizes off the
        // 8-row tiles and 32-column panels; added and fresh gradients; float64 products; 1 and 2 threads identical.
        const int m = 100, depth = 72;
        var random = new Random(21);
        NdArray<float> Masked(int[] shape, Func<int, int, bool> keep)
        {
            var x = OpRunner.Random(random, shape);
            int rows = shape[^2], cols = shape[^1];
            for (int i = 0; i < x.Data.Length; i++)
                if (!keep(i / cols % rows, i % cols)) x.Data[i] = i % 2 == 0 ? 0f : -0f;
            return x;
        }
        var p = Masked([2, 2, m, m], (r, c) => c <= r);
        var v = OpRunner.Random(random, 2, 2, m, depth);
        var dO = Masked([2, 2, m, depth], (r, c) => r <= 61);
        var q = OpRunner.Random(random, 2, 2, m, depth);
        var kT = OpRunner.Random(random, 2, 2, depth, m);
        var dS = Masked([2, 2, m, m], (r, c) => c <= r && r <= 61);
        foreach (var (a, b, gy) in new[] { (p, v, dO), (q, kT, dS) })
        {
            int k = a.Shape[^1], n = b.Shape[^1];
            float[]? oneThread = null;
            foreach (int threads in new[] { 1, 2 })
                foreach (bool fresh in new[] { false, true })
                {
                    var op = OpRunner.Create("MatMul", 2);
                    var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(threads));
                    var y = (NdArray<float>)OpRunner.Allocate(op, [a, b])[0];
                    op.Forward(context, [a, b], [y]);
                    var ga = OpRunner.Random(new Random(1), a.Shape);
                    var gb = OpRunner.Random(new Random(2), b.Shape);
                    float[] ga0 = (float[])ga.Data.Clone(), gb0 = (float[])gb.Data.Clone();
                    context.FreshGradients = fresh ? 3 : 0;
                    op.Vjp(context, [a, b], [y], [gy], [ga, gb]);
                    context.FreshGradients = 0;
                    for (int i = 0; i < 4; i++)
                    {
                        float[] A(float[] x) => x[(i * m * k)..((i + 1) * m * k)];
                        float[] B(float[] x) => x[(i * k * n)..((i + 1) * k * n)];
                        float[] Y(float[] x) => x[(i * m * n)..((i + 1) * m * n)];
                        AssertClose(Product(Y(gy.Data), m, n, B(b.Data), k, transposeB: true, fresh ? null : A(ga0)), A(ga.Data));
                        AssertClose(ProductAtB(A(a.Data), Y(gy.Data), m, k, n, fresh ? new float[k * n] : B(gb0)), B(gb.Data));
                    }
                    if (!fresh) continue;
                    float[] both = [.. ga.Data, .. gb.Data];
                    if (oneThread is null) oneThread = both;
                    // The packed AVX-512 kernel splits work by panels, the same on any thread count; without it the products are OpenBLAS's, whose split (and rounding) depends on the threads.
                    else if (PackedGemm.IsSupported) Assert.Equal(oneThread, both);
                }
        }
    }

    /// <summary>start + X [rows×inner]·op(B), op(B) [inner×cols] (B stored [cols×inner] when transposed).</summary>
    private static double[] Product(float[] x, int rows, int inner, float[] b, int cols, bool transposeB, float[]? start)
    {
        var result = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double sum = start is null ? 0 : start[i * cols + j];
                for (int p = 0; p < inner; p++) sum += (double)x[i * inner + p] * (transposeB ? b[j * inner + p] : b[p * cols + j]);
                result[i * cols + j] = sum;
            }
        return result;
    }

    /// <summary>start + Aᵀ·gY over the stacked rows ([k×n]).</summary>
    private static double[] ProductAtB(float[] a, float[] gy, int rows, int k, int n, float[] start)
    {
        var result = start.Select(v => (double)v).ToArray();
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < k; i++)
                for (int j = 0; j < n; j++) result[i * n + j] += (double)a[r * k + i] * gy[r * n + j];
        return result;
    }

    private static double[] Add(double[] x, double[] y) => x.Select((v, i) => v + y[i]).ToArray();

    private static void AssertClose(double[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4 * (1 + Math.Abs(expected[i])), $"element {i}: {actual[i]} against {expected[i]}");
    }
}

/// <summary>
/// Softmax's VJP over contiguous rows (attention's): gx (+)= y ⊙ (g − ⟨g, y⟩) against float64, added and fresh
/// (overwritten, whatever the buffer held), rows split over two threads identical to one.
/// </summary>
public sealed class SoftmaxRowGradientTests
{
    [Fact]
    public void MatchFloat64OnOneAndTwoThreads()
    {
        const int length = 130;
        var random = new Random(31);
        var x = OpRunner.Random(random, -4.0, 4.0, 3, 97, length); // 291 rows, above the split threshold
        var op = OpRunner.Create("Softmax", 1);
        var y = (NdArray<float>)OpRunner.Allocate(op, [x])[0];
        op.Forward(OpRunner.Context, [x], [y]);
        var g = OpRunner.Random(random, y.Shape);
        var start = OpRunner.Random(random, y.Shape);

        float[] Gradient(int threads, bool fresh)
        {
            var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(threads)) { FreshGradients = fresh ? 1 : 0 };
            var gx = new NdArray<float>(y.Shape, (float[])start.Data.Clone());
            op.Vjp(context, [x], [y], [g], [gx]);
            return gx.Data;
        }
        foreach (bool fresh in new[] { false, true })
        {
            var one = Gradient(1, fresh);
            Assert.Equal(one, Gradient(2, fresh));
            for (int row = 0; row < y.Data.Length / length; row++)
            {
                double dot = 0;
                for (int k = 0; k < length; k++) dot += (double)g.Data[row * length + k] * y.Data[row * length + k];
                for (int k = 0; k < length; k++)
                {
                    int i = row * length + k;
                    double expected = (fresh ? 0 : start.Data[i]) + y.Data[i] * (g.Data[i] - dot);
                    Assert.True(Math.Abs(expected - one[i]) <= 1e-5 * (1 + Math.Abs(expected)), $"fresh {fresh}, element {i}: {one[i]} against {expected}");
                }
            }
        }
    }
}

/// <summary>
/// Long elementwise derivatives split across threads (ranges of the output) against the same operator on
/// one thread: identical results, including a gradient reduced over a broadcast operand (which must not
/// split) and x·x, whose two input gradients are one buffer.
/// </summary>
public sealed class SplitElementwiseDerivativeTests
{
    private static readonly int[] Shape = [3, 100, 131]; // 39300 elements: above the split threshold, off the 64-element ranges

    public static TheoryData<string, int[], bool> Cases() => new()
    {
        { "Tanh", [], false },
        { "Mul", [], false },          // scalar constant factor: only x's gradient
        { "Mul", Shape, false },       // x · z, both gradients
        { "Add", [131], false },       // bias broadcast: its gradient is a reduction
        { "Div", [3, 100, 1], false }, // a divisor per row, reduced
        { "Pow", [], false },
        { "Mul", Shape, true },        // x · x
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchOneThread(string opType, int[] secondShape, bool square)
    {
        var random = new Random(opType.Length + secondShape.Length);
        bool unary = opType == "Tanh";
        var x = OpRunner.Random(random, 0.5, 1.5, Shape);
        var z = opType == "Pow" ? new NdArray<float>([], [3f]) : OpRunner.Random(random, 0.5, 1.5, secondShape);
        NdArray?[] inputs = unary ? [x] : [x, square ? x : z];
        var op = OpRunner.Create(opType, inputs.Length);
        var one = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(1));
        var two = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(2));
        var y = (NdArray<float>)OpRunner.Allocate(op, inputs)[0];
        op.Forward(one, inputs, [y]);
        var g = OpRunner.Random(random, y.Shape);
        bool secondHasGradient = !unary && opType != "Pow" && !square;

        (float[] X, float[]? Z) Vjp(OpContext context)
        {
            var gx = new NdArray<float>(Shape, Enumerable.Repeat(0.25f, x.Data.Length).ToArray());
            var gz = secondHasGradient ? new NdArray<float>(z.Shape, Enumerable.Repeat(-0.5f, z.Data.Length).ToArray()) : null;
            op.Vjp(context, inputs, [y], [g], unary ? [gx] : [gx, square ? gx : gz]);
            return (gx.Data, gz?.Data);
        }
        var (serialX, serialZ) = Vjp(one);
        var (splitX, splitZ) = Vjp(two);
        Assert.Equal(serialX, splitX);
        Assert.Equal(serialZ, splitZ);

        var tx = OpRunner.Random(random, Shape);
        var tz = secondHasGradient ? OpRunner.Random(random, z.Shape) : null;
        float[] Jvp(OpContext context)
        {
            var ty = OpRunner.Random(new Random(1), y.Shape);
            op.Jvp(context, inputs, [y], unary ? [tx] : [tx, square ? tx : tz], [ty]);
            return ty.Data;
        }
        Assert.Equal(Jvp(one), Jvp(two));
    }
}

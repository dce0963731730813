using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// The packed MatMul JVP, tY = tA·B + A·tB in one kernel pass, against float64 products: B packed per call or the
/// constant weight packed once, whole and narrower last panels, tiles of 8 rows and edge rows, each tangent alone
/// and both, on one and two threads (the same bits: each panel is computed the same way on either).
/// </summary>
public sealed class MatMulTangentTests
{
    [Theory]
    [InlineData(new[] { 3, 40, 70 }, 100)] // a last panel of 4 columns
    [InlineData(new[] { 96, 64 }, 128)] // whole panels and tiles only
    [InlineData(new[] { 1, 8, 260 }, 256)] // one tile of rows, a deep product
    [InlineData(new[] { 2, 9, 257 }, 512)] // rows not a multiple of the 8-row tile
    public void MatchFloat64Products(int[] aShape, int n)
    {
        var random = new Random(aShape.Sum() + n);
        int k = aShape[^1], rows = aShape.Aggregate(1, (x, y) => x * y) / k;
        Assert.True(2L * rows * k * n >= 1 << 20, "the case must be large enough for the packed path");
        var a = OpRunner.Random(random, aShape);
        var b = OpRunner.Random(random, k, n);
        var ta = OpRunner.Random(random, aShape);
        var tb = OpRunner.Random(random, k, n);
        var op = OpRunner.Create("MatMul", 2);
        var y = (NdArray<float>)OpRunner.Allocate(op, [a, b])[0];
        foreach (var (withA, withB) in new[] { (true, true), (true, false), (false, true) })
        {
            var expected = new double[rows * n];
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < n; j++)
                {
                    double sum = 0;
                    for (int p = 0; p < k; p++)
                        sum += (withA ? (double)ta.Data[i * k + p] * b.Data[p * n + j] : 0) + (withB ? (double)a.Data[i * k + p] * tb.Data[p * n + j] : 0);
                    expected[i * n + j] = sum;
                }
            float[]? oneThread = null;
            foreach (int threads in new[] { 1, 2 })
                foreach (int constantInputs in new[] { 0, 2 })
                {
                    var context = new OpContext(new CpuBackend(threads)) { ConstantInputs = constantInputs };
                    var ty = OpRunner.Random(random, y.Shape); // overwritten
                    op.Jvp(context, [a, b], [y], [withA ? ta : null, withB ? tb : null], [ty]);
                    for (int i = 0; i < expected.Length; i++)
                        Assert.True(Math.Abs(expected[i] - ty.Data[i]) <= 1e-4 * (1 + Math.Abs(expected[i])),
                                    $"({withA}, {withB}) threads {threads} constant {constantInputs}: element {i}: {ty.Data[i]} against {expected[i]}");
                    oneThread ??= ty.Data;
                    // The packed AVX-512 kernel splits work by panels, the same on any thread count; without it the products are OpenBLAS's, whose split (and rounding) depends on the threads.
                    if (PackedGemm.IsSupported) Assert.Equal(oneThread, ty.Data);
                }
        }
    }

    [Theory]
    [InlineData(64, 72, 120)] // a last panel of 24 columns
    [InlineData(40, 64, 256)] // whole panels
    public void BatchedProductsMatchFloat64PerBatch(int m, int k, int n)
    {
        // Attention's products: A [2, 2, M, K]·B [2, 2, K, N], one work item per batch and panel.
        const int batches = 4;
        var random = new Random(m + k + n);
        var a = OpRunner.Random(random, 2, 2, m, k);
        var b = OpRunner.Random(random, 2, 2, k, n);
        var ta = OpRunner.Random(random, a.Shape);
        var tb = OpRunner.Random(random, b.Shape);
        var op = OpRunner.Create("MatMul", 2);
        var y = (NdArray<float>)OpRunner.Allocate(op, [a, b])[0];
        foreach (var (withA, withB) in new[] { (true, true), (true, false), (false, true) })
        {
            float[]? oneThread = null;
            foreach (int threads in new[] { 1, 2 })
            {
                var ty = OpRunner.Random(random, y.Shape); // overwritten
                op.Jvp(new OpContext(new CpuBackend(threads)), [a, b], [y], [withA ? ta : null, withB ? tb : null], [ty]);
                for (int batch = 0; batch < batches; batch++)
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++)
                        {
                            double expected = 0;
                            for (int p = 0; p < k; p++)
                            {
                                int ia = (batch * m + i) * k + p, ib = (batch * k + p) * n + j;
                                expected += (withA ? (double)ta.Data[ia] * b.Data[ib] : 0) + (withB ? (double)a.Data[ia] * tb.Data[ib] : 0);
                            }
                            float actual = ty.Data[(batch * m + i) * n + j];
                            Assert.True(Math.Abs(expected - actual) <= 1e-4 * (1 + Math.Abs(expected)), $"({withA}, {withB}) batch {batch} ({i}, {j}): {actual} against {expected}");
                        }
                oneThread ??= ty.Data;
                // The packed AVX-512 kernel splits work by panels, the same on any thread count; without it the products are OpenBLAS's, whose split (and rounding) depends on the threads.
                if (PackedGemm.IsSupported) Assert.Equal(oneThread, ty.Data);
            }
        }
    }
}

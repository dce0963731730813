using FisherKernels.Backends;

namespace FisherKernels.Tests;

public abstract partial class BackendConformance
{
    public static TheoryData<int, int, int, bool, bool> GemmShapes => new()
    {
        { 1, 1, 1, false, false }, { 1, 7, 3, false, true }, { 5, 1, 9, true, false }, { 3, 5, 7, true, true },
        { 17, 33, 9, false, false }, { 64, 48, 96, false, true }, { 31, 65, 1, true, false }, { 2, 130, 70, true, true },
    };

    [Theory, MemberData(nameof(GemmShapes))]
    public void Gemm_matches_float64_reference(int m, int n, int k, bool transA, bool transB)
    {
        var rng = new Random(m * 1000 + n * 10 + k);
        var a = RandomArray(rng, m * k); var b = RandomArray(rng, k * n); var c = RandomArray(rng, m * n);
        var expected = Reference.Gemm(transA, transB, m, n, k, 0.75, a, b, -0.5, c);
        Backend.Gemm(new GemmShape(m, n, k, transA, transB, Alpha: 0.75f, Beta: -0.5f), a, b, c);
        AssertClose(expected, c, k, $"GEMM {m}x{n}x{k} transA={transA} transB={transB}");
    }

    [Fact]
    public void Gemm_large_square_matches_reference()
    {
        int d = LargeDim;
        var rng = new Random(7);
        var a = RandomArray(rng, d * d); var b = RandomArray(rng, d * d); var c = new float[d * d];
        var expected = Reference.Gemm(false, true, d, d, d, 1, a, b, 0, c);
        Backend.Gemm(new GemmShape(d, d, d, TransB: true), a, b, c);
        AssertClose(expected, c, d, $"GEMM {d}³");
    }

    [Fact]
    public void Batched_gemm_broadcasts_a_zero_stride_operand()
    {
        const int batches = 3, m = 4, n = 6, k = 5;
        var rng = new Random(11);
        var a = RandomArray(rng, batches * m * k); var w = RandomArray(rng, k * n); var c = new float[batches * m * n];
        Backend.Gemm(new GemmShape(m, n, k, BatchCount: batches, StrideA: m * k, StrideB: 0, StrideC: m * n), a, w, c);
        for (int batch = 0; batch < batches; batch++)
        {
            var expected = Reference.Gemm(false, false, m, n, k, 1, a.AsSpan(batch * m * k, m * k), w, 0, new float[m * n]);
            AssertClose(expected, c.AsSpan(batch * m * n, m * n), k, $"batch {batch}");
        }
    }

    [Fact]
    public void Gemm_with_empty_inner_dimension_scales_c_by_beta()
    {
        var c = new float[] { 1, 2, 3, 4 };
        Backend.Gemm(new GemmShape(2, 2, 0, Beta: 0.5f), [], [], c);
        Assert.Equal([0.5f, 1f, 1.5f, 2f], c);
    }

    [Fact]
    public void Gemm_rejects_buffers_too_small_for_the_shape()
    {
        var error = Assert.Throws<FisherKernelsException>(() => Backend.Gemm(new GemmShape(4, 4, 4), new float[15], new float[16], new float[16]));
        Assert.Contains("operand A", error.Message);
    }
}

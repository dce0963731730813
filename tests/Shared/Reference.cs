namespace FisherKernels.Tests;

/// <summary>Plain float64 reference implementations: slow, obvious, and the yardstick for every backend.</summary>
public static class Reference
{
    /// <summary>Row-major C = α·op(A)·op(B) + β·C for one batch, in float64.</summary>
    public static double[] Gemm(bool transA, bool transB, int m, int n, int k, double alpha,
                                ReadOnlySpan<float> a, ReadOnlySpan<float> b, double beta, ReadOnlySpan<float> c)
    {
        var result = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++)
                    sum += (double)a[transA ? p * m + i : i * k + p] * b[transB ? j * k + p : p * n + j];
                result[i * n + j] = alpha * sum + (beta == 0 ? 0 : beta * c[i * n + j]);
            }
        return result;
    }
}

using FisherKernels.Backends;

namespace FisherKernels.Tests.Curvature;

/// <summary>
/// A test-only backend: every operation a plain float64 loop, rounded to float32 once at the end.
/// Slow and obvious; it is the yardstick the K-FAC and posterior code is checked against, independent
/// of the optimized kernels (which the conformance suite checks separately).
/// </summary>
public sealed class Float64Backend : IComputeBackend
{
    public string Name => "float64-reference";
    public string Device => "test reference";
    public void Dispose() { }

    public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                 float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false)
    {
        int n = cols + (appendOne ? 1 : 0);
        var sum = new double[n * n];
        var row = new double[n];
        for (int r = 0; r < rows; r++)
        {
            if (!rowMask.IsEmpty && rowMask[r] == 0) continue;
            for (int c = 0; c < cols; c++) row[c] = x[r * cols + c];
            if (appendOne) row[n - 1] = 1;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) sum[i * n + j] += row[i] * row[j];
        }
        for (int k = 0; k < n * n; k++) factor[k] = (float)((beta == 0 ? 0 : (double)beta * factor[k]) + (double)alpha * sum[k]);
    }

    public void Gemm(in GemmShape s, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c)
    {
        for (int batch = 0; batch < s.BatchCount; batch++)
        {
            Span<float> cb = c.Slice((int)(batch * s.StrideC), s.M * s.N);
            double[] r = Reference.Gemm(s.TransA, s.TransB, s.M, s.N, s.K, s.Alpha,
                                        a.Slice((int)(batch * s.StrideA), s.M * s.K), b.Slice((int)(batch * s.StrideB), s.K * s.N), s.Beta, cb);
            for (int i = 0; i < r.Length; i++) cb[i] = (float)r[i];
        }
    }

    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
    {
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = db.IsEmpty ? 0 : db[o];
                for (int i = 0; i < inFeatures; i++)
                    sum += (double)x[r * inFeatures + i] * dw[o * inFeatures + i] + (double)dx[r * inFeatures + i] * w[o * inFeatures + i];
                dy[r * outFeatures + o] = (float)sum;
            }
    }

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => Reference.JacobiEigen(a, n, eigenvalues, eigenvectors);

    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        int a = basis.ADim, g = basis.GDim;
        for (int i = 0; i < count; i++)
        {
            ReadOnlySpan<float> x = xs.Slice(i * g * a, g * a);
            double sum = 0;
            for (int p = 0; p < g; p++)
                for (int q = 0; q < a; q++)
                {
                    double y = 0; // (Q_Gᵀ X Q_A)_pq
                    for (int r = 0; r < g; r++)
                    {
                        double row = 0;
                        for (int c = 0; c < a; c++) row += (double)x[r * a + c] * basis.QA[c * a + q];
                        y += (double)basis.QG[r * g + p] * row;
                    }
                    sum += y * y / (basis.Positions * basis.LambdaG[p] * basis.LambdaA[q] + basis.PriorPrecision);
                }
            output[i] = (float)sum;
        }
    }

    public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                              ReadOnlySpan<float> b, int k, Span<float> output)
    {
        var m = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            m[i * n + i] = d[i];
            for (int j = 0; j < n; j++)
                for (int l = 0; l < r; l++) m[i * n + j] += (double)u[i * r + l] * s[l] * u[j * r + l];
        }
        double[] x = DenseSolve(m, n, b.ToArray().Select(v => (double)v).ToArray(), k);
        for (int i = 0; i < n * k; i++) output[i] = (float)x[i];
    }

    /// <summary>Solves M X = B ([n × n], [n × k]) by Gaussian elimination with partial pivoting, in float64.</summary>
    public static double[] DenseSolve(double[] matrix, int n, double[] rhs, int k)
    {
        double[] m = (double[])matrix.Clone(), x = (double[])rhs.Clone();
        for (int col = 0; col < n; col++)
        {
            int pivot = col;
            for (int i = col + 1; i < n; i++) if (Math.Abs(m[i * n + col]) > Math.Abs(m[pivot * n + col])) pivot = i;
            if (pivot != col)
            {
                for (int j = 0; j < n; j++) (m[col * n + j], m[pivot * n + j]) = (m[pivot * n + j], m[col * n + j]);
                for (int j = 0; j < k; j++) (x[col * k + j], x[pivot * k + j]) = (x[pivot * k + j], x[col * k + j]);
            }
            for (int i = col + 1; i < n; i++)
            {
                double f = m[i * n + col] / m[col * n + col];
                if (f == 0) continue;
                for (int j = col; j < n; j++) m[i * n + j] -= f * m[col * n + j];
                for (int j = 0; j < k; j++) x[i * k + j] -= f * x[col * k + j];
            }
        }
        for (int i = n - 1; i >= 0; i--)
            for (int j = 0; j < k; j++)
            {
                double sum = x[i * k + j];
                for (int l = i + 1; l < n; l++) sum -= m[i * n + l] * x[l * k + j];
                x[i * k + j] = sum / m[i * n + i];
            }
        return x;
    }
}

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

    // ---- Kernel family 2 (inversion): Jacobi eigenvalues, dense Cholesky solves of explicitly built precisions ----

    /// <summary>Ascending eigenvalues of a symmetric [n × n] matrix by cyclic Jacobi rotations (float64).</summary>
    public static double[] JacobiEigenvalues(ReadOnlySpan<double> symmetric, int n)
    {
        var values = new double[n];
        JacobiEigen(symmetric, n, values, new double[n * n]);
        return values;
    }

    /// <summary>
    /// Cyclic Jacobi rotations until the off-diagonal mass vanishes: ascending eigenvalues, and the eigenvectors
    /// as the columns of the row-major [n × n] <paramref name="vectors"/>.
    /// </summary>
    public static void JacobiEigen(ReadOnlySpan<double> symmetric, int n, Span<double> values, Span<double> vectors)
    {
        double[] m = symmetric[..(n * n)].ToArray(), v = new double[n * n];
        for (int i = 0; i < n; i++) v[i * n + i] = 1;
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0, diagonal = 0;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    if (i != j) off += m[i * n + j] * m[i * n + j]; else diagonal += m[i * n + i] * m[i * n + i];
            if (off <= 1e-30 * diagonal || off == 0) break;
            for (int p = 0; p < n; p++)
                for (int q = p + 1; q < n; q++)
                {
                    double apq = m[p * n + q];
                    if (apq == 0) continue;
                    double theta = (m[q * n + q] - m[p * n + p]) / (2 * apq);
                    double t = Math.Sign(theta == 0 ? 1 : theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++) // columns p, q of the matrix and of the accumulated rotations
                    {
                        double mkp = m[k * n + p], mkq = m[k * n + q];
                        m[k * n + p] = c * mkp - s * mkq; m[k * n + q] = s * mkp + c * mkq;
                        double vkp = v[k * n + p], vkq = v[k * n + q];
                        v[k * n + p] = c * vkp - s * vkq; v[k * n + q] = s * vkp + c * vkq;
                    }
                    for (int k = 0; k < n; k++) // rows p, q
                    {
                        double mpk = m[p * n + k], mqk = m[q * n + k];
                        m[p * n + k] = c * mpk - s * mqk; m[q * n + k] = s * mpk + c * mqk;
                    }
                }
        }
        int[] order = Enumerable.Range(0, n).OrderBy(i => m[i * n + i]).ToArray();
        for (int j = 0; j < n; j++)
        {
            values[j] = m[order[j] * n + order[j]];
            for (int k = 0; k < n; k++) vectors[k * n + j] = v[k * n + order[j]];
        }
    }

    /// <summary>Solves P·X = B for a symmetric positive definite [n × n] P and row-major [n × k] B by a textbook dense Cholesky.</summary>
    public static double[] CholeskySolve(ReadOnlySpan<double> p, int n, ReadOnlySpan<double> b, int k)
    {
        var l = new double[n * n];
        for (int j = 0; j < n; j++)
        {
            double diagonal = p[j * n + j];
            for (int q = 0; q < j; q++) diagonal -= l[j * n + q] * l[j * n + q];
            if (!(diagonal > 0)) throw new InvalidOperationException("reference Cholesky: matrix is not positive definite");
            l[j * n + j] = Math.Sqrt(diagonal);
            for (int i = j + 1; i < n; i++)
            {
                double sum = p[i * n + j];
                for (int q = 0; q < j; q++) sum -= l[i * n + q] * l[j * n + q];
                l[i * n + j] = sum / l[j * n + j];
            }
        }
        var x = b.ToArray();
        for (int c = 0; c < k; c++)
        {
            for (int i = 0; i < n; i++)
            {
                double sum = x[i * k + c];
                for (int q = 0; q < i; q++) sum -= l[i * n + q] * x[q * k + c];
                x[i * k + c] = sum / l[i * n + i];
            }
            for (int i = n - 1; i >= 0; i--)
            {
                double sum = x[i * k + c];
                for (int q = i + 1; q < n; q++) sum -= l[q * n + i] * x[q * k + c];
                x[i * k + c] = sum / l[i * n + i];
            }
        }
        return x;
    }

    /// <summary>
    /// vec(X)ᵀ (M·A⊗G + τ·I)⁻¹ vec(X) for X [g × a], with the Kronecker precision built explicitly
    /// (column-stacking vec: entry X[j, c] sits at c·g + j) and solved densely.
    /// </summary>
    public static double KronQuadratic(ReadOnlySpan<float> aFactor, int a, ReadOnlySpan<float> gFactor, int g,
                                       double positions, double priorPrecision, ReadOnlySpan<float> x)
    {
        int size = a * g;
        double[] precision = KronPrecision(aFactor, a, gFactor, g, positions, priorPrecision);
        var vec = new double[size];
        for (int j = 0; j < g; j++)
            for (int c = 0; c < a; c++) vec[c * g + j] = x[j * a + c];
        var solved = CholeskySolve(precision, size, vec, 1);
        double quadratic = 0;
        for (int i = 0; i < size; i++) quadratic += vec[i] * solved[i];
        return quadratic;
    }

    /// <summary>M·A⊗G + τ·I as a dense [a·g × a·g] matrix, for the column-stacking vec (entry X[j, c] of X [g × a] at c·g + j).</summary>
    public static double[] KronPrecision(ReadOnlySpan<float> aFactor, int a, ReadOnlySpan<float> gFactor, int g, double positions, double priorPrecision)
    {
        int size = a * g;
        var precision = new double[size * size];
        for (int c1 = 0; c1 < a; c1++)
            for (int j1 = 0; j1 < g; j1++)
                for (int c2 = 0; c2 < a; c2++)
                    for (int j2 = 0; j2 < g; j2++)
                        precision[(c1 * g + j1) * size + c2 * g + j2] =
                            positions * aFactor[c1 * a + c2] * gFactor[j1 * g + j2] + (c1 == c2 && j1 == j2 ? priorPrecision : 0);
        return precision;
    }

    /// <summary>(diag(d) + U diag(s) Uᵀ)⁻¹ B with the n × n matrix built explicitly and solved densely; B and the result [n × k].</summary>
    public static double[] WoodburyDense(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                                         ReadOnlySpan<float> b, int k)
    {
        var p = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = i == j ? d[i] : 0;
                for (int q = 0; q < r; q++) sum += (double)u[i * r + q] * s[q] * u[j * r + q];
                p[i * n + j] = sum;
            }
        var rhs = new double[n * k];
        for (int i = 0; i < rhs.Length; i++) rhs[i] = b[i];
        return CholeskySolve(p, n, rhs, k);
    }

    /// <summary>Q·diag(spectrum)·Qᵀ, exactly symmetric, with Q (returned too) orthogonal from Gram–Schmidt of random columns: a matrix whose eigenpairs are known.</summary>
    public static (double[] A, double[] Q) WithSpectrum(Random rng, double[] spectrum)
    {
        int n = spectrum.Length;
        var q = new double[n * n];
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < n; i++) q[i * n + j] = rng.NextDouble() * 2 - 1;
            for (int pass = 0; pass < 2; pass++)
                for (int p = 0; p < j; p++)
                {
                    double dot = 0;
                    for (int i = 0; i < n; i++) dot += q[i * n + j] * q[i * n + p];
                    for (int i = 0; i < n; i++) q[i * n + j] -= dot * q[i * n + p];
                }
            double norm = 0;
            for (int i = 0; i < n; i++) norm += q[i * n + j] * q[i * n + j];
            for (int i = 0; i < n; i++) q[i * n + j] /= Math.Sqrt(norm);
        }
        var a = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = 0;
                for (int p = 0; p < n; p++) sum += q[i * n + p] * spectrum[p] * q[j * n + p];
                a[i * n + j] = a[j * n + i] = sum;
            }
        return (a, q);
    }

    /// <summary>F ← β·F + α·X̃ᵀX̃ over the rows whose mask byte is non-zero (all rows for an empty mask), in float64.</summary>
    public static double[] AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                            double alpha, double beta, ReadOnlySpan<float> factor, ReadOnlySpan<byte> rowMask)
    {
        int n = cols + (appendOne ? 1 : 0);
        var result = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int r = 0; r < rows; r++)
                {
                    if (!rowMask.IsEmpty && rowMask[r] == 0) continue;
                    double xi = i == cols ? 1 : x[r * cols + i], xj = j == cols ? 1 : x[r * cols + j];
                    sum += xi * xj;
                }
                result[i * n + j] = alpha * sum + (beta == 0 ? 0 : beta * factor[i * n + j]);
            }
        return result;
    }

    /// <summary>dy = x·dWᵀ + dx·Wᵀ + db (db may be empty), in float64.</summary>
    public static double[] LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                                     ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures)
    {
        var dy = new double[rows * outFeatures];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = db.IsEmpty ? 0 : db[o];
                for (int i = 0; i < inFeatures; i++)
                    sum += (double)x[r * inFeatures + i] * dw[o * inFeatures + i] + (double)dx[r * inFeatures + i] * w[o * inFeatures + i];
                dy[r * outFeatures + o] = sum;
            }
        return dy;
    }

    /// <summary>softmax(z) in float64, shifted by the maximum.</summary>
    public static double[] Softmax(ReadOnlySpan<float> z)
    {
        double max = double.NegativeInfinity;
        foreach (float v in z) max = Math.Max(max, v);
        double[] e = new double[z.Length];
        for (int i = 0; i < z.Length; i++) e[i] = Math.Exp(z[i] - max);
        double s = e.Sum();
        return e.Select(v => v / s).ToArray();
    }
}

using FisherKernels.Backends;

namespace FisherKernels.Tests;

/// <summary>
/// Kernel family 2: symmetric eigendecomposition (against Jacobi and known spectra), the damped Kronecker
/// quadratic form (against a dense Cholesky solve of the explicitly built M·A⊗G + τ·I) and the Woodbury
/// apply (against a dense solve of D + U S Uᵀ), on shapes 1, odd, large-ish, ill-conditioned, with τ edge
/// cases and refusals.
/// </summary>
public abstract partial class BackendConformance
{
    /// <summary>Float64 eigensolvers: residual and orthogonality within this many ε·n·‖A‖.</summary>
    private const double EigenTolerance = 1e-13;

    /// <summary>Float32 quadratic forms and Woodbury results vs float64 references (SPEC §7 asks 1e-3 of epistemic scores).</summary>
    private const double InversionTolerance = 1e-4;

    [Theory]
    [InlineData(1)] [InlineData(2)] [InlineData(7)] [InlineData(33)] [InlineData(64)]
    public void SymmetricEigen_matches_Jacobi_reference(int n)
    {
        var a = RandomSymmetric(new Random(100 + n), n);
        var (values, vectors) = Eigen(a, n);
        var expected = Reference.JacobiEigenvalues(a, n);
        double norm = MaxAbs(expected);
        for (int i = 0; i < n; i++)
            Assert.True(Math.Abs(values[i] - expected[i]) <= EigenTolerance * n * norm * 10,
                $"eigenvalue {i} of {n}: {values[i]} vs Jacobi {expected[i]}");
        AssertEigenpairs(a, n, values, vectors, $"random symmetric {n}");
    }

    [Fact]
    public void SymmetricEigen_large_is_an_orthonormal_decomposition()
    {
        int n = LargeDim;
        var a = RandomSymmetric(new Random(5), n);
        var (values, vectors) = Eigen(a, n);
        AssertEigenpairs(a, n, values, vectors, $"random symmetric {n}");
        double trace = 0, sum = 0;
        for (int i = 0; i < n; i++) { trace += a[i * n + i]; sum += values[i]; }
        Assert.True(Math.Abs(trace - sum) <= 1e-10 * n, $"Σλ {sum} vs trace {trace}");
    }

    [Fact]
    public void SymmetricEigen_recovers_an_ill_conditioned_spectrum_with_repeats()
    {
        const int n = 40;
        var spectrum = new double[n];
        for (int i = 0; i < n; i++) spectrum[i] = i < 4 ? 0 : Math.Pow(10, -12 + 12.0 * (i / 3 * 3) / (n - 1)); // zeros, then triples spanning 1e-12..1
        var a = WithSpectrum(new Random(9), spectrum);
        var (values, vectors) = Eigen(a, n);
        var expected = (double[])spectrum.Clone();
        Array.Sort(expected);
        for (int i = 0; i < n; i++)
            Assert.True(Math.Abs(values[i] - expected[i]) <= 1e-13 * n, $"eigenvalue {i}: {values[i]} vs {expected[i]}");
        AssertEigenpairs(a, n, values, vectors, "ill-conditioned");
    }

    [Fact]
    public void SymmetricEigen_refuses_non_finite_input_and_wrong_sizes()
    {
        var a = RandomSymmetric(new Random(1), 3);
        a[4] = double.NaN;
        var error = Assert.Throws<FisherKernelsException>(() => Backend.SymmetricEigen(a, 3, new double[3], new double[9]));
        Assert.Contains("non-finite", error.Message);
        error = Assert.Throws<FisherKernelsException>(() => Backend.SymmetricEigen(new double[9], 3, new double[2], new double[9]));
        Assert.Contains("eigenvalue", error.Message);
    }

    public static TheoryData<int, int, int, int, double> KronShapes => new()
    {
        // g, a, count, rows of data behind each factor (fewer rows than columns ⇒ singular factor), τ
        { 1, 1, 1, 4, 1.0 }, { 1, 5, 3, 9, 0.5 }, { 7, 3, 2, 2, 1.0 }, { 5, 8, 4, 20, 0.01 },
        { 13, 17, 3, 6, 2.0 }, { 16, 21, 2, 50, 0.1 },
    };

    [Theory, MemberData(nameof(KronShapes))]
    public void KronQuadratic_matches_dense_Kronecker_solve(int g, int a, int count, int rows, double tau)
    {
        var rng = new Random(g * 100 + a);
        var aFactor = SampleFactor(rng, rows, a);
        var gFactor = SampleFactor(rng, rows, g);
        AssertKronQuadratic(rng, aFactor, a, gFactor, g, count, positions: 37, tau, InversionTolerance, $"g {g} a {a}");
    }

    [Fact]
    public void KronQuadratic_with_ill_conditioned_factors_matches_dense_solve()
    {
        const int g = 9, a = 12;
        var rng = new Random(3);
        // spectra as wide as float32 entries can carry (n·ε₃₂ relative); M·λ_G·λ_A + τ spans 2e-6..1e4
        var aFactor = ToFloat(WithSpectrum(rng, Geometric(a, 1e-5, 1)));
        var gFactor = ToFloat(WithSpectrum(rng, Geometric(g, 1e-4, 10)));
        AssertKronQuadratic(rng, aFactor, a, gFactor, g, 3, positions: 1000, 1e-6, 1e-3, "ill-conditioned");
    }

    [Theory]
    [InlineData(0.0)] // no prior: positive definite factors carry it alone
    [InlineData(1e-9)]
    [InlineData(1e8)] // prior dominates: ≈ ‖X‖²/τ
    public void KronQuadratic_handles_prior_precision_edge_cases(double tau)
    {
        const int g = 6, a = 4;
        var rng = new Random(21);
        var aFactor = ToFloat(WithSpectrum(rng, Geometric(a, 0.1, 2)));
        var gFactor = ToFloat(WithSpectrum(rng, Geometric(g, 0.05, 1)));
        AssertKronQuadratic(rng, aFactor, a, gFactor, g, 2, positions: 12, tau, InversionTolerance, $"τ {tau}");
    }

    [Fact]
    public void KronQuadratic_without_positions_is_squared_norm_over_tau_at_large_size()
    {
        int g = LargeDim, a = LargeDim / 2 + 1;
        var rng = new Random(8);
        var basis = KronEigenbasis.Create(Backend, SampleFactor(rng, 30, a), a, SampleFactor(rng, 30, g), g, positions: 0, priorPrecision: 4);
        var xs = RandomArray(rng, 2L * g * a);
        var output = new float[2];
        Backend.KronQuadratic(basis, xs, 2, output);
        for (int i = 0; i < 2; i++)
        {
            double squared = 0;
            for (long e = 0; e < (long)g * a; e++) squared += (double)xs[i * g * a + e] * xs[i * g * a + e];
            AssertRelative(squared / 4, output[i], InversionTolerance, $"M = 0, X {i}");
        }
    }

    [Fact]
    public void KronQuadratic_refuses_bad_precisions_and_non_finite_input()
    {
        var rng = new Random(2);
        var singular = SampleFactor(rng, 1, 3); // rank 1
        var full = ToFloat(WithSpectrum(rng, [1, 2, 3]));
        Assert.Contains("singular", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, singular, 3, full, 3, 10, 0)).Message);
        Assert.Contains("prior-precision", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, full, 3, full, 3, 10, -1)).Message);
        Assert.Contains("prior-precision", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, full, 3, full, 3, 10, double.NaN)).Message);
        Assert.Contains("singular", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, full, 3, full, 3, 0, 0)).Message);
        var indefinite = ToFloat(WithSpectrum(rng, [-1, 2, 3]));
        Assert.Contains("factor A is not positive semi-definite", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, indefinite, 3, full, 3, 10, 1)).Message);
        var nan = (float[])full.Clone();
        nan[1] = float.NaN;
        Assert.Contains("factor G", Assert.Throws<FisherKernelsException>(() => KronEigenbasis.Create(Backend, full, 3, nan, 3, 10, 1)).Message);

        var basis = KronEigenbasis.Create(Backend, full, 3, full, 3, 10, 1);
        var xs = RandomArray(rng, 18);
        xs[11] = float.PositiveInfinity;
        var error = Assert.Throws<FisherKernelsException>(() => Backend.KronQuadratic(basis, xs, 2, new float[2]));
        Assert.Contains("non-finite", error.Message);
        Assert.Contains("element 11", error.Message);
        Assert.Throws<FisherKernelsException>(() => Backend.KronQuadratic(basis, new float[17], 2, new float[2]));
    }

    public static TheoryData<int, int, int> WoodburyShapes => new()
    {
        // n, r, k
        { 1, 1, 1 }, { 7, 3, 2 }, { 20, 0, 3 }, { 16, 16, 4 }, { 50, 7, 1 }, { 33, 5, 9 },
    };

    [Theory, MemberData(nameof(WoodburyShapes))]
    public void WoodburyApply_matches_dense_solve(int n, int r, int k)
    {
        var rng = new Random(n * 31 + r * 7 + k);
        var d = RandomArray(rng, n, 0.75f);
        for (int i = 0; i < n; i++) d[i] += 1.25f; // [0.5, 2]
        var s = RandomArray(rng, r, 1.5f);
        for (int j = 0; j < r; j++) s[j] = j == 0 ? 0 : s[j] + 1.5f; // [0, 3], one direction switched off
        AssertWoodbury(d, RandomArray(rng, (long)n * r), s, n, r, RandomArray(rng, (long)n * k), k, InversionTolerance, $"n {n} r {r} k {k}");
    }

    [Fact]
    public void WoodburyApply_large_matches_dense_solve()
    {
        int n = LargeDim, r = 32, k = 5;
        var rng = new Random(44);
        var d = RandomArray(rng, n, 0.1f);
        for (int i = 0; i < n; i++) d[i] += 1;
        var s = RandomArray(rng, r, 0.5f);
        for (int j = 0; j < r; j++) s[j] += 1;
        AssertWoodbury(d, RandomArray(rng, (long)n * r), s, n, r, RandomArray(rng, (long)n * k), k, InversionTolerance, $"n {n} r {r}");
    }

    [Fact]
    public void WoodburyApply_stays_accurate_when_ill_conditioned()
    {
        const int n = 60, r = 6, k = 3;
        var rng = new Random(6);
        var d = new float[n];
        for (int i = 0; i < n; i++) d[i] = (float)Math.Pow(10, -6 + 6.0 * i / (n - 1)); // 1e-6..1
        var s = new float[r];
        for (int j = 0; j < r; j++) s[j] = (float)Math.Pow(10, j); // 1..1e5
        AssertWoodbury(d, RandomArray(rng, n * r), s, n, r, RandomArray(rng, n * k), k, 1e-3, "ill-conditioned");
    }

    [Fact]
    public void WoodburyApply_refuses_invalid_input()
    {
        float[] d = [1, 2, 3], u = [1, 0, 0, 1, 1, 1], s = [1, 2], b = [1, 2, 3];
        var output = new float[3];
        string Refusal(float[] dd, float[] ss, float[] bb) =>
            Assert.Throws<FisherKernelsException>(() => Backend.WoodburyApply(dd, u, ss, 3, 2, bb, 1, output)).Message;
        Assert.Contains("d[1] = 0", Refusal([1, 0, 3], s, b));
        Assert.Contains("s[0] = -1", Refusal(d, [-1, 2], b));
        Assert.Contains("B has a non-finite value NaN at element 2", Refusal(d, s, [1, 2, float.NaN]));
        Assert.Contains("U needs 6", Assert.Throws<FisherKernelsException>(() => Backend.WoodburyApply(d, new float[5], s, 3, 2, b, 1, output)).Message);
    }

    private (double[] Values, double[] Vectors) Eigen(double[] a, int n)
    {
        var values = new double[n];
        var vectors = new double[n * n];
        Backend.SymmetricEigen(a, n, values, vectors);
        return (values, vectors);
    }

    /// <summary>Ascending values, ‖A·v − λ·v‖ small for each column v, and VᵀV = I, all in float64.</summary>
    private static void AssertEigenpairs(double[] a, int n, double[] values, double[] vectors, string what)
    {
        double norm = Math.Max(MaxAbs(values), 1e-300);
        for (int i = 1; i < n; i++) Assert.True(values[i - 1] <= values[i], $"{what}: eigenvalues not ascending at {i}");
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < n; i++)
            {
                double av = 0;
                for (int p = 0; p < n; p++) av += a[i * n + p] * vectors[p * n + j];
                double residual = Math.Abs(av - values[j] * vectors[i * n + j]);
                if (!(residual <= EigenTolerance * n * norm * 100)) Assert.Fail($"{what}: (A·v − λ·v)[{i}] = {residual:E3} for eigenpair {j}");
            }
            for (int q = 0; q <= j; q++)
            {
                double dot = 0;
                for (int p = 0; p < n; p++) dot += vectors[p * n + j] * vectors[p * n + q];
                if (!(Math.Abs(dot - (q == j ? 1 : 0)) <= EigenTolerance * n * 100)) Assert.Fail($"{what}: vᵀv of eigenvectors {j}, {q} is {dot}");
            }
        }
    }

    private void AssertKronQuadratic(Random rng, float[] aFactor, int a, float[] gFactor, int g, int count,
                                     double positions, double tau, double tolerance, string what)
    {
        var basis = KronEigenbasis.Create(Backend, aFactor, a, gFactor, g, positions, tau);
        var xs = RandomArray(rng, (long)count * g * a);
        var output = new float[count];
        Backend.KronQuadratic(basis, xs, count, output);
        for (int i = 0; i < count; i++)
        {
            double expected = Reference.KronQuadratic(aFactor, a, gFactor, g, positions, tau, xs.AsSpan(i * g * a, g * a));
            AssertRelative(expected, output[i], tolerance, $"{what}, X {i}");
        }
    }

    private void AssertWoodbury(float[] d, float[] u, float[] s, int n, int r, float[] b, int k, double tolerance, string what)
    {
        var output = new float[n * k];
        Backend.WoodburyApply(d, u, s, n, r, b, k, output);
        var expected = Reference.WoodburyDense(d, u, s, n, r, b, k);
        double difference = 0, reference = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            difference += (output[i] - expected[i]) * (output[i] - expected[i]);
            reference += expected[i] * expected[i];
        }
        Assert.True(Math.Sqrt(difference) <= tolerance * Math.Sqrt(reference),
            $"Woodbury {what}: ‖Δ‖ / ‖ref‖ = {Math.Sqrt(difference / reference):E3} > {tolerance:E1}");
    }

    private static void AssertRelative(double expected, double actual, double tolerance, string what) =>
        Assert.True(Math.Abs(actual - expected) <= tolerance * Math.Abs(expected),
            $"{what}: {actual} vs reference {expected} (relative error {Math.Abs(actual - expected) / Math.Abs(expected):E3} > {tolerance:E1})");

    private static double MaxAbs(double[] values)
    {
        double max = 0;
        foreach (double v in values) max = Math.Max(max, Math.Abs(v));
        return max;
    }

    private static double[] RandomSymmetric(Random rng, int n)
    {
        var a = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = rng.NextDouble() * 2 - 1;
        return a;
    }

    /// <summary>A factor the way K-FAC builds one: the mean outer product of <paramref name="rows"/> random rows (singular when rows &lt; n).</summary>
    private static float[] SampleFactor(Random rng, int rows, int n)
    {
        var x = RandomArray(rng, (long)rows * n);
        var f = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int m = 0; m < rows; m++) sum += (double)x[m * n + i] * x[m * n + j];
                f[i * n + j] = (float)(sum / rows);
            }
        return f;
    }

    private static double[] WithSpectrum(Random rng, double[] spectrum) => Reference.WithSpectrum(rng, spectrum).A;

    private static double[] Geometric(int n, double smallest, double largest)
    {
        var values = new double[n];
        for (int i = 0; i < n; i++) values[i] = smallest * Math.Pow(largest / smallest, n == 1 ? 1 : (double)i / (n - 1));
        return values;
    }

    private static float[] ToFloat(double[] values) => Array.ConvertAll(values, v => (float)v);
}

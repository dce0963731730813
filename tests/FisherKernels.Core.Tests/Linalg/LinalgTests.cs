using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Linalg;

namespace FisherKernels.Tests.Linalg;

/// <summary>Cholesky (native and managed) against the reference dense solve; TopEigen against known spectra.</summary>
public sealed class LinalgTests
{
    [Theory]
    [InlineData(1, true)] [InlineData(1, false)] [InlineData(9, true)] [InlineData(9, false)] [InlineData(70, true)] [InlineData(70, false)]
    public void Cholesky_solve_matches_reference(int n, bool useNative)
    {
        var rng = new Random(n);
        var p = RandomSpd(rng, n);
        const int k = 3;
        var b = new double[n * k];
        for (int i = 0; i < b.Length; i++) b[i] = rng.NextDouble() - 0.5;
        var expected = Reference.CholeskySolve(p, n, b, k);

        var factor = (double[])p.Clone();
        Assert.True(Cholesky.TryFactor(factor, n, useNative));
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) Assert.Equal(0, factor[i * n + j]);
        var x = (double[])b.Clone();
        Cholesky.Solve(factor, n, x, k);
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - expected[i]) <= 1e-10 * (1 + Math.Abs(expected[i])), $"x[{i}] = {x[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData(true)] [InlineData(false)]
    public void Cholesky_reports_an_indefinite_matrix(bool useNative)
    {
        double[] indefinite = [1, 2, 2, 1]; // eigenvalues 3 and −1
        Assert.False(Cholesky.TryFactor(indefinite, 2, useNative));
    }

    [Theory]
    [InlineData(true)] [InlineData(false)]
    public void TopEigen_finds_the_largest_eigenpairs_of_a_known_spectrum(bool useNative)
    {
        const int n = 120, r = 8;
        using var backend = new CpuBackend(useNativeBlas: useNative);
        var rng = new Random(12);
        var spectrum = new double[n];
        for (int i = 0; i < n; i++) spectrum[i] = Math.Pow(0.8, i); // decaying, gap 0.8 per step
        var (a, q) = Reference.WithSpectrum(rng, spectrum);
        var values = new float[r];
        var vectors = new float[n * r];
        TopEigen.Compute(backend, Array.ConvertAll(a, v => (float)v), n, r, values, vectors);
        for (int t = 0; t < r; t++)
        {
            Assert.True(Math.Abs(values[t] - spectrum[t]) <= 1e-4 * spectrum[0], $"eigenvalue {t}: {values[t]} vs {spectrum[t]}");
            double alignment = 0;
            for (int i = 0; i < n; i++) alignment += vectors[i * r + t] * q[i * n + t];
            Assert.True(Math.Abs(Math.Abs(alignment) - 1) <= 1e-3, $"eigenvector {t}: |⟨u, q⟩| = {Math.Abs(alignment)}");
        }
    }

    /// <summary>
    /// OpenBLAS's thread count is process-wide and dsyevd's bits depend on it: an eigendecomposition must give the same
    /// bits while another backend in the process runs two-thread GEMMs (the C ABI serves two engines at once; this
    /// failed before native calls were gated by thread count).
    /// </summary>
    [Fact]
    public void Eigendecomposition_bits_do_not_depend_on_another_backends_threads()
    {
        if (!FisherKernels.Native.OpenBlasLibrary.IsAvailable) return;
        const int n = 400;
        var a = RandomSpd(new Random(3), n);
        var expectedValues = new double[n];
        var expectedVectors = new double[n * n];
        using var single = new CpuBackend(threads: 1);
        single.SymmetricEigen(a, n, expectedValues, expectedVectors);

        using var two = new CpuBackend(threads: 2);
        var x = new float[256 * 256];
        for (int i = 0; i < x.Length; i++) x[i] = i % 7 - 3;
        var y = new float[x.Length];
        bool stop = false;
        var noise = new Thread(() =>
        {
            while (!Volatile.Read(ref stop)) two.Gemm(new GemmShape(256, 256, 256), x, x, y);
        });
        noise.Start();
        try
        {
            for (int round = 0; round < 4; round++)
            {
                var values = new double[n];
                var vectors = new double[n * n];
                two.SymmetricEigen(a, n, values, vectors);
                Assert.Equal(expectedValues, values);
                Assert.Equal(expectedVectors, vectors);
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            noise.Join();
        }
    }

    [Fact]
    public void TopEigen_is_deterministic_and_handles_rank_below_the_subspace()
    {
        const int n = 30, r = 5;
        using var backend = new CpuBackend();
        var spectrum = new double[n];
        spectrum[0] = 3; spectrum[1] = 2; // rank 2: the start block collapses onto two directions
        var a = Array.ConvertAll(Reference.WithSpectrum(new Random(4), spectrum).A, v => (float)v);
        var first = (Values: new float[r], Vectors: new float[n * r]);
        var second = (Values: new float[r], Vectors: new float[n * r]);
        TopEigen.Compute(backend, a, n, r, first.Values, first.Vectors, seed: 7);
        TopEigen.Compute(backend, a, n, r, second.Values, second.Vectors, seed: 7);
        Assert.Equal(first.Values, second.Values);
        Assert.Equal(first.Vectors, second.Vectors);
        Assert.Equal(3, first.Values[0], 1e-5);
        Assert.Equal(2, first.Values[1], 1e-5);
        for (int t = 2; t < r; t++) Assert.True(Math.Abs(first.Values[t]) <= 1e-5, $"eigenvalue {t} = {first.Values[t]}");
        for (int t = 0; t < r; t++)
        {
            double norm = 0;
            for (int i = 0; i < n; i++) norm += first.Vectors[i * r + t] * first.Vectors[i * r + t];
            Assert.Equal(1, norm, 1e-5);
        }
    }

    [Fact]
    public void TopEigen_refuses_non_finite_input_and_a_rank_above_n()
    {
        using var backend = new CpuBackend();
        var a = new float[] { 1, 0, 0, float.NaN };
        Assert.Contains("non-finite", Assert.Throws<FisherKernelsException>(() => TopEigen.Compute(backend, a, 2, 1, new float[1], new float[2])).Message);
        Assert.Contains("r ≤ n", Assert.Throws<FisherKernelsException>(() => TopEigen.Compute(backend, new float[4], 2, 3, new float[3], new float[6])).Message);
    }

    [Theory]
    [InlineData(true)] [InlineData(false)]
    public void Cpu_Woodbury_refuses_a_scaling_that_overflows_float32(bool useNative)
    {
        using var backend = new CpuBackend(useNativeBlas: useNative);
        var error = Assert.Throws<FisherKernelsException>(
            () => backend.WoodburyApply([1e-30f, 2, 3], [1e30f, 0, 0, 1, 1, 1], [1, 2], 3, 2, [1, 2, 3], 1, new float[3]));
        Assert.Contains("overflows float32", error.Message);
    }

    [Fact]
    public void Kron_quadratic_and_Woodbury_allocate_nothing_in_steady_state()
    {
        using var backend = new CpuBackend();
        if (!backend.UsesNativeBlas) return; // the managed GEMM's Parallel.For allocates its closures
        var rng = new Random(3);
        const int g = 20, a = 13, count = 6, n = 40, r = 5, k = 3;
        var basis = KronEigenbasis.Create(backend, Factor(rng, a), a, Factor(rng, g), g, 50, 1);
        var xs = Random(rng, count * g * a);
        var quadratics = new float[count];
        var d = Random(rng, n); for (int i = 0; i < n; i++) d[i] += 2;
        var u = Random(rng, n * r); var s = Random(rng, r); for (int j = 0; j < r; j++) s[j] += 1;
        var b = Random(rng, n * k); var output = new float[n * k];
        void Both()
        {
            backend.KronQuadratic(basis, xs, count, quadratics);
            backend.WoodburyApply(d, u, s, n, r, b, k, output);
        }
        Both();
        long before = GC.GetAllocatedBytesForCurrentThread();
        Both();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    private static float[] Random(Random rng, int length) => Array.ConvertAll(new float[length], _ => (float)(rng.NextDouble() * 2 - 1));

    private static float[] Factor(Random rng, int n) => Array.ConvertAll(RandomSpd(rng, n), v => (float)v);

    private static double[] RandomSpd(Random rng, int n)
    {
        var x = new double[n * n];
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextDouble() - 0.5;
        var p = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = i == j ? 0.5 : 0;
                for (int m = 0; m < n; m++) sum += x[i * n + m] * x[j * n + m];
                p[i * n + j] = sum;
            }
        return p;
    }
}

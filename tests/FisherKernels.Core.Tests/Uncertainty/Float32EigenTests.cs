using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Tests.Curvature;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>
/// The float32 eigendecompositions of large K-FAC factors (<see cref="KronEigenbasis.Float32MinSize"/>), against the float64
/// path (LAPACK dsyevd, itself checked against independent references elsewhere) as the reference.
/// </summary>
public class Float32EigenTests
{
    /// <summary>A factor like a transformer's A: mean outer product of fewer rows than its width (rank-deficient), column scales spanning 10³.</summary>
    static float[] WideFactor(int n, int rows, int seed)
    {
        var rng = new Random(seed);
        var x = new double[rows * n];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < n; c++) x[r * n + c] = (2 * rng.NextDouble() - 1) * Math.Pow(10, -3.0 * c / n);
        var f = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = 0;
                for (int r = 0; r < rows; r++) sum += x[r * n + i] * x[r * n + j];
                f[i * n + j] = f[j * n + i] = (float)(sum / rows);
            }
        return f;
    }

    static double RelativeError(double expected, double actual) => Math.Abs(actual - expected) / Math.Abs(expected);

    /// <summary>The criterion's float64 estimates against the exact Frobenius norms of a decomposition made inaccurate on purpose.</summary>
    [Fact]
    public void TheFloat64CheckMeasuresBackwardErrorAndOrthogonality()
    {
        const int n = 64;
        float[] f = WideFactor(n, 200, 1);
        using var cpu = new CpuBackend(threads: 1);
        var lambda = new double[n];
        var vectors = new double[n * n];
        cpu.SymmetricEigen(Array.ConvertAll(f, v => (double)v), n, lambda, vectors);
        float[] q = Array.ConvertAll(vectors, v => (float)v);
        float[] l = Array.ConvertAll(lambda, v => (float)v);
        var (backward, orthogonality) = KronEigenbasis.Float32Error(f, n, q, l);
        Assert.InRange(backward, 0, 1e-6);
        Assert.InRange(orthogonality, 0, 1e-6);

        // Largest eigenvalue 1% off: ‖E‖_F = 0.01·λ_max exactly; a column of Q scaled by 1.01: ‖QQᵀ − I‖_F = 1.01² − 1.
        double norm = Math.Sqrt(f.Sum(v => (double)v * v));
        float[] badL = (float[])l.Clone();
        badL[n - 1] *= 1.01f;
        double expected = 0.01 * l[n - 1] / norm;
        (backward, _) = KronEigenbasis.Float32Error(f, n, q, badL);
        Assert.InRange(backward, expected / 2, expected * 2);
        float[] badQ = (float[])q.Clone();
        for (int i = 0; i < n; i++) badQ[i * n + 3] *= 1.01f;
        (_, orthogonality) = KronEigenbasis.Float32Error(f, n, badQ, l);
        expected = (1.01 * 1.01 - 1) / Math.Sqrt(n);
        Assert.InRange(orthogonality, expected / 2, expected * 2);
    }

    /// <summary>
    /// A 700-wide rank-deficient factor (the float32 path) against the same basis decomposed in float64: the check accepts ssyevd's
    /// result, and the quadratic forms agree to 1e-4 relative at τ = 1 and at a τ small enough that the curvature dominates.
    /// </summary>
    [Fact]
    public void WideFactorsInFloat32GiveTheFloat64QuadraticForms()
    {
        const int a = 700, g = 6, positions = 300;
        float[] fa = WideFactor(a, positions, 2), fg = WideFactor(g, positions, 3);
        using var cpu = new CpuBackend(threads: 1);
        var q = new float[a * a];
        var l = new float[a];
        cpu.SymmetricEigen(fa, a, l, q);
        var (backward, orthogonality) = KronEigenbasis.Float32Error(fa, a, q, l);
        Assert.InRange(backward, 0, KronEigenbasis.Float32Tolerance(a));
        Assert.InRange(orthogonality, 0, KronEigenbasis.Float32Tolerance(a));

        var rng = new Random(4);
        float[] xs = Enumerable.Range(0, 4 * g * a).Select(_ => (float)(2 * rng.NextDouble() - 1)).ToArray();
        foreach (double tau in new[] { 1.0, 1e-4 })
        {
            KronEigenbasis single = KronEigenbasis.Create(cpu, fa, a, fg, g, positions, tau);
            KronEigenbasis reference = KronEigenbasis.Create(cpu, fa, a, fg, g, positions, tau, float32MinSize: int.MaxValue);
            Assert.NotEqual(reference.QA, single.QA); // the float32 path was taken
            var expected = new float[4];
            var actual = new float[4];
            cpu.KronQuadratic(reference, xs, 4, expected);
            cpu.KronQuadratic(single, xs, 4, actual);
            for (int c = 0; c < 4; c++) Assert.True(RelativeError(expected[c], actual[c]) <= 1e-4, $"τ {tau}, matrix {c}: {expected[c]} vs {actual[c]}");
        }
    }

    /// <summary>Every fixture layer's factors decomposed in float32 (whatever their width) against float64: the fixtures' loss gradients' quadratic forms to 1e-4.</summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    public void FixtureFactorsInFloat32GiveTheFloat64QuadraticForms(string model)
    {
        using var cpu = new CpuBackend(threads: 1);
        FixtureFiles.FixtureLayer[] layers = FixtureFiles.Layers(model);
        KfacCurvature curvature = KfacCurvature.Load(FixtureFiles.PathOf(model + ".kfac.safetensors"), layers.Select(l => l.Shape).ToArray());
        SafetensorsFile grads = SafetensorsFile.Read(FixtureFiles.PathOf(model + ".grads.safetensors"));
        foreach (FixtureFiles.FixtureLayer layer in layers)
        {
            KroneckerBlock block = curvature.Layers.Single(b => b.Layer == layer.Shape.Layer);
            float[] x = KfacPosteriorTests.GradientMatrix(grads, layer);
            foreach (double tau in new[] { 1.0, 1e-3 })
            {
                KronEigenbasis single = KronEigenbasis.Create(cpu, block.A.Data, block.ADim, block.G.Data, block.GDim, block.Positions, tau, float32MinSize: 1);
                KronEigenbasis reference = KronEigenbasis.Create(cpu, block.A.Data, block.ADim, block.G.Data, block.GDim, block.Positions, tau, float32MinSize: int.MaxValue);
                var expected = new float[1];
                var actual = new float[1];
                cpu.KronQuadratic(reference, x, 1, expected);
                cpu.KronQuadratic(single, x, 1, actual);
                Assert.True(RelativeError(expected[0], actual[0]) <= 1e-4, $"{model} {layer.Shape.Layer} τ {tau}: {expected[0]} vs {actual[0]}");
            }
        }
    }

    /// <summary>A float32 solver whose eigenvalues are 1% off fails the check, and the factor is decomposed again in float64.</summary>
    [Fact]
    public void AnInaccurateFloat32DecompositionIsRedoneInFloat64()
    {
        const int a = 520, g = 3, positions = 200;
        float[] fa = WideFactor(a, positions, 5), fg = WideFactor(g, positions, 6);
        using var cpu = new CpuBackend(threads: 1);
        using var skewed = new SkewedFloat32Backend(cpu);
        KronEigenbasis reference = KronEigenbasis.Create(cpu, fa, a, fg, g, positions, 1e-3, float32MinSize: int.MaxValue);
        KronEigenbasis checkedBasis = KronEigenbasis.Create(skewed, fa, a, fg, g, positions, 1e-3);
        Assert.True(skewed.Float32Calls > 0);
        Assert.Equal(reference.LambdaA, checkedBasis.LambdaA);
        Assert.Equal(reference.QA, checkedBasis.QA);
    }

    /// <summary>The CPU backend with every float32 eigenvalue scaled by 1.01.</summary>
    sealed class SkewedFloat32Backend(CpuBackend inner) : IComputeBackend
    {
        public int Float32Calls { get; private set; }
        public string Name => inner.Name;
        public string Device => inner.Device;
        public void Dispose() { }
        public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne, float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false)
            => inner.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, factor, rowMask, upperOnly);
        public void Gemm(in GemmShape s, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c) => inner.Gemm(s, a, b, c);
        public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw, ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
            => inner.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, dy);
        public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors) => inner.SymmetricEigen(a, n, eigenvalues, eigenvectors);
        public void SymmetricEigen(ReadOnlySpan<float> a, int n, Span<float> eigenvalues, Span<float> eigenvectors)
        {
            Float32Calls++;
            inner.SymmetricEigen(a, n, eigenvalues, eigenvectors);
            for (int i = 0; i < n; i++) eigenvalues[i] *= 1.01f;
        }
        public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output) => inner.KronQuadratic(basis, xs, count, output);
        public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r, ReadOnlySpan<float> b, int k, Span<float> output)
            => inner.WoodburyApply(d, u, s, n, r, b, k, output);
    }
}

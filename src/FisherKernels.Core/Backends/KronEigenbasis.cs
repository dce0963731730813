using System.Numerics.Tensors;

namespace FisherKernels.Backends;

/// <summary>
/// The eigenbasis of one damped Kronecker block <c>M·A⊗G + τ·I</c> (SPEC §4):
/// A = Q_A Λ_A Q_Aᵀ ([a × a]), G = Q_G Λ_G Q_Gᵀ ([g × g]). Eigenvectors are the columns of the
/// row-major Q matrices, stored in float32 for the hot quadratic forms. A factor of
/// <see cref="Float32MinSize"/> or more is decomposed in float32 and kept when a float64 check shows it accurate
/// (<see cref="Float32Tolerance"/>), else in float64, as narrower factors are; the eigenvalues and the inverse
/// denominators <c>1 / (M λ_G,j λ_A,k + τ)</c> are float64.
/// </summary>
public sealed class KronEigenbasis
{
    /// <summary>
    /// Eigenvalues below −<see cref="NegativeEigenvalueTolerance"/>·max|λ| mean the factor is not positive
    /// semi-definite (a bug upstream, not rounding). <see cref="Create"/> sets every eigenvalue under
    /// n·ε₃₂·max|λ| to 0: that is the rounding level of float32 factor entries, below which an eigenvalue
    /// (of either sign) is noise, and 0 is the conservative reading (more variance, never less).
    /// </summary>
    public const double NegativeEigenvalueTolerance = 1e-3;

    /// <summary>Unit roundoff of float32, 2⁻²³ (<see cref="float.Epsilon"/> is the smallest denormal, not this).</summary>
    private const double Float32Epsilon = 1.1920928955078125e-7;

    public KronEigenbasis(float[] qa, double[] lambdaA, float[] qg, double[] lambdaG, double positions, double priorPrecision)
    {
        ArgumentNullException.ThrowIfNull(qa); ArgumentNullException.ThrowIfNull(lambdaA);
        ArgumentNullException.ThrowIfNull(qg); ArgumentNullException.ThrowIfNull(lambdaG);
        int a = lambdaA.Length, g = lambdaG.Length;
        if (qa.Length != (long)a * a) throw FisherKernelsException.Argument($"Q_A needs {(long)a * a} elements, got {qa.Length}");
        if (qg.Length != (long)g * g) throw FisherKernelsException.Argument($"Q_G needs {(long)g * g} elements, got {qg.Length}");
        if (!double.IsFinite(positions) || positions < 0)
            throw FisherKernelsException.Argument($"a Kronecker block needs finite, non-negative positions M, got {positions}");
        if (!double.IsFinite(priorPrecision) || priorPrecision < 0)
            throw FisherKernelsException.Argument($"--prior-precision must be finite and non-negative, got {priorPrecision}");
        CheckEigenvalues(lambdaA, "A");
        CheckEigenvalues(lambdaG, "G");
        QA = qa; LambdaA = lambdaA; QG = qg; LambdaG = lambdaG;
        Positions = positions; PriorPrecision = priorPrecision;
        InverseDenominators = new float[(long)g * a];
        for (int j = 0; j < g; j++)
            for (int k = 0; k < a; k++)
            {
                double denominator = positions * lambdaG[j] * lambdaA[k] + priorPrecision;
                FillInverse(j, k, denominator);
            }
    }

    /// <summary>
    /// EK-FAC (SPEC §3, §4): the same eigenvectors and eigenvalues with the curvature's eigenvalues <c>M·E_jk</c> in place of
    /// <c>M·λ_G,j·λ_A,k</c>. Where either factor's eigenvalue was set to 0 as rounding noise, E (bounded by the same λ times the
    /// largest square) is noise too and is read as 0, as K-FAC reads it: those directions keep the prior's 1/τ.
    /// </summary>
    public KronEigenbasis WithCorrection(ReadOnlySpan<float> e)
    {
        int a = ADim, g = GDim;
        if (e.Length != (long)g * a) throw FisherKernelsException.Argument($"E needs [{g} × {a}] = {(long)g * a} values, got {e.Length}");
        var corrected = new KronEigenbasis(QA, LambdaA, QG, LambdaG, Positions, PriorPrecision, new float[(long)g * a]);
        for (int j = 0; j < g; j++)
            for (int k = 0; k < a; k++)
            {
                long i = (long)j * a + k;
                float value = LambdaG[j] == 0 || LambdaA[k] == 0 ? 0 : e[(int)i];
                if (!float.IsFinite(value) || value < 0) throw FisherKernelsException.Argument($"E must be finite and non-negative, got {value} at [{j}, {k}]");
                corrected.Correction![i] = value;
                corrected.FillInverse(j, k, Positions * value + PriorPrecision);
            }
        return corrected;
    }

    KronEigenbasis(float[] qa, double[] lambdaA, float[] qg, double[] lambdaG, double positions, double priorPrecision, float[] correction)
    {
        QA = qa; LambdaA = lambdaA; QG = qg; LambdaG = lambdaG;
        Positions = positions; PriorPrecision = priorPrecision;
        InverseDenominators = new float[correction.LongLength];
        Correction = correction;
    }

    /// <summary>
    /// EK-FAC's E as this basis uses it (<c>[g × a]</c>, noise directions 0, <see cref="WithCorrection"/>), or null for K-FAC,
    /// whose curvature eigenvalues are the products <c>λ_G,j·λ_A,k</c>.
    /// </summary>
    public float[]? Correction { get; }

    /// <summary>The curvature's eigenvalue at [j, k]: <c>M·E_jk</c> (EK-FAC) or <c>M·λ_G,j·λ_A,k</c>.</summary>
    public double CurvatureEigenvalue(int j, int k) =>
        Correction is null ? Positions * LambdaG[j] * LambdaA[k] : Positions * (double)Correction[(long)j * ADim + k];

    void FillInverse(int j, int k, double denominator)
    {
        if (!(denominator > 0))
            throw FisherKernelsException.Argument(
                $"the damped Kronecker precision M·A⊗G + τ·I is singular (M·λ_G[{j}]·λ_A[{k}] + τ = {denominator}): use a positive prior precision");
        float inverse = (float)(1 / denominator);
        if (!float.IsFinite(inverse))
            throw FisherKernelsException.Argument(
                $"the damped Kronecker precision M·A⊗G + τ·I is too close to singular for float32 (1 / (M·λ_G[{j}]·λ_A[{k}] + τ) = {1 / denominator}): use a larger prior precision");
        InverseDenominators[(long)j * ADim + k] = inverse;
    }

    /// <summary>
    /// Decomposes the symmetric factors A [a × a] and G [g × g] on <paramref name="backend"/> (float32 where checked accurate,
    /// else float64: <see cref="Float32Tolerance"/>) and builds
    /// the basis of <c>M·A⊗G + τ·I</c>. Factors must be finite and positive semi-definite.
    /// </summary>
    public static KronEigenbasis Create(IComputeBackend backend, ReadOnlySpan<float> a, int aDim, ReadOnlySpan<float> g, int gDim,
                                       double positions, double priorPrecision)
        => Create(backend, a, aDim, g, gDim, positions, priorPrecision, Float32MinSize);

    /// <summary>As above, with factors of <paramref name="float32MinSize"/> or more tried in float32 (tests: 1 for all, <see cref="int.MaxValue"/> for none).</summary>
    internal static KronEigenbasis Create(IComputeBackend backend, ReadOnlySpan<float> a, int aDim, ReadOnlySpan<float> g, int gDim,
                                         double positions, double priorPrecision, int float32MinSize)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var (qa, lambdaA) = Decompose(backend, a, aDim, "A", float32MinSize);
        var (qg, lambdaG) = Decompose(backend, g, gDim, "G", float32MinSize);
        return new KronEigenbasis(qa, lambdaA, qg, lambdaG, positions, priorPrecision);
    }

    /// <summary>
    /// Factors at least this wide are decomposed in float32 (LAPACK ssyevd, about half dsyevd's time) and the result checked
    /// in float64 (<see cref="Float32Error"/>); narrower ones take float64 outright, which costs under 0.05 s below 512.
    /// </summary>
    public const int Float32MinSize = 512;

    /// <summary>Gaussian probe vectors of the float64 check: its norm estimates are within about ±25% (1/√(2·8)).</summary>
    const int CheckProbes = 8;

    /// <summary>
    /// The accuracy criterion of a float32 decomposition <c>F ≈ Q Λ Qᵀ</c>: its backward error
    /// <c>‖F − QΛQᵀ‖_F / ‖F‖_F</c> and its loss of orthogonality <c>‖QᵀQ − I‖_F / √n</c>, measured in float64, must both stay
    /// under <c>n·ε₃₂</c>, the level at which <see cref="CheckEigenvalues"/> already reads an eigenvalue as float32 noise.
    /// Such a decomposition is the exact one of a factor that
    /// differs from the stored one by no more than that noise. One that fails is redone in float64.
    /// </summary>
    public static double Float32Tolerance(int n) => n * Float32Epsilon;

    private static (float[] Q, double[] Lambda) Decompose(IComputeBackend backend, ReadOnlySpan<float> factor, int n, string name, int float32MinSize)
    {
        if (n < 1) throw FisherKernelsException.Argument($"factor {name} must be at least 1x1, got {n}x{n}");
        if (factor.Length != (long)n * n) throw FisherKernelsException.Argument($"factor {name} [{n} × {n}] needs {(long)n * n} elements, got {factor.Length}");
        try
        {
            if (n >= float32MinSize)
            {
                var q32 = new float[(long)n * n];
                var lambda32 = new float[n];
                backend.SymmetricEigen(factor, n, lambda32, q32);
                var (backward, orthogonality) = Float32Error(factor, n, q32, lambda32);
                if (backward <= Float32Tolerance(n) && orthogonality <= Float32Tolerance(n))
                {
                    double[] values = Array.ConvertAll(lambda32, v => (double)v);
                    CheckEigenvalues(values, name, clampRounding: true);
                    return (q32, values);
                }
            }
            var matrix = new double[(long)n * n];
            for (int i = 0; i < matrix.Length; i++) matrix[i] = factor[i];
            var lambda = new double[n];
            var vectors = new double[(long)n * n];
            backend.SymmetricEigen(matrix, n, lambda, vectors);
            CheckEigenvalues(lambda, name, clampRounding: true);
            var q = new float[vectors.Length];
            for (int i = 0; i < q.Length; i++) q[i] = (float)vectors[i];
            return (q, lambda);
        }
        catch (FisherKernelsException e) when (e.Kind == ErrorKind.InvalidArgument && !e.Message.StartsWith($"factor {name}", StringComparison.Ordinal))
        {
            throw FisherKernelsException.Argument($"factor {name}: {e.Message}");
        }
    }

    /// <summary>
    /// Float64 estimates of a float32 decomposition's backward error <c>‖F − QΛQᵀ‖_F / ‖F‖_F</c> and loss of orthogonality
    /// <c>‖QQᵀ − I‖_F / √n</c> (equal to <c>‖QᵀQ − I‖_F / √n</c> for a square Q), from <see cref="CheckProbes"/> Gaussian probes
    /// V (fixed seed): <c>E‖E V‖_F² = k‖E‖_F²</c>. Three passes over n² entries, 32·n² float64 multiply-adds (about 0.1 s at
    /// n = 3072, against 2.7 s for ssyevd); F is read as stored, Q and Λ as float32 values widened exactly.
    /// </summary>
    internal static (double Backward, double Orthogonality) Float32Error(ReadOnlySpan<float> factor, int n, ReadOnlySpan<float> q, ReadOnlySpan<float> lambda)
    {
        const int k = CheckProbes;
        var probes = new double[k * n]; // V transposed: probe p is probes[p·n ..]
        var rng = new Curvature.SplitMix64(seed: 0x5eed, batch: n, stream: 0);
        for (int i = 0; i < probes.Length; i++) probes[i] = rng.NextGaussian();
        var row = new double[n];
        var fv = new double[k * n];  // (F V)ᵀ
        var qtv = new double[k * n]; // (Qᵀ V)ᵀ
        double factorNorm = 0;
        for (int i = 0; i < n; i++)
        {
            TensorPrimitives.ConvertChecked(factor.Slice(i * n, n), row);
            factorNorm += TensorPrimitives.SumOfSquares<double>(row);
            for (int p = 0; p < k; p++) fv[p * n + i] = TensorPrimitives.Dot<double>(row, probes.AsSpan(p * n, n));
            TensorPrimitives.ConvertChecked(q.Slice(i * n, n), row);
            for (int p = 0; p < k; p++) TensorPrimitives.MultiplyAdd(row, probes[p * n + i], qtv.AsSpan(p * n, n), qtv.AsSpan(p * n, n));
        }
        var scaled = new double[k * n]; // (Λ Qᵀ V)ᵀ
        for (int p = 0; p < k; p++)
            for (int c = 0; c < n; c++) scaled[p * n + c] = qtv[p * n + c] * lambda[c];
        double backward = 0, orthogonality = 0;
        for (int i = 0; i < n; i++)
        {
            TensorPrimitives.ConvertChecked(q.Slice(i * n, n), row);
            for (int p = 0; p < k; p++)
            {
                double e = fv[p * n + i] - TensorPrimitives.Dot<double>(row, scaled.AsSpan(p * n, n));
                double o = TensorPrimitives.Dot<double>(row, qtv.AsSpan(p * n, n)) - probes[p * n + i];
                backward += e * e;
                orthogonality += o * o;
            }
        }
        return (factorNorm > 0 ? Math.Sqrt(backward / k / factorNorm) : Math.Sqrt(backward / k), Math.Sqrt(orthogonality / k / n));
    }

    private static void CheckEigenvalues(double[] lambda, string name, bool clampRounding = false)
    {
        double largest = 0;
        foreach (double l in lambda)
        {
            if (!double.IsFinite(l)) throw FisherKernelsException.Argument($"factor {name} has a non-finite eigenvalue {l}");
            largest = Math.Max(largest, Math.Abs(l));
        }
        double noise = clampRounding ? lambda.Length * Float32Epsilon * largest : 0;
        for (int i = 0; i < lambda.Length; i++)
        {
            if (lambda[i] < -NegativeEigenvalueTolerance * largest || (!clampRounding && lambda[i] < 0))
                throw FisherKernelsException.Argument($"factor {name} is not positive semi-definite: eigenvalue {lambda[i]} (largest magnitude {largest})");
            if (lambda[i] < noise) lambda[i] = 0;
        }
    }

    public float[] QA { get; }
    public double[] LambdaA { get; }
    public float[] QG { get; }
    public double[] LambdaG { get; }
    public double Positions { get; }
    public double PriorPrecision { get; }

    /// <summary><c>1 / (M λ_G,j λ_A,k + τ)</c> at [j, k], row-major [g × a].</summary>
    public float[] InverseDenominators { get; }

    public int ADim => LambdaA.Length;
    public int GDim => LambdaG.Length;
}

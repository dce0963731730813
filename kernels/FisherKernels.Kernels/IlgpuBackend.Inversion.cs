using ILGPU;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// Kernel family 2: quadratic forms in a Kronecker eigenbasis and the Woodbury low-rank apply, both
/// on the device through the tiled GEMM plus small fused kernels; the eigendecomposition and the
/// r×r capacitance solve run on the host in float64.
/// </summary>
public sealed partial class IlgpuBackend
{
    internal struct QuadraticArgs
    {
        public int G, A;
        public float Positions, PriorPrecision;
    }

    /// <summary>Threads of one group of the per-matrix reduction.</summary>
    private const int ReduceGroup = 256;

    private readonly DeviceBuffer<float> quadXs, quadT, quadY, quadOut, basisQA, basisQG, basisLambdaA, basisLambdaG;
    private readonly DeviceBuffer<float> woodburyD, woodburyU, woodburyW, woodburyZ, woodburyR, woodburySolved, woodburyB;
    private float[] capacitanceProducts = [], capacitanceSolution = [];
    private double[] capacitanceLu = [], capacitanceRhs = [];
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, QuadraticArgs>> quadraticKernel;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>> scaleRowsKernel;

    /// <summary>The basis whose Q and λ are on the device now: a basis is uploaded once, however many calls use it.</summary>
    private KronEigenbasis? residentBasis;

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => host.SymmetricEigen(a, n, eigenvalues, eigenvectors);

    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        ArgumentNullException.ThrowIfNull(basis);
        int g = basis.GDim, a = basis.ADim;
        long each = (long)g * a;
        if (count < 0) throw FisherKernelsException.Argument($"KronQuadratic: negative count {count}");
        if (xs.Length < count * each)
            throw FisherKernelsException.Argument($"KronQuadratic: {count} matrices of [{g} × {a}] need {count * each} elements, got {xs.Length}");
        if (output.Length < count)
            throw FisherKernelsException.Argument($"KronQuadratic: the output needs {count} elements, got {output.Length}");
        if (count == 0) return;
        if (each == 0) { output[..count].Clear(); return; }

        var stream = accelerator.DefaultStream;
        if (!ReferenceEquals(residentBasis, basis))
        {
            residentBasis = null;
            basisQA.Upload(basis.QA);
            basisQG.Upload(basis.QG);
            UploadAsFloat(basisLambdaA, basis.LambdaA);
            UploadAsFloat(basisLambdaG, basis.LambdaG);
            residentBasis = basis;
        }
        var qa = basisQA.Take((long)a * a);
        var qg = basisQG.Take((long)g * g);
        var x = quadXs.Upload(xs[..checked((int)(count * each))]);
        var t = quadT.Take(count * each);
        var y = quadY.Take(count * each);
        // T_i = X_i·Q_A, then Y_i = Q_Gᵀ·T_i, both batched with the Q operand broadcast (stride 0).
        LaunchGemm(new GemmShape(g, a, a, BatchCount: count, StrideA: each, StrideB: 0, StrideC: each), x, qa, t);
        LaunchGemm(new GemmShape(g, a, g, TransA: true, BatchCount: count, StrideA: 0, StrideB: each, StrideC: each), qg, t, y);
        var result = quadOut.Take(count);
        var args = new QuadraticArgs { G = g, A = a, Positions = (float)basis.Positions, PriorPrecision = (float)basis.PriorPrecision };
        quadraticKernel.Value(new KernelConfig(count, ReduceGroup), y, basisLambdaG.Take(g), basisLambdaA.Take(a), result, args);
        Download(result, output[..count], stream);
        Synchronize();
    }

    private static void UploadAsFloat(DeviceBuffer<float> target, double[] values)
    {
        var single = new float[values.Length];
        for (int i = 0; i < values.Length; i++) single[i] = (float)values[i];
        target.Upload(single);
    }

    /// <summary>
    /// One group per matrix: out[i] = Σ_jk Y_i[j,k]² / (M·λ_G[j]·λ_A[k] + τ), the square, the divide
    /// and the sum fused; a shared-memory tree reduction finishes the group's partial sums.
    /// </summary>
    private static void WeightedSquareSumKernel(ArrayView<float> y, ArrayView<float> lambdaG, ArrayView<float> lambdaA,
                                                ArrayView<float> output, QuadraticArgs p)
    {
        var partial = SharedMemory.Allocate<float>(ReduceGroup);
        int thread = Group.IdxX, length = p.G * p.A;
        long start = (long)Grid.IdxX * length;
        float sum = 0f;
        for (int e = thread; e < length; e += Group.DimX)
        {
            float value = y[start + e];
            sum += value * value / (p.Positions * lambdaG[e / p.A] * lambdaA[e % p.A] + p.PriorPrecision);
        }
        partial[thread] = sum;
        Group.Barrier();
        for (int half = ReduceGroup / 2; half > 0; half /= 2)
        {
            if (thread < half) partial[thread] += partial[thread + half];
            Group.Barrier();
        }
        if (thread == 0) output[Grid.IdxX] = partial[0];
    }

    public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                              ReadOnlySpan<float> b, int k, Span<float> output)
    {
        if (n < 0 || r < 0 || k < 0) throw FisherKernelsException.Argument($"WoodburyApply: negative size (n {n}, r {r}, k {k})");
        Need("d", n, d.Length); Need("U", (long)n * r, u.Length); Need("s", r, s.Length);
        Need("B", (long)n * k, b.Length); Need("the output", (long)n * k, output.Length);
        for (int i = 0; i < n; i++)
            if (!(d[i] != 0 && float.IsFinite(d[i])))
                throw FisherKernelsException.Argument($"WoodburyApply: the diagonal d[{i}] = {d[i]} is not invertible");
        if (n == 0 || k == 0) return;

        // (D + U S Uᵀ)⁻¹B = Z − W·(I + S·UᵀW)⁻¹·S·UᵀZ with W = D⁻¹U and Z = D⁻¹B: this form needs no S⁻¹,
        // so zero entries of s are allowed.
        var stream = accelerator.DefaultStream;
        var dView = woodburyD.Upload(d[..n]);
        var z = woodburyZ.Take((long)n * k);
        scaleRowsKernel.Value(z.IntExtent, woodburyB.Upload(b[..(n * k)]), dView, z, k);
        if (r > 0)
        {
            var w = woodburyW.Take((long)n * r);
            scaleRowsKernel.Value(w.IntExtent, woodburyU.Upload(u[..(n * r)]), dView, w, r);
            var uView = woodburyU.Take((long)n * r);
            var products = woodburySolved.Take((long)r * r + (long)r * k);
            var capacitance = products.SubView(0, (long)r * r);
            var projected = products.SubView((long)r * r, (long)r * k);
            LaunchGemm(new GemmShape(r, r, n, TransA: true), uView, w, capacitance);      // UᵀW   [r × r]
            LaunchGemm(new GemmShape(r, k, n, TransA: true), uView, z, projected);        // UᵀZ   [r × k]
            var hostProducts = Scratch(ref capacitanceProducts, r * r + r * k);
            Download(products, hostProducts, stream);
            Synchronize();
            var solvedView = woodburyR.Upload(SolveCapacitance(hostProducts, s[..r], r, k));
            LaunchGemm(new GemmShape(n, k, r, Alpha: -1f, Beta: 1f), w, solvedView, z);  // Z −= W·solved
        }
        Download(z, output[..(n * k)], stream);
        Synchronize();

        static void Need(string name, long needed, long length)
        {
            if (length < needed) throw FisherKernelsException.Argument($"WoodburyApply: {name} needs {needed} elements, got {length}");
        }
    }

    /// <summary>
    /// Host float64 solve of (I + S·UᵀW)·X = S·UᵀZ by LU with partial pivoting: the capacitance matrix
    /// is only r×r, too small for a device. <paramref name="products"/> holds UᵀW then UᵀZ.
    /// </summary>
    private Span<float> SolveCapacitance(ReadOnlySpan<float> products, ReadOnlySpan<float> s, int r, int k)
    {
        var lu = Scratch(ref capacitanceLu, r * r);
        var rhs = Scratch(ref capacitanceRhs, r * k);
        for (int i = 0; i < r; i++)
        {
            for (int j = 0; j < r; j++) lu[i * r + j] = (i == j ? 1.0 : 0.0) + (double)s[i] * products[i * r + j];
            for (int j = 0; j < k; j++) rhs[i * k + j] = (double)s[i] * products[r * r + i * k + j];
        }
        for (int col = 0; col < r; col++)
        {
            int pivot = col;
            for (int i = col + 1; i < r; i++) if (Math.Abs(lu[i * r + col]) > Math.Abs(lu[pivot * r + col])) pivot = i;
            if (lu[pivot * r + col] == 0)
                throw FisherKernelsException.Argument("WoodburyApply: the capacitance matrix I + S·UᵀD⁻¹U is singular");
            if (pivot != col)
            {
                for (int j = 0; j < r; j++) (lu[col * r + j], lu[pivot * r + j]) = (lu[pivot * r + j], lu[col * r + j]);
                for (int j = 0; j < k; j++) (rhs[col * k + j], rhs[pivot * k + j]) = (rhs[pivot * k + j], rhs[col * k + j]);
            }
            for (int i = col + 1; i < r; i++)
            {
                double factor = lu[i * r + col] / lu[col * r + col];
                if (factor == 0) continue;
                for (int j = col; j < r; j++) lu[i * r + j] -= factor * lu[col * r + j];
                for (int j = 0; j < k; j++) rhs[i * k + j] -= factor * rhs[col * k + j];
            }
        }
        var solved = Scratch(ref capacitanceSolution, r * k);
        for (int i = r - 1; i >= 0; i--)
            for (int j = 0; j < k; j++)
            {
                double sum = rhs[i * k + j];
                for (int p = i + 1; p < r; p++) sum -= lu[i * r + p] * rhs[p * k + j];
                rhs[i * k + j] = sum / lu[i * r + i];
                solved[i * k + j] = (float)rhs[i * k + j];
            }
        return solved;
    }

    /// <summary>A host scratch span of <paramref name="length"/> elements from a grow-only array.</summary>
    private static Span<T> Scratch<T>(ref T[] array, int length)
    {
        if (array.Length < length) array = new T[length];
        return array.AsSpan(0, length);
    }

    /// <summary>dst[i] = src[i] / d[i div cols]: D⁻¹ applied to a row-major [n × cols] matrix.</summary>
    private static void DivideRowsKernel(Index1D index, ArrayView<float> src, ArrayView<float> d, ArrayView<float> dst, int cols)
        => dst[index] = src[index] / d[index / cols];
}

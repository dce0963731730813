using FisherKernels.Backends.Cpu;
using FisherKernels.Linalg;
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
    /// <summary>Threads of one group of the per-matrix reduction.</summary>
    private const int ReduceGroup = 256;

    private readonly DeviceBuffer<float> quadXs, quadT, quadY, quadOut, basisQA, basisQG, basisWeights;
    private readonly DeviceBuffer<float> woodburyD, woodburyU, woodburyW, woodburyZ, woodburyProducts, woodburySolved, woodburyB;
    private float[] capacitanceProducts = [], capacitanceSolution = [];
    private double[] capacitanceFactor = [], capacitanceRhs = [];
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>> quadraticKernel;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>> scaleRowsKernel;

    /// <summary>The basis whose Q and λ are on the device now: a basis is uploaded once, however many calls use it.</summary>
    private KronEigenbasis? residentBasis;

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => host.SymmetricEigen(a, n, eigenvalues, eigenvectors);

    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        long each = BackendArguments.CheckKronQuadratic(basis, xs, count, output.Length);
        int g = basis.GDim, a = basis.ADim;
        if (count == 0) return;

        var stream = accelerator.DefaultStream;
        if (!ReferenceEquals(residentBasis, basis))
        {
            residentBasis = null;
            basisQA.Upload(basis.QA);
            basisQG.Upload(basis.QG);
            basisWeights.Upload(basis.InverseDenominators);
            residentBasis = basis;
        }
        var qa = basisQA.Take((long)a * a);
        var qg = basisQG.Take((long)g * g);
        var x = quadXs.Upload(xs);
        var t = quadT.Take(count * each);
        var y = quadY.Take(count * each);
        // T_i = X_i·Q_A, then Y_i = Q_Gᵀ·T_i, both batched with the Q operand broadcast (stride 0).
        LaunchGemm(new GemmShape(g, a, a, BatchCount: count, StrideA: each, StrideB: 0, StrideC: each), x, qa, t);
        LaunchGemm(new GemmShape(g, a, g, TransA: true, BatchCount: count, StrideA: 0, StrideB: each, StrideC: each), qg, t, y);
        var result = quadOut.Take(count);
        quadraticKernel.Value(new KernelConfig(count, ReduceGroup), y, basisWeights.Take(each), result, checked((int)each));
        Download(result, output, stream);
        Synchronize();
    }

    /// <summary>
    /// One group per matrix: out[i] = Σ_jk Y_i[j,k]² · w[j,k] with w = 1 / (M·λ_G[j]·λ_A[k] + τ) (computed
    /// once per basis in float64, <see cref="KronEigenbasis.InverseDenominators"/>): the square, the weighting
    /// and the sum fused, a shared-memory tree reduction finishing the group's partial sums.
    /// </summary>
    private static void WeightedSquareSumKernel(ArrayView<float> y, ArrayView<float> weights, ArrayView<float> output, int length)
    {
        var partial = SharedMemory.Allocate<float>(ReduceGroup);
        int thread = Group.IdxX;
        long start = (long)Grid.IdxX * length;
        float sum = 0f;
        for (int e = thread; e < length; e += Group.DimX)
        {
            float value = y[start + e];
            sum += value * value * weights[e];
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
        CpuBackend.CheckWoodbury(d, u, s, n, r, b, k, output);
        if (n == 0 || k == 0) return;

        // (D + U S Uᵀ)⁻¹B = Z − W·S^½·(I + S^½·UᵀW·S^½)⁻¹·S^½·UᵀZ with W = D⁻¹U and Z = D⁻¹B: the capacitance
        // matrix is symmetric with eigenvalues ≥ 1 (d > 0, s ≥ 0), needs no S⁻¹, and is only r×r, so it is
        // factored on the host in float64; the O(n·r·(r+k)) work runs on the device.
        var stream = accelerator.DefaultStream;
        var dView = woodburyD.Upload(d);
        var z = woodburyZ.Take((long)n * k);
        scaleRowsKernel.Value(z.IntExtent, woodburyB.Upload(b), dView, z, k);
        if (r > 0)
        {
            var uView = woodburyU.Upload(u);
            var w = woodburyW.Take((long)n * r);
            scaleRowsKernel.Value(w.IntExtent, uView, dView, w, r);
            var products = woodburyProducts.Take((long)r * r + (long)r * k);
            LaunchGemm(new GemmShape(r, r, n, TransA: true), uView, w, products.SubView(0, (long)r * r));         // UᵀW
            LaunchGemm(new GemmShape(r, k, n, TransA: true), uView, z, products.SubView((long)r * r, (long)r * k)); // UᵀZ
            var hostProducts = Scratch(ref capacitanceProducts, r * r + r * k);
            Download(products, hostProducts, stream);
            Synchronize();
            var solved = woodburySolved.Upload(SolveCapacitance(hostProducts, s, r, k));
            LaunchGemm(new GemmShape(n, k, r, Alpha: -1f, Beta: 1f), w, solved, z); // Z −= W·solved
        }
        Download(z, output, stream);
        Synchronize();
    }

    /// <summary>
    /// S^½·(I + S^½·P·S^½)⁻¹·S^½·R in float64 by Cholesky, from <paramref name="products"/> = [P = UᵀW | R = UᵀZ].
    /// </summary>
    private Span<float> SolveCapacitance(ReadOnlySpan<float> products, ReadOnlySpan<float> s, int r, int k)
    {
        var capacitance = Scratch(ref capacitanceFactor, r * r);
        var rhs = Scratch(ref capacitanceRhs, r * k);
        for (int i = 0; i < r; i++)
        {
            double si = Math.Sqrt(s[i]);
            for (int j = 0; j <= i; j++)
                capacitance[i * r + j] = (i == j ? 1 : 0) + si * Math.Sqrt(s[j]) * 0.5 * ((double)products[i * r + j] + products[j * r + i]);
            for (int j = 0; j < k; j++) rhs[i * k + j] = si * products[r * r + i * k + j];
        }
        if (!Cholesky.TryFactor(capacitance, r, host.UsesNativeBlas))
            throw FisherKernelsException.Backend($"Woodbury: the capacitance matrix [{r} × {r}] is not positive definite (overflow in U, s or 1/d?)");
        Cholesky.Solve(capacitance, r, rhs, k);
        var solved = Scratch(ref capacitanceSolution, r * k);
        for (int i = 0; i < r; i++)
        {
            double si = Math.Sqrt(s[i]);
            for (int j = 0; j < k; j++) solved[i * k + j] = (float)(si * rhs[i * k + j]);
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

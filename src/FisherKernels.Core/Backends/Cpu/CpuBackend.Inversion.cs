using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using FisherKernels.Linalg;

namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>
    /// Elements per KronQuadratic scratch buffer: batches of X are cut so that both buffers (256 KiB each) stay in L2
    /// between the two GEMMs and the reduction — a larger batch streams them through memory and runs slower.
    /// </summary>
    private const long KronScratchElements = 1 << 16;

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
    {
        SymmetricEigensolver.Decompose(a, n, eigenvalues, eigenvectors, UsesNativeBlas);
    }

    public void SymmetricEigen(ReadOnlySpan<float> a, int n, Span<float> eigenvalues, Span<float> eigenvectors)
    {
        SymmetricEigensolver.Decompose(a, n, eigenvalues, eigenvectors, UsesNativeBlas);
    }

    /// <summary>
    /// Two GEMMs per batch of X — T = X·Q_A with all X stacked as one tall matrix, then Y_i = Q_Gᵀ·T_i batched with
    /// Q_G broadcast — and one fused pass Σ Y² · (1 / denominator) per X. Scratch comes from the shared pool.
    /// </summary>
    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        long size = BackendArguments.CheckKronQuadratic(basis, xs, count, output.Length);
        int g = basis.GDim, a = basis.ADim;
        if (count == 0) return;

        int batch = (int)Math.Clamp(KronScratchElements / size, 1, count);
        var t = ArrayPool<float>.Shared.Rent(checked((int)(batch * size)));
        var y = ArrayPool<float>.Shared.Rent(checked((int)(batch * size)));
        try
        {
            for (int start = 0; start < count; start += batch)
            {
                int c = Math.Min(batch, count - start);
                int length = (int)(c * size);
                Gemm(new GemmShape(c * g, a, a), xs.Slice((int)(start * size), length), basis.QA, t.AsSpan(0, length));
                Gemm(new GemmShape(g, a, g, TransA: true, BatchCount: c, StrideA: 0, StrideB: size, StrideC: size),
                     basis.QG, t.AsSpan(0, length), y.AsSpan(0, length));
                for (int i = 0; i < c; i++)
                    output[start + i] = (float)WeightedSquareSum(y.AsSpan((int)(i * size), (int)size), basis.InverseDenominators, a);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(t);
            ArrayPool<float>.Shared.Return(y);
        }
    }

    /// <summary>Σ y²·w, SIMD in float32 within a row of <paramref name="rowLength"/>, rows summed in float64 to bound the rounding of long sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static double WeightedSquareSum(ReadOnlySpan<float> y, ReadOnlySpan<float> w, int rowLength)
    {
        double total = 0;
        for (int start = 0; start < y.Length; start += rowLength)
        {
            var yr = y.Slice(start, rowLength);
            var wr = w.Slice(start, rowLength);
            var acc = Vector<float>.Zero;
            int k = 0;
            for (; k <= rowLength - Vector<float>.Count; k += Vector<float>.Count)
            {
                var v = new Vector<float>(yr[k..]);
                acc = Vector.FusedMultiplyAdd(v * v, new Vector<float>(wr[k..]), acc);
            }
            double row = Vector.Sum(acc);
            for (; k < rowLength; k++) row += (double)yr[k] * yr[k] * wr[k];
            total += row;
        }
        return total;
    }

    /// <summary>
    /// Woodbury in the scaled form V = D^-½·U·S^½: (D + U S Uᵀ)⁻¹ = D^-½ (I − V (I + VᵀV)⁻¹ Vᵀ) D^-½.
    /// The capacitance I + VᵀV has eigenvalues ≥ 1 whatever the scales of d and s (no S⁻¹, so s = 0 is fine),
    /// and is factored in float64; the O(n·r·k) work runs as three float32 GEMMs.
    /// Requires d &gt; 0 and s ≥ 0 (a precision matrix).
    /// </summary>
    public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                              ReadOnlySpan<float> b, int k, Span<float> output)
    {
        CheckWoodbury(d, u, s, n, r, b, k, output);
        if (n == 0 || k == 0) return;

        var pool = ArrayPool<float>.Shared;
        float[] invSqrtD = pool.Rent(n), sqrtS = pool.Rent(Math.Max(r, 1)), v = pool.Rent(Math.Max(n * r, 1)),
                vtv = pool.Rent(Math.Max(r * r, 1)), t = pool.Rent(Math.Max(r * k, 1));
        double[] capacitance = ArrayPool<double>.Shared.Rent(Math.Max(r * r, 1)), rhs = ArrayPool<double>.Shared.Rent(Math.Max(r * k, 1));
        try
        {
            for (int i = 0; i < n; i++) invSqrtD[i] = (float)(1 / Math.Sqrt(d[i]));
            for (int j = 0; j < r; j++) sqrtS[j] = MathF.Sqrt(s[j]);
            var vSpan = v.AsSpan(0, n * r);
            bool finite = ScaleRows(u, n, r, invSqrtD, sqrtS.AsSpan(0, r), vSpan)
                        & ScaleRows(b, n, k, invSqrtD, default, output); // output ← D^-½ B
            if (!finite) throw FisherKernelsException.Argument("Woodbury: D^-½·U·S^½ or D^-½·B overflows float32 (d too small, or U, s or B too large)");

            Gemm(new GemmShape(r, r, n, TransA: true), vSpan, vSpan, vtv.AsSpan(0, r * r));
            for (int i = 0; i < r; i++)
                for (int j = 0; j <= i; j++)
                    capacitance[i * r + j] = (i == j ? 1 : 0) + 0.5 * ((double)vtv[i * r + j] + vtv[j * r + i]);
            if (!Cholesky.TryFactor(capacitance.AsSpan(0, r * r), r, UsesNativeBlas))
                throw FisherKernelsException.Backend($"Woodbury: the capacitance matrix I + VᵀV [{r} × {r}] is not positive definite (overflow in U, s or 1/d?)");

            Gemm(new GemmShape(r, k, n, TransA: true), vSpan, output, t.AsSpan(0, r * k)); // Vᵀ D^-½ B
            for (int i = 0; i < r * k; i++) rhs[i] = t[i];
            Cholesky.Solve(capacitance.AsSpan(0, r * r), r, rhs.AsSpan(0, r * k), k);
            for (int i = 0; i < r * k; i++) t[i] = (float)rhs[i];
            Gemm(new GemmShape(n, k, r, Alpha: -1, Beta: 1), vSpan, t.AsSpan(0, r * k), output);
            ScaleRows(output, n, k, invSqrtD, default, output);
        }
        finally
        {
            pool.Return(invSqrtD); pool.Return(sqrtS); pool.Return(v); pool.Return(vtv); pool.Return(t);
            ArrayPool<double>.Shared.Return(capacitance); ArrayPool<double>.Shared.Return(rhs);
        }
    }

    /// <summary>
    /// y[i, j] = x[i, j]·rowScale[i]·colScale[j] (colScale empty: 1), in place when x and y are the same buffer.
    /// Returns false when a result overflows to ∞, found with one extra multiply per element.
    /// Optimized at once: a bench or a first call should not run tier-0 code.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool ScaleRows(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> rowScale, ReadOnlySpan<float> colScale, Span<float> y)
    {
        int width = Vector<float>.Count;
        var poison = Vector<float>.Zero; // stays 0 unless some product is ∞ or NaN (∞·0 = NaN)
        float scalarPoison = 0;
        for (int i = 0; i < rows; i++)
        {
            var xr = x.Slice(i * cols, cols);
            var yr = y.Slice(i * cols, cols);
            float c = rowScale[i];
            int j = 0;
            for (; j <= cols - width; j += width)
            {
                var value = new Vector<float>(xr[j..]) * c;
                if (!colScale.IsEmpty) value *= new Vector<float>(colScale[j..]);
                value.CopyTo(yr[j..]);
                poison += value * Vector<float>.Zero;
            }
            for (; j < cols; j++)
            {
                float value = xr[j] * c * (colScale.IsEmpty ? 1 : colScale[j]);
                yr[j] = value;
                scalarPoison += value * 0;
            }
        }
        return Vector.Sum(poison) == 0 && scalarPoison == 0;
    }

    internal static void CheckWoodbury(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                                      ReadOnlySpan<float> b, int k, ReadOnlySpan<float> output)
    {
        if (n < 0 || r < 0 || k < 0) throw FisherKernelsException.Argument($"Woodbury: negative size (n {n}, r {r}, k {k})");
        Need("d", n, d.Length); Need("U", (long)n * r, u.Length); Need("s", r, s.Length);
        Need("B", (long)n * k, b.Length); Need("the output", (long)n * k, output.Length);
        Finite.Require(d, "Woodbury: d"); Finite.Require(u, "Woodbury: U");
        Finite.Require(s, "Woodbury: s"); Finite.Require(b, "Woodbury: B");
        for (int i = 0; i < n; i++)
            if (!(d[i] > 0)) throw FisherKernelsException.Argument($"Woodbury: the diagonal d must be positive, d[{i}] = {d[i]}");
        for (int j = 0; j < r; j++)
            if (!(s[j] >= 0)) throw FisherKernelsException.Argument($"Woodbury: the low-rank scales s must be non-negative, s[{j}] = {s[j]}");

        static void Need(string name, long needed, int length)
        {
            if (length != needed) throw FisherKernelsException.Argument($"Woodbury: {name} needs {needed} elements, got {length}");
        }
    }
}

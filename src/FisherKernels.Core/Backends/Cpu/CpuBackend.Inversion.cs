using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
using FisherKernels.Linalg;

namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Scratch per KronQuadratic buffer: batches of X are cut so that each pooled buffer stays this small (unless one X is larger).</summary>
    private const long KronScratchElements = 1 << 22;

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => SymmetricEigensolver.Decompose(a, n, eigenvalues, eigenvectors, UsesNativeBlas);

    /// <summary>
    /// Two GEMMs per batch of X — T = X·Q_A with all X stacked as one tall matrix, then Y_i = Q_Gᵀ·T_i batched with
    /// Q_G broadcast — and one fused pass Σ Y² · (1 / denominator) per X. Scratch comes from the shared pool.
    /// </summary>
    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        ArgumentNullException.ThrowIfNull(basis);
        int g = basis.GDim, a = basis.ADim;
        long size = (long)g * a;
        if (count < 0) throw FisherKernelsException.Argument($"KronQuadratic: negative count {count}");
        if (xs.Length != count * size)
            throw FisherKernelsException.Argument($"KronQuadratic: {count} gradients [{g} × {a}] need {count * size} elements, got {xs.Length}");
        if (output.Length != count) throw FisherKernelsException.Argument($"KronQuadratic: {count} gradients need {count} outputs, got {output.Length}");
        Finite.Require(xs, "KronQuadratic: the gradients X");
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
            for (int i = 0; i < n; i++)
            {
                var row = v.AsSpan(i * r, r);
                TensorPrimitives.Multiply(u.Slice(i * r, r), sqrtS.AsSpan(0, r), row);
                TensorPrimitives.Multiply(row, invSqrtD[i], row);
                TensorPrimitives.Multiply(b.Slice(i * k, k), invSqrtD[i], output.Slice(i * k, k)); // output ← D^-½ B
            }

            Gemm(new GemmShape(r, r, n, TransA: true), v.AsSpan(0, n * r), v.AsSpan(0, n * r), vtv.AsSpan(0, r * r));
            for (int i = 0; i < r; i++)
                for (int j = 0; j <= i; j++)
                    capacitance[i * r + j] = (i == j ? 1 : 0) + 0.5 * ((double)vtv[i * r + j] + vtv[j * r + i]);
            if (!Cholesky.TryFactor(capacitance.AsSpan(0, r * r), r, UsesNativeBlas))
                throw FisherKernelsException.Backend($"Woodbury: the capacitance matrix I + VᵀV [{r} × {r}] is not positive definite (overflow in U, s or 1/d?)");

            Gemm(new GemmShape(r, k, n, TransA: true), v.AsSpan(0, n * r), output, t.AsSpan(0, r * k)); // Vᵀ D^-½ B
            for (int i = 0; i < r * k; i++) rhs[i] = t[i];
            Cholesky.Solve(capacitance.AsSpan(0, r * r), r, rhs.AsSpan(0, r * k), k);
            for (int i = 0; i < r * k; i++) t[i] = (float)rhs[i];
            Gemm(new GemmShape(n, k, r, Alpha: -1, Beta: 1), v.AsSpan(0, n * r), t.AsSpan(0, r * k), output);
            for (int i = 0; i < n; i++) TensorPrimitives.Multiply(output.Slice(i * k, k), invSqrtD[i], output.Slice(i * k, k));
        }
        finally
        {
            pool.Return(invSqrtD); pool.Return(sqrtS); pool.Return(v); pool.Return(vtv); pool.Return(t);
            ArrayPool<double>.Shared.Return(capacitance); ArrayPool<double>.Shared.Return(rhs);
        }
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

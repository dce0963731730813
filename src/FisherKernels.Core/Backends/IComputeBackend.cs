namespace FisherKernels.Backends;

/// <summary>
/// Shape of a (batched) row-major GEMM: for each batch b,
/// C_b ← α·op(A_b)·op(B_b) + β·C_b with op(A) [M×K], op(B) [K×N], C [M×N].
/// Matrices are contiguous: A is stored [M×K] (or [K×M] when TransA), B [K×N] (or [N×K] when TransB).
/// Batch strides are in elements; a stride of 0 broadcasts that operand over the batch.
/// </summary>
public readonly record struct GemmShape(
    int M, int N, int K,
    bool TransA = false, bool TransB = false,
    float Alpha = 1f, float Beta = 0f,
    int BatchCount = 1, long StrideA = 0, long StrideB = 0, long StrideC = 0)
{
    public long Flops => 2L * M * N * K * BatchCount;
}

/// <summary>
/// The backend seam (ARCHITECTURE.md): a handful of coarse operations that every backend implements,
/// each checked by the conformance suite against a float64 reference. Buffers are host memory in
/// row-major order; a device backend keeps pooled device buffers behind these calls.
/// </summary>
public interface IComputeBackend : IDisposable
{
    /// <summary>"cpu", "cuda", "opencl" or "ilgpu-cpu".</summary>
    string Name { get; }

    /// <summary>The device in words, for benchmark tables.</summary>
    string Device { get; }

    /// <summary>
    /// Kernel family 1. <c>F ← β·F + α·X̃ᵀX̃</c> with X̃ = [X | 1] when <paramref name="appendOne"/>,
    /// over the rows whose <paramref name="rowMask"/> byte is non-zero (all rows when the mask is empty).
    /// <paramref name="x"/> is [rows × cols]; <paramref name="factor"/> is the full symmetric
    /// [(cols+appendOne) × (cols+appendOne)] matrix, both triangles written; with <paramref name="upperOnly"/> only the
    /// upper triangle (j ≥ i) is computed and the lower one is left unspecified (a caller that updates a factor many times
    /// mirrors it once, when it is read).
    /// </summary>
    void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                          float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false);

    /// <summary>
    /// Several <see cref="AccumulateFactor"/> calls on distinct factors (a K-FAC batch's layers). The results are those of
    /// the calls one after another; a backend may run them side by side.
    /// </summary>
    void AccumulateFactors(IReadOnlyList<FactorAccumulation> updates)
    {
        foreach (var u in updates) AccumulateFactor(u.X, u.Rows, u.Cols, u.AppendOne, u.Alpha, u.Beta, u.Factor, u.RowMask, u.UpperOnly);
    }

    /// <summary>Batched row-major GEMM (see <see cref="GemmShape"/>).</summary>
    void Gemm(in GemmShape shape, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c);

    /// <summary>
    /// Kernel family 3. Linear-layer JVP over rows positions: <c>dy = x·dWᵀ + dx·Wᵀ + db</c> with
    /// x, dx [rows × in], W, dW [out × in], db [out] (empty when the layer has no bias), dy [rows × out].
    /// </summary>
    void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                   ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy);

    /// <summary>
    /// Kernel family 2. Symmetric eigendecomposition in float64 of the row-major [n × n] matrix
    /// <paramref name="a"/>: ascending eigenvalues, eigenvectors as the columns of the row-major
    /// [n × n] <paramref name="eigenvectors"/>.
    /// </summary>
    void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors);

    /// <summary>
    /// Kernel family 2. <see cref="SymmetricEigen(ReadOnlySpan{double}, int, Span{double}, Span{double})"/> with float32 input
    /// and results, for the large K-FAC factors (<see cref="KronEigenbasis"/> checks the result in float64 and redoes it in
    /// float64 when it is not accurate enough). A backend without a float32 solver decomposes in float64 and rounds.
    /// </summary>
    void SymmetricEigen(ReadOnlySpan<float> a, int n, Span<float> eigenvalues, Span<float> eigenvectors)
    {
        if (n < 0) throw FisherKernelsException.Argument($"eigendecomposition: negative size {n}");
        var wide = new double[a.Length];
        for (int i = 0; i < a.Length; i++) wide[i] = a[i];
        var values = new double[eigenvalues.Length];
        var vectors = new double[eigenvectors.Length];
        SymmetricEigen(wide, n, values, vectors);
        for (int i = 0; i < values.Length; i++) eigenvalues[i] = (float)values[i];
        for (int i = 0; i < vectors.Length; i++) eigenvectors[i] = (float)vectors[i];
    }

    /// <summary>
    /// Kernel family 2. For each of <paramref name="count"/> matrices X_i [g × a] in <paramref name="xs"/>:
    /// <c>out[i] = vec(X_i)ᵀ (M·A⊗G + τ·I)⁻¹ vec(X_i) = Σ_jk (Q_Gᵀ X_i Q_A)_jk² / (M λ_G,j λ_A,k + τ)</c>.
    /// </summary>
    void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output);

    /// <summary>
    /// Kernel family 2. <c>out = (diag(d) + U diag(s) Uᵀ)⁻¹ B</c> by Woodbury; d [n], U [n × r], s [r],
    /// B and out [n × k].
    /// </summary>
    void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                       ReadOnlySpan<float> b, int k, Span<float> output);
}

/// <summary>The arguments of one <see cref="IComputeBackend.AccumulateFactor"/> call, for <see cref="IComputeBackend.AccumulateFactors"/>.</summary>
public sealed record FactorAccumulation(float[] X, int Rows, int Cols, bool AppendOne, float Alpha, float Beta, float[] Factor, byte[] RowMask, bool UpperOnly)
{
    /// <summary>Elements of the factor: its share of the work.</summary>
    public long Size => (long)(Cols + (AppendOne ? 1 : 0)) * (Cols + (AppendOne ? 1 : 0));
}

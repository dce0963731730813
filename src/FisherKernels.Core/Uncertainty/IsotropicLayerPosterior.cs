using FisherKernels.Backends;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>
/// Σ = I on one layer's <c>vec([W | b])</c> (<c>--method isotropic</c>, the gradient-norm estimator of SPEC §4): every quadratic
/// form is a squared norm. No curvature, no prior. <paramref name="withBias"/> says whether the bias is among the parameters.
/// </summary>
public sealed class IsotropicLayerPosterior(string layer, int inFeatures, int outFeatures, bool withBias, IComputeBackend backend)
    : LayerPosterior(layer, withBias, inFeatures + (withBias ? 1 : 0), outFeatures, positions: 0, priorPrecision: double.NaN, index: 0)
{
    protected override string Form => "isotropic (Σ = I)";

    /// <summary>Nothing to decompose.</summary>
    internal override IEnumerable<(string Name, NdArray Tensor)> Decomposition() => [];

    protected override void QuadraticCore(ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        int size = GDim * ADim;
        for (int c = 0; c < count; c++) output[c] = (float)SumOfSquares(xs.Slice(c * size, size));
    }

    /// <summary>X itself [out × in(+1)], plus [rows × rows] for <c>G Gᵀ</c> when the input Gram is given.</summary>
    public override long OuterProductWorkspace(int rows) => (long)GDim * ADim + (long)rows * rows;

    public override bool UsesInputGram => true;

    /// <summary>
    /// <c>‖Gᵀ Ã‖²</c>: X formed (2·rows·in·out flops), or with the input Gram as <c>Σ_ij (Ã Ãᵀ)_ij (G Gᵀ)_ij</c> (2·rows²·out),
    /// cheaper while rows are fewer than the inputs.
    /// </summary>
    protected override double OuterProductQuadraticCore(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows,
                                                        Span<float> workspace, ReadOnlySpan<float> inputGram)
    {
        if (inputGram.IsEmpty)
        {
            Span<float> x = workspace[..(GDim * ADim)];
            backend.Gemm(new GemmShape(GDim, ADim, rows, TransA: true), outputGradients, projectedInputs, x);
            return SumOfSquares(x);
        }
        Span<float> gg = workspace.Slice(GDim * ADim, rows * rows);
        if (backend is Backends.Cpu.CpuBackend cpu && cpu.TrySymmetricProduct(outputGradients, rows, GDim, gg))
            return SymmetricInner(inputGram, gg, rows);
        backend.Gemm(new GemmShape(rows, rows, GDim, TransB: true), outputGradients, outputGradients, gg);
        double sum = 0;
        for (int i = 0; i < gg.Length; i++) sum += (double)inputGram[i] * gg[i];
        return sum;
    }

    /// <summary>
    /// Σ_ij S_ij T_ij for symmetric [n × n] S (whole) and T (its upper triangle only): the diagonal once, each pair above
    /// it twice. (Both Grams are symmetric, so G Gᵀ needs only its upper half: half the position's Gram flops.)
    /// </summary>
    internal static double SymmetricInner(ReadOnlySpan<float> s, ReadOnlySpan<float> upper, int n)
    {
        double diagonal = 0, above = 0;
        for (int i = 0; i < n; i++)
        {
            diagonal += (double)s[i * n + i] * upper[i * n + i];
            for (int j = i + 1; j < n; j++) above += (double)s[i * n + j] * upper[i * n + j];
        }
        return diagonal + 2 * above;
    }

    private protected override void SamplePerturbationCore(ref SplitMix64 rng, Span<float> delta)
    {
        for (int i = 0; i < delta.Length; i++) delta[i] = (float)rng.NextGaussian();
    }

    public override double LogDeterminant() => 0;

    /// <summary>The gradient of <c>s_y</c> is <c>e_y ãᵀ</c>: its squared norm <c>‖ã‖²</c>.</summary>
    protected override void TargetOutputVarianceCore(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance)
    {
        for (int r = 0; r < rows; r++)
            if (targets[r] != -100) variance[r] = SumOfSquares(inputs.Slice(r * inF, inF)) + (HasBias ? 1 : 0);
    }

    /// <summary>Σ x² accumulated in double by blocks of 1024 (float sums of a million squares would lose digits).</summary>
    public static double SumOfSquares(ReadOnlySpan<float> values)
    {
        const int Block = 1024;
        double sum = 0;
        for (int i = 0; i < values.Length; i += Block)
            sum += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(values.Slice(i, Math.Min(Block, values.Length - i)));
        return sum;
    }
}

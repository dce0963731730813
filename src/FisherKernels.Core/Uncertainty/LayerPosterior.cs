using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>
/// One layer's posterior covariance Σ on <c>vec([W | b])</c>, <c>W</c> as <c>[out, in]</c> (SPEC §4): the small algebra
/// every consumer (scores, linearized sampling, the last-layer variance, the marginal likelihood) talks to. Each form
/// of Σ is one subclass: <see cref="DenseKroneckerPosterior"/> (both factors' eigenbases; <see cref="EkfacPosterior"/> with
/// EK-FAC's eigenvalues there), <see cref="WoodburyPosterior"/>
/// (a factor too large for the memory budget as diagonal plus low rank) and <see cref="IsotropicLayerPosterior"/>
/// (Σ = I, the gradient-norm estimator). A new curvature form (EK-FAC, a low-rank factor side) is a new subclass.
/// The public members check their arguments here once; the subclasses implement the <c>…Core</c> members.
/// </summary>
public abstract class LayerPosterior
{
    private protected LayerPosterior(string layer, bool hasBias, int aDim, int gDim, double positions, double priorPrecision, int index)
    {
        Layer = layer;
        HasBias = hasBias;
        ADim = aDim;
        GDim = gDim;
        Positions = positions;
        PriorPrecision = priorPrecision;
        Index = index;
    }

    /// <summary>
    /// The posterior of one curvature block under <paramref name="options"/>: the dense Kronecker eigenbasis when it fits the
    /// memory budget (or the larger factor is no wider than the rank), else the Woodbury low-rank form.
    /// </summary>
    public static LayerPosterior Build(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options)
        => Build(block, index, backend, options, cached: null);

    /// <summary>As above; with <paramref name="cached"/>, the decompositions come from the posterior cache instead of being computed.</summary>
    internal static LayerPosterior Build(KroneckerBlock block, int index, IComputeBackend backend, PosteriorOptions options, CachedDecomposition? cached)
    {
        ArgumentNullException.ThrowIfNull(block);
        try
        {
            // A sketched (low-rank) side always takes the Woodbury form, its U, s, d recovered by the Nyström method.
            // EK-FAC's E needs the dense eigenbasis it was computed in; a layer whose eigenbasis is over the budget keeps K-FAC's Woodbury form.
            bool dense = block.IsDense && (DenseKroneckerPosterior.Bytes(block.ADim, block.GDim) <= options.MemoryBudgetBytes || Math.Max(block.ADim, block.GDim) <= options.Rank);
            if (!dense) return new WoodburyPosterior(block, index, backend, options, cached);
            return block.E is null ? new DenseKroneckerPosterior(block, index, backend, options, cached) : new EkfacPosterior(block, index, backend, options, cached);
        }
        catch (FisherKernelsException e) when (e.Kind == ErrorKind.InvalidArgument && !e.Message.Contains($"'{block.Layer}'", StringComparison.Ordinal))
        {
            throw FisherKernelsException.Argument($"layer '{block.Layer}': {e.Message}");
        }
    }

    public string Layer { get; }
    public bool HasBias { get; }
    public double Positions { get; }
    public double PriorPrecision { get; }
    public int ADim { get; }
    public int GDim { get; }

    /// <summary>The layer's place in its curvature: the stream of its random draws (<see cref="SamplePerturbation"/>).</summary>
    protected int Index { get; }

    /// <summary>Bytes the dense form needs (Q_A, Q_G and the inverse denominators, float32).</summary>
    public long DenseBytes => DenseKroneckerPosterior.Bytes(ADim, GDim);

    /// <summary>Whether a factor is held as diagonal plus low rank (<see cref="WoodburyPosterior"/>).</summary>
    public virtual bool IsLowRank => false;

    public EigenvalueRange RangeA { get; protected set; }
    public EigenvalueRange RangeG { get; protected set; }

    /// <summary>One line: eigenvalue ranges and the form of the inverse.</summary>
    public string Describe() =>
        $"layer '{Layer}': A [{ADim}]² eigenvalues {RangeA}, G [{GDim}]² eigenvalues {RangeG}, M {Positions.ToString("R", CultureInfo.InvariantCulture)}, {Form}";

    /// <summary>
    /// The decompositions this block was built from, by name (the posterior cache's tensors, SPEC §5): everything that does not
    /// depend on τ, so that a block rebuilt from them with <see cref="Build(KroneckerBlock, int, IComputeBackend, PosteriorOptions, CachedDecomposition?)"/>
    /// is the same bit for bit.
    /// </summary>
    internal abstract IEnumerable<(string Name, NdArray Tensor)> Decomposition();

    /// <summary>The form of Σ, as <see cref="Describe"/> ends.</summary>
    protected abstract string Form { get; }

    /// <summary>For each of <paramref name="count"/> matrices X <c>[out × in(+1)]</c> in <paramref name="xs"/>: <c>vec(X)ᵀ Σ vec(X)</c>.</summary>
    public void Quadratic(ReadOnlySpan<float> xs, int count, Span<float> output)
    {
        long size = (long)GDim * ADim;
        if (count < 0 || xs.Length != count * size || output.Length != count)
            throw FisherKernelsException.Argument($"layer '{Layer}': {count} matrices of [{GDim} × {ADim}] need {count * size} values and {count} outputs, got {xs.Length} and {output.Length}");
        if (count > 0) QuadraticCore(xs, count, output);
    }

    protected abstract void QuadraticCore(ReadOnlySpan<float> xs, int count, Span<float> output);

    /// <summary>
    /// The rows of Ã (<c>[rows × in(+1)]</c>, the layer's inputs with the homogeneous 1 when it has a bias) as
    /// <see cref="OuterProductQuadratic"/> takes them (the dense form: <c>Ã Q_A</c>; the others: Ã itself).
    /// Computed once per sequence and shared by all its positions.
    /// </summary>
    public void ProjectInputRows(ReadOnlySpan<float> homogeneousInputs, int rows, Span<float> projected)
    {
        if (homogeneousInputs.Length != (long)rows * ADim || projected.Length != (long)rows * ADim)
            throw FisherKernelsException.Argument($"layer '{Layer}': {rows} input rows of {ADim} need {(long)rows * ADim} values in and out, got {homogeneousInputs.Length} and {projected.Length}");
        if (rows > 0) ProjectInputRowsCore(homogeneousInputs, rows, projected);
    }

    protected virtual void ProjectInputRowsCore(ReadOnlySpan<float> homogeneousInputs, int rows, Span<float> projected) => homogeneousInputs.CopyTo(projected);

    /// <summary>Floats of workspace <see cref="OuterProductQuadratic"/> needs for <paramref name="rows"/> rows.</summary>
    public abstract long OuterProductWorkspace(int rows);

    /// <summary>Whether <see cref="OuterProductQuadratic"/> uses the Gram <c>Ã Ãᵀ</c> of the rows when given one.</summary>
    public abstract bool UsesInputGram { get; }

    /// <summary>
    /// <c>vec(X)ᵀ Σ vec(X)</c> for a gradient that reaches the layer through its outputs, <c>X = Σ_m g_m ã_mᵀ = Gᵀ Ã</c>:
    /// <paramref name="outputGradients"/> G <c>[rows × out]</c>, <paramref name="projectedInputs"/> the same rows of
    /// <see cref="ProjectInputRows"/>, and optionally (when <see cref="UsesInputGram"/>) <paramref name="inputGram"/> <c>Ã Ãᵀ</c>
    /// <c>[rows × rows]</c> of the same rows, which saves work while rows are fewer than the inputs.
    /// </summary>
    public double OuterProductQuadratic(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows, Span<float> workspace,
                                        ReadOnlySpan<float> inputGram = default)
    {
        if (!inputGram.IsEmpty && (!UsesInputGram || inputGram.Length != (long)rows * rows))
            throw FisherKernelsException.Argument($"layer '{Layer}': an input Gram of [{rows} × {rows}] is for a layer with a curved subspace, got {inputGram.Length} values");
        if (outputGradients.Length != (long)rows * GDim || projectedInputs.Length != (long)rows * ADim || workspace.Length < OuterProductWorkspace(rows))
            throw FisherKernelsException.Argument($"layer '{Layer}': {rows} rows need output gradients [{rows} × {GDim}], inputs [{rows} × {ADim}] and {OuterProductWorkspace(rows)} floats of workspace");
        return rows == 0 ? 0 : OuterProductQuadraticCore(outputGradients, projectedInputs, rows, workspace, inputGram);
    }

    protected abstract double OuterProductQuadraticCore(ReadOnlySpan<float> outputGradients, ReadOnlySpan<float> projectedInputs, int rows,
                                                        Span<float> workspace, ReadOnlySpan<float> inputGram);

    /// <summary>
    /// Draws <c>δ = [δW | δb] ~ N(0, Σ)</c> (<c>[out × in(+1)]</c>), a pure function of (seed, sample, layer index), so the
    /// k perturbations of linearized sampling can be drawn layer by layer and propagated by JVPs.
    /// </summary>
    public void SamplePerturbation(long seed, int sample, Span<float> delta)
    {
        long size = (long)GDim * ADim;
        if (delta.Length != size) throw FisherKernelsException.Argument($"layer '{Layer}': a perturbation is [{GDim} × {ADim}], got {delta.Length} values");
        var rng = new SplitMix64(seed, sample, stream: Index);
        SamplePerturbationCore(ref rng, delta);
    }

    private protected abstract void SamplePerturbationCore(ref SplitMix64 rng, Span<float> delta);

    /// <summary>
    /// <c>Σ vec(X)</c> for one X <c>[out × in(+1)]</c>, written to <paramref name="result"/> in the same layout: the solve
    /// <c>(M·A⊗G + τ·I) d = x</c> of the natural gradient (SPEC §4 <c>natgrad</c>). Only the dense form has it.
    /// </summary>
    public void Solve(ReadOnlySpan<float> x, Span<float> result)
    {
        long size = (long)GDim * ADim;
        if (x.Length != size || result.Length != size)
            throw FisherKernelsException.Argument($"layer '{Layer}': a solve takes and gives [{GDim} × {ADim}], got {x.Length} and {result.Length} values");
        SolveCore(x, result);
    }

    protected virtual void SolveCore(ReadOnlySpan<float> x, Span<float> result) => throw NeedsDense("the natural gradient");

    /// <summary>
    /// <c>log det(M·A⊗G + τ·I)</c>, the log-determinant of this layer's precision Σ⁻¹ (the marginal likelihood's Occam term,
    /// SPEC §4). The isotropic Σ = I has 0.
    /// </summary>
    public abstract double LogDeterminant();

    /// <summary>
    /// Closed-form variance of the target output <c>s_y = (W a + b)_y</c> under this layer's posterior (for the output layer,
    /// the variance of the target logit from the last layer alone). Its gradient is the rank-1 <c>e_y ãᵀ</c>, so
    /// <c>var s_y = vec(e_y ãᵀ)ᵀ Σ vec(e_y ãᵀ)</c>. <paramref name="inputs"/> <c>[rows × in]</c> (without the homogeneous 1);
    /// rows whose target is -100 get NaN.
    /// </summary>
    public void TargetOutputVariance(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, Span<double> variance)
    {
        int inF = HasBias ? ADim - 1 : ADim;
        if (rows < 0 || inputs.Length != (long)rows * inF || targets.Length != rows || variance.Length != rows)
            throw FisherKernelsException.Argument($"layer '{Layer}': target output variance of {rows} rows needs inputs [{rows} × {inF}], {rows} targets and outputs");
        for (int r = 0; r < rows; r++)
            if (targets[r] != -100 && (targets[r] < 0 || targets[r] >= GDim))
                throw FisherKernelsException.Argument($"layer '{Layer}': target {targets[r]} at row {r} is outside the {GDim} outputs");
        variance.Clear();
        if (rows > 0) TargetOutputVarianceCore(inputs, targets, rows, inF, variance);
        for (int r = 0; r < rows; r++)
            if (targets[r] == -100) variance[r] = double.NaN;
    }

    protected abstract void TargetOutputVarianceCore(ReadOnlySpan<float> inputs, ReadOnlySpan<long> targets, int rows, int inF, Span<double> variance);

    /// <summary>
    /// Closed-form variance of every output <c>s_v = (W a + b)_v</c> for <paramref name="rows"/> inputs a (<c>[rows × in]</c>),
    /// written to <paramref name="variance"/> <c>[rows × out]</c>. Only the dense form has it.
    /// </summary>
    public virtual void OutputVariance(ReadOnlySpan<float> inputs, int rows, Span<float> variance) => throw NeedsDense("the closed-form output variance");

    /// <summary>
    /// Closed-form (delta-method) variance of <c>p_y = softmax(s)_y</c> for an output layer. Only the dense form has it.
    /// </summary>
    public virtual void TargetProbabilityVariance(ReadOnlySpan<float> inputs, ReadOnlySpan<float> logits, ReadOnlySpan<long> targets, int rows, Span<double> variance)
        => throw NeedsDense("the closed-form probability variance");

    protected FisherKernelsException NeedsDense(string what) => FisherKernelsException.Unsupported(
        $"layer '{Layer}': {what} needs the dense eigenbasis ({DenseBytes} bytes), but the layer's posterior is {Form}; raise the memory budget");

    /// <summary>Σ x² w (Σ x² when <paramref name="w"/> is empty), in float blocks summed in double: a million float products summed in float would lose digits. Squares x in place.</summary>
    protected static double WeightedSquares(Span<float> x, ReadOnlySpan<float> w)
    {
        const int Block = 4096;
        double sum = 0;
        for (int i = 0; i < x.Length; i += Block)
        {
            Span<float> block = x.Slice(i, Math.Min(Block, x.Length - i));
            if (w.IsEmpty) { sum += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(block); continue; }
            System.Numerics.Tensors.TensorPrimitives.Multiply(block, block, block);
            sum += System.Numerics.Tensors.TensorPrimitives.Dot(block, w.Slice(i, block.Length));
        }
        return sum;
    }

    /// <summary>The rows of Ã, <c>[rows × in(+1)]</c>: <paramref name="inputs"/> <c>[rows × in]</c> with the homogeneous 1 when the layer has a bias.</summary>
    protected float[] Homogeneous(ReadOnlySpan<float> inputs, int rows, int inF)
    {
        var homogeneous = new float[(long)rows * ADim];
        for (int r = 0; r < rows; r++)
        {
            inputs.Slice(r * inF, inF).CopyTo(homogeneous.AsSpan(r * ADim, inF));
            if (HasBias) homogeneous[r * ADim + inF] = 1;
        }
        return homogeneous;
    }

    /// <summary>Rows of β² with β = Q_Aᵀ ã (<paramref name="qa"/>: A's eigenvectors as columns, [ADim × ADim]): [rows × ADim].</summary>
    protected float[] ProjectInputs(IComputeBackend backend, float[] qa, ReadOnlySpan<float> inputs, int rows, int inF)
    {
        float[] homogeneous = Homogeneous(inputs, rows, inF);
        var projected = new float[homogeneous.Length];
        backend.Gemm(new GemmShape(rows, ADim, ADim), homogeneous, qa, projected);
        for (int i = 0; i < projected.Length; i++) projected[i] *= projected[i];
        return projected;
    }

    protected static EigenvalueRange RangeOf(double[] lambda) => new(lambda.Min(), lambda.Max());
}

/// <summary>
/// One layer's tensors in the posterior cache (keys <c>&lt;layer&gt;.&lt;name&gt;</c>), read with their element type and shape
/// checked: a cache that does not fit is an error, and its caller rebuilds instead (never trusts it).
/// </summary>
internal sealed class CachedDecomposition(IReadOnlyDictionary<string, NdArray> tensors, string layer)
{
    public static string Key(string layer, string name) => $"{layer}.{name}";

    public string Describe(string name) => $"posterior cache tensor '{Key(layer, name)}'";

    public float[] Float32(string name, params int[] shape) => Get<float>(name, shape).Data;

    public double[] Float64(string name, params int[] shape) => Get<double>(name, shape).Data;

    NdArray<T> Get<T>(string name, int[] shape) where T : unmanaged
    {
        if (!tensors.TryGetValue(Key(layer, name), out NdArray? array)) throw FisherKernelsException.Format($"{Describe(name)} is missing");
        if (array is not NdArray<T> typed) throw FisherKernelsException.Format($"{Describe(name)} is {array.ElementType}, not {ElementTypes.Of<T>()}");
        if (shape.Length == 0 ? typed.Rank != 1 : !typed.Shape.AsSpan().SequenceEqual(shape))
            throw FisherKernelsException.Format($"{Describe(name)} has shape [{ShapeUtil.Format(typed.Shape)}], not [{ShapeUtil.Format(shape)}]");
        return typed;
    }
}

using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;

namespace FisherKernels.Uncertainty;

/// <summary>Options of the Laplace posterior (SPEC §4 and <c>score --method kfac</c>).</summary>
public sealed record PosteriorOptions
{
    /// <summary>τ, <c>--prior-precision</c>.</summary>
    public double PriorPrecision { get; init; } = 1.0;

    /// <summary>
    /// τ per layer (<c>--prior-precision auto-layer</c>, SPEC §4), overriding <see cref="PriorPrecision"/> for the layers it
    /// names; null for one τ everywhere.
    /// </summary>
    public IReadOnlyDictionary<string, double>? LayerPriorPrecisions { get; init; }

    /// <summary>Whether a τ stored in the curvature (<c>prior_precision</c>, written by <c>calibrate</c>) replaces these when the posterior is loaded: no <c>--prior-precision</c> given.</summary>
    public bool UseStoredPriorPrecision { get; init; }

    /// <summary>The τ of <paramref name="layer"/>.</summary>
    public double PriorPrecisionOf(string layer) =>
        LayerPriorPrecisions is not null && LayerPriorPrecisions.TryGetValue(layer, out double tau) ? tau : PriorPrecision;

    /// <summary>These options with the τ stored in a curvature (<see cref="KfacCurvature.PriorPrecision"/>) when <see cref="UseStoredPriorPrecision"/> and there is one.</summary>
    public PosteriorOptions WithStored(StoredPriorPrecision? stored) =>
        UseStoredPriorPrecision && stored is not null ? this with { PriorPrecision = stored.Shared, LayerPriorPrecisions = stored.PerLayer } : this;

    /// <summary>r, <c>--rank</c>: eigenvectors kept of a factor too large for a dense eigenbasis.</summary>
    public int Rank { get; init; } = 64;

    /// <summary>Largest dense eigenbasis (bytes) a layer may hold; a layer above it gets the low-rank (Woodbury) form.</summary>
    public long MemoryBudgetBytes { get; init; } = 1L << 30;

    /// <summary>
    /// The posterior cache file (<c>--posterior-cache</c>, SPEC §5), or null for the default beside the curvature
    /// (<see cref="PosteriorCacheFile.PathFor"/>). A file given here that belongs to another curvature is refused.
    /// </summary>
    public string? CachePath { get; init; }

    public void Validate()
    {
        if (!double.IsFinite(PriorPrecision) || !(PriorPrecision > 0))
            throw FisherKernelsException.Argument($"--prior-precision must be a positive number, got {PriorPrecision}");
        foreach (var (layer, tau) in LayerPriorPrecisions ?? new Dictionary<string, double>())
            if (!double.IsFinite(tau) || !(tau > 0)) throw FisherKernelsException.Argument($"the prior precision of layer '{layer}' must be a positive number, got {tau}");
        if (Rank < 1) throw FisherKernelsException.Argument($"--rank must be at least 1, got {Rank}");
        if (MemoryBudgetBytes < 0) throw FisherKernelsException.Argument($"--memory-budget must be non-negative, got {MemoryBudgetBytes}");
    }
}

/// <summary>Smallest and largest eigenvalue of a Kronecker factor.</summary>
public readonly record struct EigenvalueRange(double Min, double Max)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"[{Min:G4}, {Max:G4}]");
}

/// <summary>
/// The K-FAC Laplace posterior (SPEC §4): per layer the covariance <c>Σ = (M·A⊗G + τ·I)⁻¹</c>, block-diagonal over
/// layers, each block a <see cref="LayerPosterior"/> in the form the memory budget allows, decomposed once (float32
/// eigendecompositions checked in float64 for factors of 512 or more, float64 otherwise: <see cref="KronEigenbasis.Float32Tolerance"/>)
/// when the posterior is built.
/// </summary>
public sealed class KfacPosterior
{
    readonly Dictionary<string, LayerPosterior> byLayer = new(StringComparer.Ordinal);

    public KfacPosterior(KfacCurvature curvature, IComputeBackend backend, PosteriorOptions? options = null)
        : this(curvature, backend, options, cached: null)
    {
    }

    /// <summary>
    /// As above, with every layer's decompositions taken from <paramref name="cached"/> (the posterior cache's tensors,
    /// <see cref="Decompositions"/>) instead of computed; a tensor missing or of the wrong type or shape is a Format error.
    /// </summary>
    internal KfacPosterior(KfacCurvature curvature, IComputeBackend backend, PosteriorOptions? options, IReadOnlyDictionary<string, NdArray>? cached)
    {
        ArgumentNullException.ThrowIfNull(curvature);
        ArgumentNullException.ThrowIfNull(backend);
        Options = options ?? new PosteriorOptions();
        Options.Validate();
        foreach (KroneckerBlock block in curvature.Layers) WoodburyPosterior.EnsureOneDenseSide(block); // before any eigendecomposition
        cached ??= DecomposeSideBySide(curvature, backend, Options);
        Layers = curvature.Layers.Select((block, i) => cached is null
            ? Collected(LayerPosterior.Build(block, i, backend, Options), block)
            : LayerPosterior.Build(block, i, backend, Options, new CachedDecomposition(cached, block.Layer))).ToArray();
        foreach (LayerPosterior l in Layers) byLayer.Add(l.Layer, l);
    }

    /// <summary>
    /// An eigendecomposition of an n-wide factor leaves about 5·n² values of temporaries (the matrix, its eigenvectors,
    /// LAPACK's work): 0.2 GB for n = 3072 in float32, twice that in float64. Left to the collector's own pace they pile up while the next
    /// layers decompose (a GPT-2-small posterior peaked at 9.7 GB resident for a 3 GB live set), so a layer with a
    /// factor side of 1024 or more is followed by a collection; the heap then holds a few large arrays of floats, cheap
    /// to mark.
    /// </summary>
    static LayerPosterior Collected(LayerPosterior layer, KroneckerBlock block)
    {
        if (Math.Max(block.ADim, block.GDim) >= 1024) GC.Collect();
        return layer;
    }

    /// <summary>
    /// Every layer's decompositions computed side by side, one layer per thread, each on a one-thread backend, largest first:
    /// LAPACK's ssyevd/dsyevd spend about half their time reducing to tridiagonal form, memory-bound level-2 work that a second
    /// thread barely speeds up, so two layers at once keep both cores busier than one layer on two threads. A layer's result
    /// depends on its own factors alone (one thread, whatever the schedule), so every run gets the same posterior. Each
    /// large layer is followed by a collection, as in <see cref="Collected"/>. Null (decompose in place) on one thread, for
    /// one layer, or on a backend other than the CPU's.
    /// </summary>
    static Dictionary<string, NdArray>? DecomposeSideBySide(KfacCurvature curvature, IComputeBackend backend, PosteriorOptions options)
    {
        IReadOnlyList<KroneckerBlock> blocks = curvature.Layers;
        if (backend is not CpuBackend { Threads: > 1 } cpu || blocks.Count < 2) return null;
        static double Cost(KroneckerBlock b) => Math.Pow(b.ADim, 3) + Math.Pow(b.GDim, 3);
        int[] order = Enumerable.Range(0, blocks.Count).OrderByDescending(i => Cost(blocks[i])).ToArray();
        var results = new List<(string Name, NdArray Tensor)>[blocks.Count];
        ParallelWork.For(order.Length, cpu.Threads, k =>
        {
            int i = order[k];
            using var single = new CpuBackend(threads: 1, cpu.UsesNativeBlas);
            results[i] = Collected(LayerPosterior.Build(blocks[i], i, single, options), blocks[i]).Decomposition().ToList();
        });
        var tensors = new Dictionary<string, NdArray>(StringComparer.Ordinal);
        for (int i = 0; i < blocks.Count; i++)
            foreach (var (name, tensor) in results[i]) tensors.Add(CachedDecomposition.Key(blocks[i].Layer, name), tensor);
        return tensors;
    }

    public PosteriorOptions Options { get; }
    public double PriorPrecision => Options.PriorPrecision;

    /// <summary>Whether any layer uses EK-FAC's eigenvalues (<see cref="EkfacPosterior"/>): scores report the method <c>ekfac</c> (SPEC §6).</summary>
    public bool IsEkfac => Layers.Any(l => l is EkfacPosterior);

    /// <summary>The method name a score under this posterior reports: <c>ekfac</c> or <c>kfac</c>.</summary>
    public string MethodName => IsEkfac ? "ekfac" : "kfac";
    public IReadOnlyList<LayerPosterior> Layers { get; }

    /// <summary>Whether the posterior covers <paramref name="layer"/>: a curvature fitted on a layer selection covers only those (SPEC §2).</summary>
    public bool Contains(string layer) => byLayer.ContainsKey(layer);

    public LayerPosterior this[string layer] =>
        byLayer.TryGetValue(layer, out LayerPosterior? l) ? l : throw FisherKernelsException.Argument($"the posterior has no layer '{layer}'");

    /// <summary>
    /// The epistemic scores of one layer for one sequence (SPEC §4): <paramref name="tokenGradients"/> holds
    /// <paramref name="count"/> gradients <c>∇p_t = [∇W | ∇b]</c> (<c>[out × in(+1)]</c> each, one per targeted position).
    /// Adds <c>∇p_tᵀ Σ ∇p_t</c> to <paramref name="tokenEpistemic"/> and returns <c>∇p̄ᵀ Σ ∇p̄</c> for the mean gradient
    /// (cross terms between positions included). Sum both over layers for the block-diagonal posterior.
    /// </summary>
    public double AddEpistemic(string layer, ReadOnlySpan<float> tokenGradients, int count, Span<double> tokenEpistemic)
    {
        LayerPosterior l = this[layer];
        int size = l.GDim * l.ADim;
        if (count < 1 || tokenGradients.Length != (long)count * size || tokenEpistemic.Length != count)
            throw FisherKernelsException.Argument($"layer '{layer}': {count} gradients of [{l.GDim} × {l.ADim}] need {(long)count * size} values and {count} scores, got {tokenGradients.Length} and {tokenEpistemic.Length}");
        // One gradient at a time: a vocabulary head's gradient is [50,257 × 769], and the caller may hold many.
        var mean = new float[size];
        var quadratic = new float[1];
        for (int t = 0; t < count; t++)
        {
            ReadOnlySpan<float> x = tokenGradients.Slice(t * size, size);
            System.Numerics.Tensors.TensorPrimitives.Add(mean, x, mean);
            l.Quadratic(x, 1, quadratic);
            tokenEpistemic[t] += quadratic[0];
        }
        System.Numerics.Tensors.TensorPrimitives.Multiply(mean, 1f / count, mean);
        l.Quadratic(mean, 1, quadratic);
        return quadratic[0];
    }

    /// <summary>Every layer's decompositions as the posterior cache stores them (<c>&lt;layer&gt;.&lt;name&gt;</c>), none depending on τ.</summary>
    public IEnumerable<KeyValuePair<string, NdArray>> Decompositions() =>
        Layers.SelectMany(l => l.Decomposition().Select(t => new KeyValuePair<string, NdArray>(CachedDecomposition.Key(l.Layer, t.Name), t.Tensor)));

    /// <summary>One line per layer: eigenvalue ranges and the form of its inverse.</summary>
    public IEnumerable<string> Describe() => Layers.Select(l => l.Describe());
}

using System.Buffers;
using System.Globalization;
using System.Numerics.Tensors;
using FisherKernels.Backends;
using FisherKernels.IO;

namespace FisherKernels.Curvature;

/// <summary>Which labels the output gradients of a fit use (SPEC §3 Fisher types).</summary>
public enum FisherType
{
    /// <summary>y drawn from the model's softmax (the true Fisher; the default).</summary>
    Sampled,
    /// <summary>y = the given targets.</summary>
    Empirical,
    /// <summary>The expectation over the whole vocabulary (small vocabularies only).</summary>
    Exact,
}

/// <summary>The names of <see cref="FisherType"/> as files and the command line write them.</summary>
public static class FisherTypes
{
    public static string Name(this FisherType fisher) => fisher switch
    {
        FisherType.Sampled => "sampled",
        FisherType.Empirical => "empirical",
        FisherType.Exact => "exact",
        _ => throw new ArgumentOutOfRangeException(nameof(fisher), fisher, "not a Fisher type"),
    };

    /// <summary>The type named <paramref name="name"/>, or null.</summary>
    public static FisherType? TryParse(string name) =>
        Enum.GetValues<FisherType>().Select(f => (FisherType?)f).FirstOrDefault(f => f!.Value.Name() == name);
}

/// <summary>Options of a K-FAC fit (SPEC §3 and the <c>fit</c> command of §6).</summary>
public sealed record KfacFitOptions
{
    public FisherType Fisher { get; init; } = FisherType.Sampled;

    /// <summary>Label draws per position for the sampled Fisher (<c>--samples</c>).</summary>
    public int Samples { get; init; } = 1;

    /// <summary>Seed of every random choice of the fit: position subsampling and sampled labels.</summary>
    public long Seed { get; init; }

    /// <summary><c>--ema λ</c> in [0, 1): <c>A ← λ·A + (1-λ)·A_batch</c>; null for the running mean over all positions.</summary>
    public double? Ema { get; init; }

    /// <summary><c>--sample-positions p</c> in (0, 1]: each position is kept with probability p.</summary>
    public double SamplePositions { get; init; } = 1.0;

    /// <summary><c>--memory-budget</c>: what one layer may hold dense (SPEC §3); sides past it are sketched (<see cref="FactorSketch"/>).</summary>
    public long MemoryBudgetBytes { get; init; } = FactorPlan.DefaultBudgetBytes;

    /// <summary><c>--rank</c> of low-rank sides; their sketches have rank + 8 columns.</summary>
    public int Rank { get; init; } = FactorPlan.DefaultRank;

    /// <summary>An error naming the option that is out of range, or nothing.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(Fisher))
            throw FisherKernelsException.Argument($"--fisher '{Fisher}' is not one of {string.Join(", ", KfacCurvature.FisherTypes)}");
        if (Samples < 1) throw FisherKernelsException.Argument($"--samples must be at least 1, got {Samples}");
        if (Ema is double l && !(l >= 0 && l < 1)) throw FisherKernelsException.Argument($"--ema must be in [0, 1), got {l}");
        if (!(SamplePositions > 0 && SamplePositions <= 1))
            throw FisherKernelsException.Argument($"--sample-positions must be in (0, 1], got {SamplePositions}");
        if (MemoryBudgetBytes < 1) throw FisherKernelsException.Argument($"--memory-budget must be positive, got {MemoryBudgetBytes}");
        if (Rank < 1) throw FisherKernelsException.Argument($"--rank must be at least 1, got {Rank}");
    }
}

/// <summary>Bytes one layer needs: its two factors (also the size of the fit's state) and their dense eigenbases.</summary>
public readonly record struct LayerMemory(string Layer, long FactorBytes, long EigenbasisBytes)
{
    public long TotalBytes => FactorBytes + EigenbasisBytes;
}

/// <summary>
/// Accumulates the K-FAC factors of every layer (SPEC §3) from streamed batches, through the backend's
/// kernel family 1. Per batch: <see cref="BeginBatch"/> (draws the position mask); per layer <see cref="AddInputs"/> once
/// and <see cref="AddOutputGradients"/> once per label draw; <see cref="EndBatch"/>.
/// <para>
/// The factors are running means over the kept positions (weighted by positions, so the fit of a file is
/// the merge of the fits of its parts; a layer applied k times per position counts k·M positions); with <see cref="KfacFitOptions.Ema"/> λ the first batch sets them
/// and each later one does <c>F ← λ·F + (1-λ)·F_batch</c>, and the position count becomes the effective
/// count <c>M ← λ·M + m</c> (steady state <c>m/(1-λ)</c>: the positions the average still remembers).
/// <c>positions</c> counts the positions kept by <c>--sample-positions</c>: the factors are means over
/// exactly those, so merges stay exact.
/// </para>
/// <para>
/// Every random choice is a pure function of (seed, batch index in the token file, draw), so a fit is deterministic for the
/// same inputs, seed and thread count, a fit resumed from a checkpoint is bit-identical to an
/// uninterrupted one, and a shard starting at batch <see cref="FirstBatch"/> draws what the whole-file fit draws there.
/// </para>
/// </summary>
public sealed class KfacAccumulator : IFisherPass
{
    public const string CheckpointFormat = "fisherkernels-checkpoint/1";

    readonly IComputeBackend backend;
    readonly LayerState[] layers;
    readonly Dictionary<string, int> indexOf = new(StringComparer.Ordinal);
    byte[] mask = [];
    int batchPositions = -1;
    int keptInBatch;

    sealed class LayerState(LayerShape shape, LayerPlan plan)
    {
        public readonly LayerShape Shape = shape;
        public readonly LayerPlan Plan = plan;
        public readonly SideState A = new(shape.Layer, 'A', plan.A);
        public readonly SideState G = new(shape.Layer, 'G', plan.G);
        public double Positions;
        // This batch: rows given (-1 before the inputs), their mask, how many are kept, gradient calls so far.
        public int Rows = -1;
        public byte[] RowMask = [];
        public int Kept;
        public int GradientCalls;
    }

    /// <param name="firstBatch">The index in the token file of the first batch this accumulator sees (a shard of a cluster fit, SPEC §9): the random draws key on it.</param>
    public KfacAccumulator(IComputeBackend backend, IReadOnlyList<LayerShape> layers, KfacFitOptions options, string modelSha256, int firstBatch = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(firstBatch);
        FirstBatch = firstBatch;
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (layers.Count == 0) throw FisherKernelsException.Argument("K-FAC fit: the model has no layers (SPEC §2)");
        if (string.IsNullOrWhiteSpace(modelSha256)) throw FisherKernelsException.Argument("K-FAC fit: model_sha256 is empty");
        this.backend = backend;
        Options = options;
        ModelSha256 = modelSha256;
        this.layers = new LayerState[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            LayerShape s = layers[i];
            if (s.InFeatures < 1 || s.OutFeatures < 1)
                throw FisherKernelsException.Argument($"K-FAC fit: layer '{s.Layer}' has in {s.InFeatures}, out {s.OutFeatures}");
            if (!indexOf.TryAdd(s.Layer, i)) throw FisherKernelsException.Argument($"K-FAC fit: layer '{s.Layer}' is given twice");
        }
        Plan = FactorPlan.Create(layers, options.MemoryBudgetBytes, options.Rank);
        for (int i = 0; i < layers.Count; i++) this.layers[i] = new LayerState(layers[i], Plan.Layers[i]);
    }

    /// <summary>Each layer's factor forms and bytes (SPEC §3), decided by the options' memory budget and rank.</summary>
    public FactorPlan Plan { get; }

    public KfacFitOptions Options { get; }
    public string ModelSha256 { get; }

    /// <summary>The token file's index of this fit's first batch (0 unless the fit is a shard).</summary>
    public int FirstBatch { get; }

    /// <summary>Batches completed so far (including those restored from a checkpoint).</summary>
    public int BatchesDone { get; private set; }

    /// <summary>The layers in fit order.</summary>
    public IEnumerable<LayerShape> Layers => layers.Select(l => l.Shape);

    /// <summary>
    /// Starts batch <see cref="BatchesDone"/> over <paramref name="positions"/> positions (batch × seq) and
    /// returns its position mask: a non-zero byte keeps the position. Empty when every position is kept.
    /// <paramref name="assigned"/> (empty: all) marks the positions this batch accumulates: a window of a long sequence
    /// (SPEC §1) holds positions an earlier window already accumulated, and those add to neither A nor G nor M.
    /// </summary>
    public ReadOnlySpan<byte> BeginBatch(int positions, ReadOnlySpan<byte> assigned = default)
    {
        if (batchPositions >= 0) throw new InvalidOperationException("K-FAC fit: BeginBatch called twice without EndBatch");
        EnsureNotFinished();
        ArgumentOutOfRangeException.ThrowIfNegative(positions);
        keptInBatch = DrawPositions(Options, FirstBatch + BatchesDone, positions, assigned, ref mask);
        batchPositions = positions;
        return mask;
    }

    /// <summary>
    /// The kept positions of token-file batch <paramref name="batch"/> (<see cref="BeginBatch"/>): <c>--sample-positions p</c> keeps each
    /// of <paramref name="positions"/> with probability p, a pure function of (seed, batch, position), and only the
    /// <paramref name="assigned"/> ones count (empty: all). <paramref name="mask"/> (1 = kept) is reused when its length fits and
    /// is empty when every position is kept; returns how many are kept.
    /// </summary>
    internal static int DrawPositions(KfacFitOptions options, int batch, int positions, ReadOnlySpan<byte> assigned, ref byte[] mask)
    {
        if (!assigned.IsEmpty && assigned.Length != positions)
            throw new ArgumentException($"K-FAC fit: {assigned.Length} assigned flags for {positions} positions", nameof(assigned));
        if (assigned.IndexOf((byte)0) < 0) assigned = default; // all assigned: the unmasked path, bit for bit
        if (options.SamplePositions >= 1 && assigned.IsEmpty)
        {
            mask = [];
            return positions;
        }
        if (mask.Length != positions) mask = new byte[positions];
        var rng = new SplitMix64(options.Seed, batch, stream: 0);
        int kept = 0;
        for (int m = 0; m < mask.Length; m++)
        {
            // The draw is taken for every position, so the positions kept do not depend on which are assigned.
            bool keep = options.SamplePositions >= 1 || rng.NextDouble() < options.SamplePositions;
            keep &= assigned.IsEmpty || assigned[m] != 0;
            mask[m] = keep ? (byte)1 : (byte)0;
            if (keep) kept++;
        }
        return kept;
    }

    /// <summary>
    /// Adds one layer's inputs a for the current batch: <paramref name="inputs"/> <c>[R × in]</c>, one row per position, where
    /// R is the batch's positions times the number of times the layer is applied (applications one after the other).
    /// Once per layer and batch, before its output gradients.
    /// </summary>
    public void AddInputs(string layer, ReadOnlySpan<float> inputs) => PrepareInputs(layer, inputs.Length)?.Run(backend, inputs);

    /// <summary>
    /// <see cref="AddInputs(string, ReadOnlySpan{float})"/> for several layers, through <see cref="IComputeBackend.AccumulateFactors"/>
    /// (the CPU backend updates them side by side; the factors are the same as one layer at a time).
    /// </summary>
    public void AddInputs(IReadOnlyList<(string Layer, float[] Inputs)> inputs) =>
        Accumulate(inputs.Select(x => PrepareInputs(x.Layer, x.Inputs.Length)?.With(x.Inputs)).ToList());

    FactorUpdate? PrepareInputs(string layer, int length)
    {
        LayerState state = Layer(layer);
        if (state.Rows >= 0) throw FisherKernelsException.Argument($"K-FAC fit: the inputs of layer '{layer}' were given twice in batch {BatchesDone}");
        int inF = state.Shape.InFeatures;
        if (length % inF != 0 || batchPositions == 0 || length / inF % batchPositions != 0)
            throw FisherKernelsException.Argument($"K-FAC fit: layer '{layer}' inputs have {length} values, expected a multiple of {batchPositions} positions × {inF}");
        int rows = length / inF;
        state.Rows = rows;
        state.RowMask = ExpandMask(rows);
        state.Kept = mask.Length == 0 ? rows : keptInBatch * (rows / batchPositions);
        state.GradientCalls = 0;
        if (state.Kept == 0) return null;
        var (alpha, beta) = Weights(state);
        return new FactorUpdate(rows, inF, state.Shape.HasBias, (float)alpha, (float)beta, state.A, state.RowMask);
    }

    /// <summary>
    /// Adds output gradients g of one layer for the current batch, <c>[R × out]</c> in the rows order of its inputs:
    /// <c>G_batch = Σ_calls weight/M · Σ_m g gᵀ</c> over the kept rows. The sampled Fisher calls this once per label draw
    /// with weight 1/k (the average over draws); the exact Fisher once per (position, label) with rows already scaled by
    /// √p(y) and weight 1; the empirical Fisher once with weight 1.
    /// </summary>
    public void AddOutputGradients(string layer, ReadOnlySpan<float> outputGradients, double weight = 1) =>
        PrepareOutputGradients(layer, outputGradients.Length, weight)?.Run(backend, outputGradients);

    /// <summary><see cref="AddOutputGradients(string, ReadOnlySpan{float}, double)"/> for several layers, as <see cref="AddInputs(IReadOnlyList{ValueTuple{string, float[]}})"/>.</summary>
    public void AddOutputGradients(IReadOnlyList<(string Layer, float[] OutputGradients)> outputGradients, double weight = 1) =>
        Accumulate(outputGradients.Select(x => PrepareOutputGradients(x.Layer, x.OutputGradients.Length, weight)?.With(x.OutputGradients)).ToList());

    FactorUpdate? PrepareOutputGradients(string layer, int length, double weight)
    {
        LayerState state = Layer(layer);
        if (state.Rows < 0) throw FisherKernelsException.Argument($"K-FAC fit: layer '{layer}': output gradients before its inputs in batch {BatchesDone}");
        int outF = state.Shape.OutFeatures;
        if (length != (long)state.Rows * outF)
            throw FisherKernelsException.Argument($"K-FAC fit: layer '{layer}' output gradients have {length} values, expected {state.Rows} rows × {outF}");
        if (!(weight > 0) || !double.IsFinite(weight)) throw FisherKernelsException.Argument($"K-FAC fit: layer '{layer}': gradient weight must be positive, got {weight}");
        bool first = state.GradientCalls++ == 0;
        if (state.Kept == 0) return null;
        var (alpha, beta) = Weights(state);
        return new FactorUpdate(state.Rows, outF, false, (float)(alpha * weight), first ? (float)beta : 1f, state.G, state.RowMask);
    }

    /// <summary>One factor update <c>F ← β·F + α·Σ x̃ x̃ᵀ</c> (upper triangle, or the side's sketch), checked and weighed, waiting for its rows.</summary>
    sealed record FactorUpdate(int Rows, int Columns, bool AppendOne, float Alpha, float Beta, SideState Side, byte[] RowMask)
    {
        public void Run(IComputeBackend backend, ReadOnlySpan<float> rows)
        {
            if (Side.Dense is float[] dense) backend.AccumulateFactor(rows, Rows, Columns, AppendOne, Alpha, Beta, dense, RowMask, upperOnly: true);
            else Side.Sketch!.Add(backend, rows, Rows, Columns, AppendOne, Alpha, Beta, RowMask);
        }

        public (FactorUpdate Update, float[] Rows) With(float[] rows) => (this, rows);
    }

    /// <summary>Dense updates side by side through the backend (<see cref="IComputeBackend.AccumulateFactors"/>), then the sketches, each a pair of GEMMs using every thread.</summary>
    void Accumulate(List<(FactorUpdate Update, float[] Rows)?> updates)
    {
        var dense = new List<FactorAccumulation>();
        foreach (var item in updates)
            if (item is var (u, rows) && u.Side.Dense is float[] f)
                dense.Add(new FactorAccumulation(rows, u.Rows, u.Columns, u.AppendOne, u.Alpha, u.Beta, f, u.RowMask, UpperOnly: true));
        backend.AccumulateFactors(dense);
        foreach (var item in updates)
            if (item is var (u, rows) && u.Side.Sketch is not null) u.Run(backend, rows);
    }

    LayerState Layer(string layer)
    {
        if (batchPositions < 0) throw new InvalidOperationException("K-FAC fit: data given outside BeginBatch/EndBatch");
        return indexOf.TryGetValue(layer, out int index) ? layers[index] : throw FisherKernelsException.Argument($"K-FAC fit: '{layer}' is not a layer of the model");
    }

    (double Alpha, double Beta) Weights(LayerState state) => Weights(Options, state.Positions, state.Kept);

    /// <summary>F ← β·F + α·Σ x xᵀ: the running mean (β = n/(n+m)) or the EMA (β = λ); the first data sets F (β = 0).</summary>
    internal static (double Alpha, double Beta) Weights(KfacFitOptions options, double positions, double kept)
    {
        if (positions == 0) return (1.0 / kept, 0);
        if (options.Ema is double lambda) return ((1 - lambda) / kept, lambda);
        return (1.0 / (positions + kept), positions / (positions + kept));
    }

    /// <summary>M after a batch that kept <paramref name="kept"/> rows: positions add, or decay by λ first under EMA.</summary>
    internal static double PositionsAfter(KfacFitOptions options, double positions, double kept) =>
        kept == 0 ? positions : options.Ema is double lambda && positions > 0 ? lambda * positions + kept : positions + kept;

    /// <summary>The batch mask repeated for each application of a layer (row r is position r mod P).</summary>
    byte[] ExpandMask(int rows)
    {
        if (mask.Length == 0 || rows == mask.Length) return mask;
        var expanded = new byte[rows];
        for (int r = 0; r < rows; r++) expanded[r] = mask[r % mask.Length];
        return expanded;
    }

    /// <summary>Ends the current batch; every layer must have been given.</summary>
    public void EndBatch()
    {
        if (batchPositions < 0) throw new InvalidOperationException("K-FAC fit: EndBatch called without BeginBatch");
        foreach (LayerState s in layers)
            if (s.Rows < 0 || s.GradientCalls == 0)
                throw FisherKernelsException.Argument($"K-FAC fit: batch {BatchesDone} gave no {(s.Rows < 0 ? "inputs" : "output gradients")} for layer '{s.Shape.Layer}'");
        foreach (LayerState s in layers)
        {
            s.Positions = PositionsAfter(Options, s.Positions, s.Kept);
            s.Rows = -1;
        }
        batchPositions = -1;
        BatchesDone++;
    }

    /// <summary>
    /// Draws the labels of one sampled-Fisher draw: for each of <paramref name="positions"/> rows of
    /// <paramref name="logits"/> <c>[positions × vocab]</c> with a target (not -100), a label from softmax(logits);
    /// -100 where there is no target. A pure function of (seed, current batch's index in the token file, draw).
    /// </summary>
    public void SampleLabels(ReadOnlySpan<float> logits, int positions, int vocab, ReadOnlySpan<long> targets, int draw, Span<long> labels)
    {
        if (logits.Length != (long)positions * vocab || targets.Length != positions || labels.Length != positions)
            throw FisherKernelsException.Argument($"K-FAC fit: sampling labels needs logits [{positions} × {vocab}] and {positions} targets and labels");
        int batch = batchPositions >= 0 ? FirstBatch + BatchesDone : throw new InvalidOperationException("K-FAC fit: SampleLabels called outside a batch");
        DrawLabels(Options, batch, logits, positions, vocab, targets, draw, labels);
    }

    /// <summary>The labels of draw <paramref name="draw"/> of token-file batch <paramref name="batch"/> (<see cref="SampleLabels"/>): a pure function of (seed, batch, draw).</summary>
    internal static void DrawLabels(KfacFitOptions options, int batch, ReadOnlySpan<float> logits, int positions, int vocab, ReadOnlySpan<long> targets, int draw, Span<long> labels)
    {
        var rng = new SplitMix64(options.Seed, batch, stream: 1 + draw);
        float[] weights = ArrayPool<float>.Shared.Rent(vocab);
        try
        {
            Span<float> e = weights.AsSpan(0, vocab);
            for (int m = 0; m < positions; m++)
            {
                double u = rng.NextDouble();
                if (targets[m] == -100) { labels[m] = -100; continue; }
                // exp(z − max) in SIMD once; the sums in float64, so the label is the inverse CDF of the softmax.
                ReadOnlySpan<float> z = logits.Slice(m * vocab, vocab);
                TensorPrimitives.Subtract(z, TensorPrimitives.Max(z), e);
                TensorPrimitives.Exp(e, e);
                double total = 0;
                foreach (float v in e) total += v;
                double threshold = u * total, cumulative = 0;
                int label = vocab - 1;
                for (int y = 0; y < vocab; y++)
                {
                    cumulative += e[y];
                    if (cumulative > threshold) { label = y; break; }
                }
                labels[m] = label;
            }
        }
        finally { ArrayPool<float>.Shared.Return(weights); }
    }

    /// <summary>
    /// The fitted curvature with the SPEC §5 metadata. It takes over the dense factors (each mirrored into a full symmetric
    /// matrix in place, not copied: the copies would double the fit's largest memory), so this ends the fit: no batch or
    /// checkpoint may follow.
    /// </summary>
    public KfacCurvature ToCurvature(string createdBy)
    {
        EnsureNotFinished();
        foreach (LayerState s in layers)
            if (s.Positions == 0) throw FisherKernelsException.Argument($"K-FAC fit: layer '{s.Shape.Layer}' saw no positions (empty token file, or every position dropped by --sample-positions)");
        var curvature = new KfacCurvature(layers.Select(s => new KroneckerBlock(s.Shape.Layer, s.A.ToSide(), s.G.ToSide(), s.Shape.HasBias, s.Positions)),
                                          Options.Fisher.Name(), ModelSha256, createdBy);
        finished = true;
        return curvature;
    }

    bool finished;

    void EnsureNotFinished()
    {
        if (finished) throw new InvalidOperationException("K-FAC fit: ToCurvature ended this fit; its factors belong to the curvature now");
    }

    /// <summary>
    /// Bytes a fit and its posterior need for <paramref name="layer"/> with both sides dense: the float32 factors, and their dense eigenbasis
    /// (float32 Q_A and Q_G, float64 eigenvalues, the float32 [g × a] inverse denominators 1/(M λ_G λ_A + τ)).
    /// </summary>
    public static LayerMemory EstimateMemory(LayerShape layer)
    {
        long a = ADimOf(layer), g = layer.OutFeatures;
        long factors = sizeof(float) * (a * a + g * g);
        return new LayerMemory(layer.Layer, factors, factors + sizeof(double) * (a + g) + sizeof(float) * a * g);
    }

    /// <summary>
    /// Saves the state after <see cref="BatchesDone"/> batches atomically. <paramref name="runFingerprint"/>
    /// identifies everything else the fit depends on (token file, targets, batch size...): a resume must give the same.
    /// </summary>
    public void SaveCheckpoint(string path, string runFingerprint)
    {
        if (batchPositions >= 0) throw new InvalidOperationException("K-FAC fit: checkpoint in the middle of a batch");
        EnsureNotFinished();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = CheckpointFormat,
            ["fingerprint"] = runFingerprint,
            ["batches"] = BatchesDone.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (key, value) in DescribeOptions()) metadata[key] = value;
        var tensors = new List<KeyValuePair<string, NdArray>>();
        foreach (LayerState s in layers)
        {
            metadata[s.Shape.Layer + ".positions"] = s.Positions.ToString("R", CultureInfo.InvariantCulture);
            metadata[s.Shape.Layer + ".shape"] = $"{s.Shape.InFeatures},{s.Shape.OutFeatures},{(s.Shape.HasBias ? "bias" : "nobias")}";
            KfacCurvature.AddSide(tensors, metadata, s.Shape.Layer + ".A", s.A.ToSide());
            KfacCurvature.AddSide(tensors, metadata, s.Shape.Layer + ".G", s.G.ToSide());
        }
        SafetensorsFile.Write(path, tensors, metadata);
    }

    /// <summary>
    /// Restores a fit saved by <see cref="SaveCheckpoint"/>; refuses, naming the difference, a checkpoint of another
    /// model, other options, other layers or another run fingerprint. Continue with batch <see cref="BatchesDone"/>.
    /// </summary>
    public static KfacAccumulator Resume(string path, IComputeBackend backend, IReadOnlyList<LayerShape> layers, KfacFitOptions options,
                                         string modelSha256, string runFingerprint, int firstBatch = 0)
    {
        var acc = new KfacAccumulator(backend, layers, options, modelSha256, firstBatch);
        SafetensorsFile file = SafetensorsFile.Read(path);
        var meta = file.Metadata;
        string Meta(string key) => meta.TryGetValue(key, out string? v) ? v : throw FisherKernelsException.Format($"{path}: checkpoint metadata '{key}' is missing");
        if (!meta.TryGetValue("format", out string? format) || format != CheckpointFormat)
            throw FisherKernelsException.Format($"{path}: not a FisherKernels fit checkpoint (format '{format}', expected '{CheckpointFormat}')");
        foreach (var (key, value) in acc.DescribeOptions())
            if (Meta(key) != value)
                throw FisherKernelsException.Argument($"{path}: checkpoint was made with {key} = {Meta(key)}, this fit has {value}; use the same arguments or delete the checkpoint");
        if (Meta("fingerprint") != runFingerprint)
            throw FisherKernelsException.Argument($"{path}: checkpoint belongs to another run ({Meta("fingerprint")}; this run is {runFingerprint}); use the same arguments or delete the checkpoint");
        if (!int.TryParse(Meta("batches"), NumberStyles.None, CultureInfo.InvariantCulture, out int batches))
            throw FisherKernelsException.Format($"{path}: checkpoint metadata 'batches' is not a count: '{Meta("batches")}'");
        int expectedTensors = acc.layers.Sum(l => (l.A.Dense is null ? 2 : 1) + (l.G.Dense is null ? 2 : 1));
        if (file.Names.Count != expectedTensors)
            throw FisherKernelsException.Argument($"{path}: checkpoint has {file.Names.Count} tensors, this fit's layers and factor forms need {expectedTensors}; use the same arguments or delete the checkpoint");
        foreach (LayerState s in acc.layers)
        {
            string expectedShape = $"{s.Shape.InFeatures},{s.Shape.OutFeatures},{(s.Shape.HasBias ? "bias" : "nobias")}";
            if (Meta(s.Shape.Layer + ".shape") != expectedShape)
                throw FisherKernelsException.Argument($"{path}: checkpoint layer '{s.Shape.Layer}' is in,out,bias = {Meta(s.Shape.Layer + ".shape")}, the model has {expectedShape}");
            if (!double.TryParse(Meta(s.Shape.Layer + ".positions"), NumberStyles.Float, CultureInfo.InvariantCulture, out double positions) || !(positions >= 0))
                throw FisherKernelsException.Format($"{path}: checkpoint metadata '{s.Shape.Layer}.positions' is not a count");
            s.Positions = positions;
            s.A.Restore(file, path);
            s.G.Restore(file, path);
        }
        acc.BatchesDone = batches;
        return acc;
    }

    IEnumerable<(string, string)> DescribeOptions()
    {
        yield return ("model_sha256", ModelSha256);
        yield return ("fisher", Options.Fisher.Name());
        yield return ("samples", Options.Samples.ToString(CultureInfo.InvariantCulture));
        yield return ("seed", Options.Seed.ToString(CultureInfo.InvariantCulture));
        yield return ("ema", Options.Ema is double l ? l.ToString("R", CultureInfo.InvariantCulture) : "none");
        yield return ("sample_positions", Options.SamplePositions.ToString("R", CultureInfo.InvariantCulture));
        yield return ("memory_budget", Options.MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture));
        yield return ("rank", Options.Rank.ToString(CultureInfo.InvariantCulture));
    }

    static void CopyFactor(SafetensorsFile file, string name, float[] target, string path)
    {
        if (!file.Tensors.TryGetValue(name, out NdArray? array) || array is not NdArray<float> f || f.Length != target.LongLength)
            throw FisherKernelsException.Format($"{path}: checkpoint tensor '{name}' is missing or not F32 of {target.LongLength} values");
        f.Data.CopyTo(target, 0);
    }

    static int ADimOf(LayerShape s) => s.InFeatures + (s.HasBias ? 1 : 0);

    /// <summary>One side's running state: the upper triangle of a dense factor, or a <see cref="SketchState"/>.</summary>
    sealed class SideState
    {
        readonly string key;

        public SideState(string layer, char side, SidePlan plan)
        {
            key = layer + "." + side;
            if (plan.Form == FactorForm.Dense) Dense = new float[(long)plan.Size * plan.Size];
            else Sketch = new SketchState(plan.Size, plan.SketchColumns, FactorSketch.DefaultSeed(layer, side));
        }

        public float[]? Dense { get; }
        public SketchState? Sketch { get; }

        public FactorSide ToSide() => Dense is not null ? FactorSide.Dense(Square(Dense)) : FactorSide.LowRank(Sketch!.ToSketch());

        public void Restore(SafetensorsFile file, string path)
        {
            if (Dense is not null) { CopyFactor(file, key, Dense, path); return; }
            CopyFactor(file, key + ".Y", Sketch!.Y, path);
            CopyFactor(file, key + ".diag", Sketch.Diagonal, path);
        }
    }

    /// <summary>
    /// A side accumulated as <c>Y = F·Ω</c> and <c>diag(F)</c> (SPEC §3): for rows X̃ (masked, with the bias column when it
    /// applies), <c>Y ← β·Y + α·X̃ᵀ(X̃Ω)</c> by two GEMMs and <c>diag ← β·diag + α·Σ x̃²</c>. Memory O(n·k): Ω, Y and the
    /// <c>[rows × k]</c> product; never <c>[n, n]</c>.
    /// </summary>
    internal sealed class SketchState
    {
        public SketchState(int n, int k, ulong seed)
        {
            N = n;
            K = k;
            Seed = seed;
            Omega = FactorSketch.Omega(n, k, seed);
            Y = new float[(long)n * k];
            Diagonal = new float[n];
        }

        public int N { get; }
        public int K { get; }
        public ulong Seed { get; }
        public float[] Omega { get; }
        public float[] Y { get; }
        public float[] Diagonal { get; }

        public FactorSketch ToSketch() =>
            new(new NdArray<float>([N, K], (float[])Y.Clone()), new NdArray<float>([N], (float[])Diagonal.Clone()), Seed);

        /// <summary><paramref name="x"/> is <c>[rows × columns]</c>; n = columns + 1 with <paramref name="appendOne"/> (the last coordinate is 1).</summary>
        public void Add(IComputeBackend backend, ReadOnlySpan<float> x, int rows, int columns, bool appendOne, float alpha, float beta, ReadOnlySpan<byte> rowMask)
        {
            int k = K;
            long xk = (long)columns * k;
            // T = X̃ Ω [rows × k]: the product over the data columns, plus Ω's last row for the bias coordinate.
            var t = new float[(long)rows * k];
            backend.Gemm(new GemmShape(rows, k, columns), x, Omega.AsSpan(0, (int)xk), t);
            int kept = 0;
            for (int r = 0; r < rows; r++)
            {
                Span<float> tr = t.AsSpan(r * k, k);
                if (rowMask.Length != 0 && rowMask[r] == 0) { tr.Clear(); continue; }
                kept++;
                if (appendOne) TensorPrimitives.Add(tr, Omega.AsSpan((int)xk, k), tr);
            }
            // Y[:columns] ← β·Y + α·Xᵀ T; the bias row: β·Y + α·Σ_r T[r].
            backend.Gemm(new GemmShape(columns, k, rows, TransA: true, Alpha: alpha, Beta: beta), x, t, Y.AsSpan(0, (int)xk));
            if (appendOne)
            {
                Span<float> last = Y.AsSpan((int)xk, k);
                var sums = new double[k];
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < k; c++) sums[c] += t[(long)r * k + c];
                for (int c = 0; c < k; c++) last[c] = (float)(beta * last[c] + alpha * sums[c]);
                Diagonal[columns] = (float)(beta * Diagonal[columns] + (double)alpha * kept);
            }
            var squares = new float[columns];
            for (int r = 0; r < rows; r++)
            {
                if (rowMask.Length != 0 && rowMask[r] == 0) continue;
                ReadOnlySpan<float> xr = x.Slice(r * columns, columns);
                TensorPrimitives.MultiplyAdd(xr, xr, squares, squares);
            }
            for (int j = 0; j < columns; j++) Diagonal[j] = (float)(beta * Diagonal[j] + (double)alpha * squares[j]);
        }
    }

    /// <summary>
    /// The symmetric factor whose upper triangle is <paramref name="upper"/> (the fit updates that triangle only), mirrored in
    /// place: the lower triangle is never read by the updates, so the fit may go on after a checkpoint.
    /// </summary>
    static NdArray<float> Square(float[] upper)
    {
        int n = (int)Math.Round(Math.Sqrt(upper.LongLength));
        float[] full = upper;
        // Blocks of rows and columns, so that the column-wise writes stay in cache.
        const int block = 64;
        for (int i0 = 0; i0 < n; i0 += block)
            for (int j0 = i0; j0 < n; j0 += block)
                for (int i = i0; i < Math.Min(i0 + block, n); i++)
                    for (int j = Math.Max(j0, i + 1); j < Math.Min(j0 + block, n); j++)
                        full[(long)j * n + i] = full[(long)i * n + j];
        return new NdArray<float>([n, n], full);
    }
}

/// <summary>
/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose stream is a pure function of
/// (seed, batch, stream), so random choices need no saved state and stay the same across .NET versions.
/// </summary>
internal struct SplitMix64(long seed, long batch, long stream)
{
    ulong state = Mix(Mix(Mix((ulong)seed) ^ (ulong)batch) ^ (ulong)stream);

    const ulong Golden = 0x9E3779B97F4A7C15UL;

    static ulong Mix(ulong z) => Finalize(z + Golden);

    static ulong Finalize(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong Next() => Finalize(state += Golden);

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Standard normal by Box–Muller (one of the pair; simple beats fast here).</summary>
    public double NextGaussian() => Math.Sqrt(-2 * Math.Log(1 - NextDouble())) * Math.Cos(2 * Math.PI * NextDouble());
}

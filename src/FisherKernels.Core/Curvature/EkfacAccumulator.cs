using System.Numerics.Tensors;
using FisherKernels.Backends;

namespace FisherKernels.Curvature;

/// <summary>
/// One pass of a fit over its batches (SPEC §3): the factors' pass (<see cref="KfacAccumulator"/>) and EK-FAC's second pass
/// (<see cref="EkfacAccumulator"/>) take the same calls in the same order, and both key their random draws (kept positions,
/// sampled labels) on (seed, the batch's index in the token file, position, draw), so the second pass sees the first's.
/// </summary>
public interface IFisherPass
{
    KfacFitOptions Options { get; }

    /// <summary>
    /// Starts the next batch of <paramref name="positions"/> positions, of which only the <paramref name="assigned"/> ones (empty:
    /// all) accumulate; returns its position mask (empty: every position kept).
    /// </summary>
    ReadOnlySpan<byte> BeginBatch(int positions, ReadOnlySpan<byte> assigned = default);

    /// <summary>Each layer's inputs a, <c>[R × in]</c>, once per layer and batch, before its output gradients.</summary>
    void AddInputs(IReadOnlyList<(string Layer, float[] Inputs)> inputs);

    /// <summary>Each layer's output gradients g, <c>[R × out]</c> in its inputs' row order, weighted (1/k per label draw).</summary>
    void AddOutputGradients(IReadOnlyList<(string Layer, float[] OutputGradients)> outputGradients, double weight = 1);

    /// <summary>The labels of one sampled-Fisher draw of the current batch.</summary>
    void SampleLabels(ReadOnlySpan<float> logits, int positions, int vocab, ReadOnlySpan<long> targets, int draw, Span<long> labels);

    void EndBatch();
}

/// <summary>
/// EK-FAC's second pass (SPEC §3 <c>fit --ekfac</c>): with the fit's final factors, per layer with both sides dense,
/// <c>E_ij = (1/M) Σ_m (Q_Gᵀ g_m)_i² (Q_Aᵀ ã_m)_j²</c> in the factors' eigenbases (ascending eigenvalues, decomposed as the
/// posterior decomposes them, <see cref="KronEigenbasis.Create"/>), over the same batches, kept positions and label draws
/// as the first pass (k draws averaged as for G), with the first pass's running-mean or EMA weights. Per batch and layer:
/// the rows' squared projections <c>(Ã Q_A)²</c> and <c>Σ_draws w·(G Q_G)²</c>, then one product
/// <c>E ← β·E + α·((G Q_G)²)ᵀ (Ã Q_A)²</c>. Layers with a low-rank side keep K-FAC (no E).
/// </summary>
public sealed class EkfacAccumulator : IFisherPass
{
    readonly IComputeBackend backend;
    readonly KfacCurvature factors;
    readonly Dictionary<string, LayerState?> states = new(StringComparer.Ordinal);
    byte[] mask = [];
    int batchPositions = -1;
    int keptInBatch;

    sealed class LayerState(KroneckerBlock block, KronEigenbasis basis)
    {
        public readonly KroneckerBlock Block = block;
        public readonly KronEigenbasis Basis = basis;
        public readonly float[] E = new float[(long)block.GDim * block.ADim];
        public double Positions;
        // This batch: rows (-1 before the inputs), kept rows, the squared projections of the inputs and the weighted sum of the gradients'.
        public int Rows = -1;
        public int Kept;
        public int GradientCalls;
        public float[] InputSquares = [];
        public float[] OutputSquares = [];
    }

    /// <param name="factors">The first pass's final curvature: its A and G give the eigenbases.</param>
    /// <param name="firstBatch">The token file's index of the first batch this pass sees (as the first pass's).</param>
    public EkfacAccumulator(IComputeBackend backend, KfacCurvature factors, KfacFitOptions options, int firstBatch = 0)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(factors);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegative(firstBatch);
        options.Validate();
        this.backend = backend;
        this.factors = factors;
        Options = options;
        FirstBatch = firstBatch;
        foreach (KroneckerBlock b in factors.Layers)
            states[b.Layer] = b.IsDense ? new LayerState(b, KronEigenbasis.Create(backend, b.A.Data, b.ADim, b.G.Data, b.GDim, b.Positions, 1.0)) : null;
    }

    public KfacFitOptions Options { get; }
    public int FirstBatch { get; }
    public int BatchesDone { get; private set; }

    /// <summary>The layers with a low-rank side, which keep K-FAC (SPEC §3).</summary>
    public IReadOnlyList<string> KeptKfac => states.Where(s => s.Value is null).Select(s => s.Key).ToArray();

    public ReadOnlySpan<byte> BeginBatch(int positions, ReadOnlySpan<byte> assigned = default)
    {
        if (batchPositions >= 0) throw new InvalidOperationException("EK-FAC pass: BeginBatch called twice without EndBatch");
        ArgumentOutOfRangeException.ThrowIfNegative(positions);
        keptInBatch = KfacAccumulator.DrawPositions(Options, FirstBatch + BatchesDone, positions, assigned, ref mask);
        batchPositions = positions;
        return mask;
    }

    public void AddInputs(IReadOnlyList<(string Layer, float[] Inputs)> inputs)
    {
        foreach (var (layer, rows) in inputs)
        {
            if (State(layer) is not LayerState s) continue;
            if (s.Rows >= 0) throw FisherKernelsException.Argument($"EK-FAC pass: the inputs of layer '{layer}' were given twice in batch {BatchesDone}");
            int inF = s.Block.InFeatures, a = s.Block.ADim;
            if (rows.Length % inF != 0 || batchPositions == 0 || rows.Length / inF % batchPositions != 0)
                throw FisherKernelsException.Argument($"EK-FAC pass: layer '{layer}' inputs have {rows.Length} values, expected a multiple of {batchPositions} positions × {inF}");
            int count = rows.Length / inF;
            s.Rows = count;
            s.Kept = mask.Length == 0 ? count : keptInBatch * (count / batchPositions);
            s.GradientCalls = 0;
            var homogeneous = new float[(long)count * a];
            for (int r = 0; r < count; r++)
            {
                rows.AsSpan(r * inF, inF).CopyTo(homogeneous.AsSpan(r * a, inF));
                if (s.Block.HasBias) homogeneous[r * a + inF] = 1;
            }
            s.InputSquares = new float[homogeneous.Length];
            backend.Gemm(new GemmShape(count, a, a), homogeneous, s.Basis.QA, s.InputSquares);
            TensorPrimitives.Multiply(s.InputSquares, s.InputSquares, s.InputSquares);
            // A dropped position (--sample-positions) contributes nothing: its row of squares is 0 (row r is position r mod P).
            if (mask.Length != 0)
                for (int r = 0; r < count; r++)
                    if (mask[r % mask.Length] == 0) s.InputSquares.AsSpan(r * a, a).Clear();
            s.OutputSquares = new float[(long)count * s.Block.GDim];
        }
    }

    public void AddOutputGradients(IReadOnlyList<(string Layer, float[] OutputGradients)> outputGradients, double weight = 1)
    {
        if (!(weight > 0) || !double.IsFinite(weight)) throw FisherKernelsException.Argument($"EK-FAC pass: gradient weight must be positive, got {weight}");
        foreach (var (layer, rows) in outputGradients)
        {
            if (State(layer) is not LayerState s) continue;
            if (s.Rows < 0) throw FisherKernelsException.Argument($"EK-FAC pass: layer '{layer}': output gradients before its inputs in batch {BatchesDone}");
            int g = s.Block.GDim;
            if (rows.Length != (long)s.Rows * g)
                throw FisherKernelsException.Argument($"EK-FAC pass: layer '{layer}' output gradients have {rows.Length} values, expected {s.Rows} rows × {g}");
            s.GradientCalls++;
            var projected = new float[rows.Length];
            backend.Gemm(new GemmShape(s.Rows, g, g), rows, s.Basis.QG, projected);
            TensorPrimitives.Multiply(projected, projected, projected);
            TensorPrimitives.MultiplyAdd(projected, (float)weight, s.OutputSquares, s.OutputSquares);
        }
    }

    public void SampleLabels(ReadOnlySpan<float> logits, int positions, int vocab, ReadOnlySpan<long> targets, int draw, Span<long> labels)
    {
        if (batchPositions < 0) throw new InvalidOperationException("EK-FAC pass: SampleLabels called outside a batch");
        if (logits.Length != (long)positions * vocab || targets.Length != positions || labels.Length != positions)
            throw FisherKernelsException.Argument($"EK-FAC pass: sampling labels needs logits [{positions} × {vocab}] and {positions} targets and labels");
        KfacAccumulator.DrawLabels(Options, FirstBatch + BatchesDone, logits, positions, vocab, targets, draw, labels);
    }

    public void EndBatch()
    {
        if (batchPositions < 0) throw new InvalidOperationException("EK-FAC pass: EndBatch called without BeginBatch");
        foreach (var (layer, s) in states)
            if (s is not null && (s.Rows < 0 || s.GradientCalls == 0))
                throw FisherKernelsException.Argument($"EK-FAC pass: batch {BatchesDone} gave no {(s.Rows < 0 ? "inputs" : "output gradients")} for layer '{layer}'");
        foreach (LayerState? s in states.Values)
        {
            if (s is null) continue;
            if (s.Kept > 0)
            {
                var (alpha, beta) = KfacAccumulator.Weights(Options, s.Positions, s.Kept);
                backend.Gemm(new GemmShape(s.Block.GDim, s.Block.ADim, s.Rows, TransA: true, Alpha: (float)alpha, Beta: (float)beta), s.OutputSquares, s.InputSquares, s.E);
            }
            s.Positions = KfacAccumulator.PositionsAfter(Options, s.Positions, s.Kept);
            (s.Rows, s.InputSquares, s.OutputSquares) = (-1, [], []);
        }
        batchPositions = -1;
        BatchesDone++;
    }

    /// <summary>
    /// The first pass's curvature with E on every layer with dense sides. The pass must have seen the same positions as the
    /// first (the same batches): a different count means the batches differ, and E would not belong to these factors.
    /// </summary>
    public KfacCurvature ToCurvature()
    {
        if (batchPositions >= 0) throw new InvalidOperationException("EK-FAC pass: a batch is still open");
        var blocks = new List<KroneckerBlock>(factors.Layers.Count);
        foreach (KroneckerBlock b in factors.Layers)
        {
            if (states[b.Layer] is not LayerState s) { blocks.Add(b); continue; }
            if (Math.Abs(s.Positions - b.Positions) > 1e-9 * Math.Max(1, b.Positions))
                throw FisherKernelsException.Argument($"EK-FAC pass: layer '{b.Layer}' saw {s.Positions} positions, the factors {b.Positions}; the second pass must run over the first pass's batches");
            blocks.Add(b.WithCorrection(new NdArray<float>([b.GDim, b.ADim], s.E)));
        }
        return factors.WithLayers(blocks);
    }

    LayerState? State(string layer)
    {
        if (batchPositions < 0) throw new InvalidOperationException("EK-FAC pass: data given outside BeginBatch/EndBatch");
        return states.TryGetValue(layer, out LayerState? s) ? s : throw FisherKernelsException.Argument($"EK-FAC pass: '{layer}' is not a layer of the curvature");
    }
}

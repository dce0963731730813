using System.Numerics.Tensors;
using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// The epistemic score of one backward pass (SPEC §4) without the weight gradients. A layer's weight gradient is
/// <c>X = Σ_m g_m ã_mᵀ = Gᵀ Ã</c>, with Ã its inputs (shared by every position of a sequence, prepared once) and G
/// the gradients of its outputs, so the backward pass only needs to reach the layer outputs (the taps). Rows of G
/// that are exactly zero add nothing and are dropped (a causal model leaves every row after the scored position
/// zero; the rows are checked, not assumed). Isotropic: <c>‖X‖² = Σ_mm' (ã_m·ã_m')(g_m·g_m')</c> from the Gram of Ã
/// when a layer has fewer rows than inputs, else X itself; K-FAC in the layer's eigenbases: each is
/// <see cref="LayerPosterior.OuterProductQuadratic"/> of the layer's block of Σ, given that Gram when it can use it.
/// A parameter that is not a layer weight or bias used by its layer alone (a tied embedding, a normalization scale
/// under <c>--params all</c>) gets its whole gradient from the backward pass instead.
/// </summary>
internal sealed class TapScorer
{
    private sealed class Tap(Layer layer, bool withBias, LayerPosterior posterior)
    {
        public Layer Layer { get; } = layer;
        public bool WithBias { get; } = withBias;
        public LayerPosterior Posterior { get; } = posterior;
        public int ADim => Layer.In + (WithBias ? 1 : 0);

        /// <summary>The layer's applications in the plan of this sequence (a Loop body's once per iteration).</summary>
        public IReadOnlyList<LayerApplication> Applications { get; set; } = [];

        /// <summary>M: the layer's rows in this sequence, over all its applications.</summary>
        public int Rows { get; set; }

        /// <summary>Ã [M × ADim].</summary>
        public float[] Inputs { get; set; } = [];

        /// <summary>The posterior's projected rows [M × ADim] (<see cref="LayerPosterior.ProjectInputRows"/>).</summary>
        public float[] Projected { get; set; } = [];

        /// <summary>Ã Ãᵀ [M × M] while M is below ADim and the posterior uses it, else empty.</summary>
        public float[] Gram { get; set; } = [];
    }

    private static readonly HashSet<string> PassThrough = ["Transpose", "Identity", "Cast"];

    private readonly IComputeBackend backend;
    private readonly EpistemicMetric metric;
    private readonly List<Tap> taps = [];
    private readonly List<string> wholeParameters = [];
    private readonly List<(Layer Layer, float[] Buffer)> wholeLayers = [];
    private float[] gathered = [], compactG = [], compactA = [], gram = [], workspace = [];
    private int[] rowIndex = [];

    public TapScorer(LanguageModel lm, IReadOnlyList<string> parameters, EpistemicMetric metric, IComputeBackend backend)
    {
        this.backend = backend;
        this.metric = metric;
        bool layersOnly = metric.CoversLayersOnly;
        var graph = lm.Model.Graph;
        var set = parameters.ToHashSet(StringComparer.Ordinal);
        var covered = new HashSet<string>(StringComparer.Ordinal);
        // K-FAC: the layers the posterior covers (a layer-selected curvature covers only some, SPEC §2); the others add nothing.
        IReadOnlyList<Layer> layers = lm.Model.Layers.Where(metric.Covers).ToList();
        foreach (Layer layer in layers)
        {
            if (layersOnly && (!set.Contains(layer.Id) || layer.Bias is not null && !set.Contains(layer.Bias)))
                throw FisherKernelsException.Argument($"K-FAC scores need the weight and bias of every layer of the curvature as parameters; '{(set.Contains(layer.Id) ? layer.Bias : layer.Id)}' is not one");
            if (!set.Contains(layer.Id) || !OnlyInLayer(graph, layer.Id, layer, weight: true)) continue;
            bool withBias = layer.Bias is not null && set.Contains(layer.Bias) && OnlyInLayer(graph, layer.Bias, layer, weight: false);
            if (layersOnly && layer.Bias is not null && !withBias) continue;
            taps.Add(new Tap(layer, withBias, metric.For(layer, withBias, backend)));
            covered.Add(layer.Id);
            if (withBias) covered.Add(layer.Bias!);
        }
        if (!layersOnly)
        {
            wholeParameters.AddRange(parameters.Where(p => !covered.Contains(p)));
            return;
        }
        var layerNames = layers.SelectMany(l => l.Bias is null ? [l.Id] : new[] { l.Id, l.Bias }).ToHashSet(StringComparer.Ordinal);
        if (parameters.FirstOrDefault(p => !layerNames.Contains(p)) is { } stray)
            throw FisherKernelsException.Argument($"K-FAC scores cover the curvature's layers only; parameter '{stray}' is not the weight or bias of one");
        foreach (Layer layer in layers.Where(l => !covered.Contains(l.Id)))
        {
            wholeLayers.Add((layer, new float[(long)layer.Out * (layer.In + (layer.Bias is null ? 0 : 1))]));
        }
    }

    /// <summary>The values whose gradients the backward pass of <paramref name="plan"/> must compute: the tapped layer outputs and the whole parameters.</summary>
    public IEnumerable<string> TargetsIn(ExecutionPlan plan) => taps.SelectMany(t => plan.ApplicationsOf(t.Layer).Select(a => a.OutputValue)).Concat(wholeParameters)
        .Concat(wholeLayers.SelectMany(w => w.Layer.Bias is null ? [w.Layer.Id] : new[] { w.Layer.Id, w.Layer.Bias }));

    /// <summary>The values <see cref="BeginSequence"/> reads from the forward pass of <paramref name="plan"/>: the tapped layers' inputs.</summary>
    public IEnumerable<string> InputValuesIn(ExecutionPlan plan) => taps.SelectMany(t => plan.ApplicationsOf(t.Layer).Select(a => a.InputValue));

    /// <summary>Reads the layer inputs of the sequence the plan just ran forward and prepares what its positions share.</summary>
    public void BeginSequence(ExecutionPlan plan)
    {
        foreach (Tap tap in taps)
        {
            int inF = tap.Layer.In, a = tap.ADim;
            tap.Applications = plan.ApplicationsOf(tap.Layer);
            var inputs = tap.Applications.Select(app => (NdArray<float>)plan.Get(app.InputValue)).ToList();
            int rows = checked((int)inputs.Sum(x => x.Length / inF));
            tap.Rows = rows;
            if (tap.Inputs.Length != rows * a) tap.Inputs = new float[rows * a];
            int row = 0;
            foreach (NdArray<float> x in inputs)
                for (int r = 0; r < x.Length / inF; r++, row++)
                {
                    x.Data.AsSpan(r * inF, inF).CopyTo(tap.Inputs.AsSpan(row * a, inF));
                    if (tap.WithBias) tap.Inputs[row * a + inF] = 1;
                }

            if (tap.Projected.Length != rows * a) tap.Projected = new float[rows * a];
            tap.Posterior.ProjectInputRows(tap.Inputs, rows, tap.Projected);
            // The Gram costs 2·M²·out flops a position, X itself 2·M·a·out: the Gram while M < a (it then also fits in an A factor's memory).
            int gramLength = tap.Posterior.UsesInputGram && rows < a ? rows * rows : 0;
            if (tap.Gram.Length != gramLength) tap.Gram = new float[gramLength];
            if (gramLength > 0) backend.Gemm(new GemmShape(rows, rows, a, TransB: true), tap.Inputs, tap.Inputs, tap.Gram);

            int outF = tap.Layer.Out;
            long work = tap.Posterior.OuterProductWorkspace(rows);
            Grow(ref gathered, tap.Applications.Count > 1 ? (long)rows * outF : 0);
            Grow(ref compactG, (long)rows * outF);
            Grow(ref compactA, (long)rows * a);
            Grow(ref gram, (long)rows * rows);
            Grow(ref workspace, work);
            if (rowIndex.Length < rows) rowIndex = new int[rows];
        }
    }

    /// <summary>The epistemic score of the gradient the backward pass just computed for its cotangent <paramref name="cotangent"/> (seeded at the logits).</summary>
    public double Score(Backward backward, int cotangent = 0)
    {
        double sum = 0;
        foreach (Tap tap in taps) sum += Score(tap, backward, cotangent);
        foreach (string name in wholeParameters)
            if (backward.HasGradient(name)) sum += IsotropicLayerPosterior.SumOfSquares(backward.Gradient(name, cotangent).Data);
        foreach (var (layer, buffer) in wholeLayers) sum += KfacScoring.LayerGradientQuadratic(layer, metric.For(layer, layer.Bias is not null, backend), backward, buffer, cotangent);
        return sum;
    }

    private double Score(Tap tap, Backward backward, int cotangent)
    {
        int outF = tap.Layer.Out, a = tap.ADim, m = tap.Rows;
        ReadOnlySpan<float> g;
        if (tap.Applications.Count == 1)
        {
            string output = tap.Applications[0].OutputValue;
            if (!backward.HasGradient(output)) return 0;
            g = backward.Gradient(output, cotangent).Data;
        }
        else
        {
            int offset = 0;
            foreach (LayerApplication app in tap.Applications)
            {
                int length = (int)(backward.Plan.Get(app.InputValue).Length / tap.Layer.In * outF);
                Span<float> target = gathered.AsSpan(offset, length);
                if (backward.HasGradient(app.OutputValue)) backward.Gradient(app.OutputValue, cotangent).Data.CopyTo(target);
                else target.Clear();
                offset += length;
            }
            g = gathered.AsSpan(0, m * outF);
        }

        int rows = 0;
        for (int r = 0; r < m; r++)
            if (!Nonzero.IsZero(g.Slice(r * outF, outF))) rowIndex[rows++] = r;
        if (rows == 0) return 0;
        bool prefix = rowIndex[rows - 1] == rows - 1;
        ReadOnlySpan<float> gc = prefix ? g[..(rows * outF)] : Gather(g, outF, rows, compactG);

        ReadOnlySpan<float> projected = prefix ? tap.Projected.AsSpan(0, rows * a) : Gather(tap.Projected, a, rows, compactA);
        Span<float> keptGram = tap.Gram.Length == 0 ? default : gram.AsSpan(0, rows * rows);
        for (int i = 0; i < keptGram.Length / rows; i++)
            if (prefix) tap.Gram.AsSpan(i * m, rows).CopyTo(keptGram.Slice(i * rows, rows));
            else
                for (int j = 0; j < rows; j++) keptGram[i * rows + j] = tap.Gram[rowIndex[i] * m + rowIndex[j]];
        return tap.Posterior.OuterProductQuadratic(gc, projected, rows, workspace, keptGram);
    }

    /// <summary>The rows of <paramref name="source"/> listed in rowIndex, packed into <paramref name="target"/>.</summary>
    private ReadOnlySpan<float> Gather(ReadOnlySpan<float> source, int width, int rows, float[] target)
    {
        for (int i = 0; i < rows; i++) source.Slice(rowIndex[i] * width, width).CopyTo(target.AsSpan(i * width, width));
        return target.AsSpan(0, rows * width);
    }

    private static void Grow(ref float[] buffer, long length)
    {
        if (length > Array.MaxLength) throw FisherKernelsException.Argument($"score: a workspace of {length} floats is too large");
        if (buffer.Length < length) buffer = new float[length];
    }

    /// <summary>
    /// Whether every use of <paramref name="value"/> (through Transpose/Identity/Cast) is the layer's own: the weight
    /// operand of one of its MatMul/Gemm nodes, or its bias (Gemm's C, or the Add giving the layer output).
    /// </summary>
    private static bool OnlyInLayer(OnnxGraph graph, string value, Layer layer, bool weight)
    {
        if (graph.Outputs.Any(o => o.Name == value)) return false;
        // Every depth: a use inside a Loop body or If branch counts as any other.
        if (!graph.DeepConsumers.TryGetValue(value, out var consumers)) return true;
        foreach (Node node in consumers)
            for (int i = 0; i < node.Inputs.Length; i++)
            {
                if (node.Inputs[i] != value) continue;
                bool own = node.Domain.Length == 0 && PassThrough.Contains(node.OpType) && i == 0
                    ? OnlyInLayer(graph, node.Outputs[0], layer, weight)
                    : layer.Applications.Any(app => weight ? app.Node == node && i == 1
                        : node.OpType == "Gemm" ? app.Node == node && i == 2
                        : node is { OpType: "Add", Domain: "", Inputs.Length: 2 } && node.Outputs[0] == app.OutputValue && node.Inputs[1 - i] == app.Node.Outputs[0]);
                if (!own) return false;
            }
        return true;
    }
}

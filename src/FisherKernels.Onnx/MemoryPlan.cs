using System.Globalization;
using System.Text.Json;
using FisherKernels.Curvature;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Onnx;

/// <summary>
/// The memory plan of a fit (SPEC §3), stated before any batch runs: each layer's factor forms and bytes
/// (<see cref="FactorPlan"/>), their eigenbases, one batch's activations and the model, and their total; a plan whose
/// total exceeds the machine's available memory is refused before anything starts, naming the largest layers and what
/// would make it fit. Every size is 64-bit and computed from shapes alone: nothing is allocated to plan.
/// </summary>
public sealed class MemoryPlan
{
    MemoryPlan(FactorPlan factors, long activationBytes, long modelBytes, int batch, int seq)
    {
        Factors = factors;
        ActivationBytes = activationBytes;
        ModelBytes = modelBytes;
        Batch = batch;
        Seq = seq;
    }

    public FactorPlan Factors { get; }

    /// <summary>
    /// One batch: the forward values a fit keeps for its backward pass, and as much again for their gradients (the
    /// backward pass holds a gradient per value on the path to the taps; counted at the same size, an upper estimate).
    /// </summary>
    public long ActivationBytes { get; }

    /// <summary>The model's float initializers as loaded.</summary>
    public long ModelBytes { get; }

    public int Batch { get; }
    public int Seq { get; }

    /// <summary>Factors (with a fit's Ω), eigenbases, activations and model.</summary>
    public long TotalBytes => Factors.FitBytes + Factors.EigenbasisBytes + ActivationBytes + ModelBytes;

    /// <summary>The plan of a fit of <paramref name="layers"/> over batches of <paramref name="batch"/> × <paramref name="seq"/> tokens.</summary>
    public static MemoryPlan ForFit(LanguageModel lm, IReadOnlyList<Layer> layers, int batch, int seq, long budgetBytes, int rank)
    {
        ArgumentNullException.ThrowIfNull(lm);
        if (batch < 1 || seq < 1) throw FisherKernelsException.Argument($"the memory plan needs a batch of at least 1 × 1 tokens, got {batch} × {seq}");
        var shapes = layers.Select(l => new LayerShape(l.Id, l.In, l.Out, l.Bias is not null)).ToList();
        FactorPlan factors = FactorPlan.Create(shapes, budgetBytes, rank);
        var graph = lm.Model.Graph;
        // The inputs a batch of that size gets (SPEC §1 defaults included: masks, an empty past), their values as the fit gives them.
        var inputs = lm.Inputs(new NdArray<long>([batch, seq]));
        long forward = ExecutionPlan.MeasureBuffers(lm.Model, inputs, LayerDiscovery.DefaultParameters(layers).ToHashSet(), keepAll: true);
        long model = graph.Initializers.Values.Sum(a => a.Length * ElementTypes.SizeOf(a.ElementType));
        return new MemoryPlan(factors, 2 * forward, model, batch, seq);
    }

    /// <summary>
    /// Refuses, in one line, a plan over <paramref name="availableBytes"/>: the total, the largest layers and the options
    /// that would make it fit.
    /// </summary>
    public void EnsureFits(long availableBytes)
    {
        if (TotalBytes <= availableBytes) return;
        string largest = string.Join(", ", Factors.Layers.OrderByDescending(l => l.FitBytes + l.EigenbasisBytes).Take(3)
            .Select(l => $"'{l.Layer}' {FactorPlan.Bytes(l.FitBytes + l.EigenbasisBytes)}"));
        throw FisherKernelsException.Argument(
            $"the memory plan needs {FactorPlan.Bytes(TotalBytes)} (factors {FactorPlan.Bytes(Factors.FitBytes)}, eigenbases {FactorPlan.Bytes(Factors.EigenbasisBytes)}, activations of a {Batch}×{Seq} batch {FactorPlan.Bytes(ActivationBytes)}, model {FactorPlan.Bytes(ModelBytes)}) but {FactorPlan.Bytes(availableBytes)} is available; largest layers: {largest}. Lower --rank or --memory-budget, leave layers out with --exclude-layers, or lower --batch-size");
    }

    /// <summary>The memory the machine has available now (Linux: MemAvailable; elsewhere what the GC reports).</summary>
    public static long AvailableBytes()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    /// <summary>The plan as the lines <c>fit</c> prints before its first batch: one per layer, then the totals.</summary>
    public IEnumerable<string> Describe()
    {
        int width = Math.Max(5, Factors.Layers.Select(l => l.Layer.Length).DefaultIfEmpty(0).Max());
        yield return string.Create(CultureInfo.InvariantCulture,
            $"memory plan (--memory-budget {FactorPlan.Bytes(Factors.BudgetBytes)} a layer, --rank {Factors.Rank}, batch {Batch}×{Seq}):");
        foreach (LayerPlan l in Factors.Layers)
            yield return string.Create(CultureInfo.InvariantCulture,
                $"  {l.Layer.PadRight(width)}  A {l.A.Size,6} {l.A.FormName,-7}  G {l.G.Size,6} {l.G.FormName,-7}  factors {FactorPlan.Bytes(l.FitBytes),10}  eigenbases {FactorPlan.Bytes(l.EigenbasisBytes),10}");
        yield return string.Create(CultureInfo.InvariantCulture,
            $"  total {FactorPlan.Bytes(TotalBytes)}: factors {FactorPlan.Bytes(Factors.FitBytes)}, eigenbases {FactorPlan.Bytes(Factors.EigenbasisBytes)}, activations {FactorPlan.Bytes(ActivationBytes)}, model {FactorPlan.Bytes(ModelBytes)}");
    }

    /// <summary>The plan as <c>inspect --json</c>'s <c>memory_plan</c> object (bytes as integers).</summary>
    public void WriteJson(Utf8JsonWriter json)
    {
        json.WriteStartObject("memory_plan");
        json.WriteNumber("memory_budget", Factors.BudgetBytes);
        json.WriteNumber("rank", Factors.Rank);
        json.WriteNumber("batch_size", Batch);
        json.WriteNumber("seq", Seq);
        json.WriteStartArray("layers");
        foreach (LayerPlan l in Factors.Layers)
        {
            json.WriteStartObject();
            json.WriteString("id", l.Layer);
            json.WriteString("a_form", l.A.FormName);
            json.WriteString("g_form", l.G.FormName);
            json.WriteNumber("factor_bytes", l.FitBytes);
            json.WriteNumber("eigenbasis_bytes", l.EigenbasisBytes);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteNumber("factor_bytes", Factors.FitBytes);
        json.WriteNumber("eigenbasis_bytes", Factors.EigenbasisBytes);
        json.WriteNumber("activation_bytes", ActivationBytes);
        json.WriteNumber("model_bytes", ModelBytes);
        json.WriteNumber("total_bytes", TotalBytes);
        json.WriteEndObject();
    }
}

using System.Globalization;

namespace FisherKernels.Curvature;

/// <summary>How a factor side is held (SPEC §3).</summary>
public enum FactorForm { Dense, LowRank }

/// <summary>
/// One side of a layer as planned: dense <c>[n, n]</c>, or low rank (a sketch of <see cref="SketchColumns"/> = rank + 8 columns).
/// Bytes in 64 bits: a vocabulary-sized dense G passes 2³¹ entries.
/// </summary>
public sealed record SidePlan(int Size, FactorForm Form, int Rank)
{
    public int SketchColumns => Rank + FactorSketch.Oversampling;

    /// <summary>What the curvature stores: dense n² floats; low rank Y <c>[n, k]</c> and diag <c>[n]</c>.</summary>
    public long FactorBytes => Form == FactorForm.Dense ? 4L * Size * Size : 4L * Size * (SketchColumns + 1);

    /// <summary>What only the fit adds: Ω <c>[n, k]</c> of a low-rank side (a dense side updates its factor in place).</summary>
    public long FitOnlyBytes => Form == FactorForm.Dense ? 0 : 4L * Size * SketchColumns;

    /// <summary>The posterior's basis: dense Q (float32) and float64 eigenvalues; low rank U <c>[n, r]</c>, s and d.</summary>
    public long EigenbasisBytes => Form == FactorForm.Dense ? 4L * Size * Size + 8L * Size : 4L * Size * Rank + 8L * Rank + 4L * Size;

    public string FormName => Form == FactorForm.Dense ? "dense" : "lowrank";
}

/// <summary>One layer's plan: its two sides, and (both dense) the <c>[g × a]</c> float32 inverse denominators of the posterior.</summary>
public sealed record LayerPlan(string Layer, SidePlan A, SidePlan G)
{
    public long FactorBytes => A.FactorBytes + G.FactorBytes;
    public long FitBytes => FactorBytes + A.FitOnlyBytes + G.FitOnlyBytes;
    public long EigenbasisBytes => A.EigenbasisBytes + G.EigenbasisBytes + (A.Form == FactorForm.Dense && G.Form == FactorForm.Dense ? 4L * A.Size * G.Size : 0);

    /// <summary>What the budget is compared with: the factors and their eigenbases.</summary>
    public long BudgetBytes => FactorBytes + EigenbasisBytes;
}

/// <summary>
/// The factor forms of every layer (SPEC §3): a layer keeps both sides dense when its factors and eigenbases fit
/// <c>--memory-budget</c> (per layer); otherwise its larger side becomes low rank, then both; a layer that does not fit
/// even so is an error naming it and what to change. Sides no larger than a sketch (n ≤ rank + 8) stay dense.
/// </summary>
public sealed class FactorPlan
{
    public const long DefaultBudgetBytes = 1L << 30;
    public const int DefaultRank = 64;

    FactorPlan(IReadOnlyList<LayerPlan> layers, long budget, int rank)
    {
        Layers = layers;
        BudgetBytes = budget;
        Rank = rank;
    }

    public IReadOnlyList<LayerPlan> Layers { get; }
    public long BudgetBytes { get; }
    public int Rank { get; }

    public long FactorBytes => Layers.Sum(l => l.FactorBytes);
    public long FitBytes => Layers.Sum(l => l.FitBytes);
    public long EigenbasisBytes => Layers.Sum(l => l.EigenbasisBytes);

    public static FactorPlan Create(IReadOnlyList<LayerShape> layers, long budgetBytes = DefaultBudgetBytes, int rank = DefaultRank)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (budgetBytes < 1) throw FisherKernelsException.Argument($"--memory-budget must be positive, got {budgetBytes}");
        if (rank < 1) throw FisherKernelsException.Argument($"--rank must be at least 1, got {rank}");
        var plans = new List<LayerPlan>(layers.Count);
        foreach (LayerShape s in layers) plans.Add(PlanLayer(s, budgetBytes, rank));
        return new FactorPlan(plans, budgetBytes, rank);
    }

    static LayerPlan PlanLayer(LayerShape s, long budget, int rank)
    {
        int a = s.InFeatures + (s.HasBias ? 1 : 0), g = s.OutFeatures;
        SidePlan Side(int n, bool lowRank) => new(n, lowRank && n > rank + FactorSketch.Oversampling ? FactorForm.LowRank : FactorForm.Dense, rank);
        var plan = new LayerPlan(s.Layer, Side(a, false), Side(g, false));
        if (plan.BudgetBytes <= budget) return plan;
        plan = a >= g ? plan with { A = Side(a, true) } : plan with { G = Side(g, true) };
        if (plan.BudgetBytes <= budget) return plan;
        plan = new LayerPlan(s.Layer, Side(a, true), Side(g, true));
        if (plan.BudgetBytes <= budget) return plan;
        throw FisherKernelsException.Argument(
            $"layer '{s.Layer}' (A [{a}]², G [{g}]²) needs {Bytes(plan.BudgetBytes)} even with its {(plan.A.Form == FactorForm.Dense || plan.G.Form == FactorForm.Dense ? "larger side" : "sides")} low rank (rank {rank}), over --memory-budget {Bytes(budget)}: raise --memory-budget, lower --rank, or leave the layer out with --exclude-layers");
    }

    /// <summary>Bytes in binary units, as the plan prints them ("1.50 GiB").</summary>
    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B") : string.Create(CultureInfo.InvariantCulture, $"{v:0.00} {units[u]}");
    }
}

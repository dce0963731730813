using System.Diagnostics;
using System.Globalization;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// The time of every step of an <see cref="ExecutionPlan"/> in each run it is passed to, reported by
/// operator type as medians over the runs (robust to a busy machine): where a forward pass (or a
/// <see cref="Backward"/> walk) spends its time (bench --model --verbose). Only steps that were timed
/// are reported (a forward skips views; a reverse walk skips steps off its path).
/// </summary>
public sealed class PlanProfile(ExecutionPlan plan)
{
    private readonly List<long[]> runs = [];
    private long[]? current;
    private readonly bool[] timed = new bool[plan.Steps.Count];

    public ExecutionPlan Plan { get; } = plan;

    public int Runs => runs.Count;

    internal void BeginRun() => runs.Add(current = new long[Plan.Steps.Count]);

    internal void Add(int step, long elapsedTicks)
    {
        current![step] += elapsedTicks;
        timed[step] = true;
    }

    /// <summary>Median milliseconds of each step over the runs.</summary>
    private double[] StepMedians()
    {
        var medians = new double[Plan.Steps.Count];
        var times = new long[runs.Count];
        for (int s = 0; s < medians.Length && times.Length > 0; s++)
        {
            for (int r = 0; r < times.Length; r++) times[r] = runs[r][s];
            Array.Sort(times);
            medians[s] = times[times.Length / 2] * 1000.0 / Stopwatch.Frequency;
        }
        return medians;
    }

    /// <summary>Median milliseconds per run by operator type (with step counts), the most expensive first.</summary>
    public IReadOnlyList<(string OpType, int Steps, double Ms)> ByOperator()
    {
        var medians = StepMedians();
        return Plan.Steps.Select((s, i) => (Type: s.Op.Node.OpType, Ms: medians[i], Timed: timed[i]))
            .Where(s => s.Timed)
            .GroupBy(s => s.Type)
            .Select(g => (g.Key, g.Count(), g.Sum(s => s.Ms)))
            .OrderByDescending(r => r.Item3)
            .ToList();
    }

    /// <summary>
    /// One line per operator type (steps, summed step medians, share of the total), then the
    /// <paramref name="slowest"/> most expensive steps with their output shapes.
    /// </summary>
    public string Format(int slowest = 10)
    {
        var rows = ByOperator();
        var medians = StepMedians();
        double total = rows.Sum(r => r.Ms);
        var lines = rows.Select(r => Invariant($"{r.OpType,-28} {r.Steps,4} steps {r.Ms,8:F3} ms {100 * r.Ms / Math.Max(total, 1e-12),5:F1}%"))
            .Append(Invariant($"{"total",-28} {rows.Sum(r => r.Steps),4} steps {total,8:F3} ms"))
            .Concat(Enumerable.Range(0, medians.Length).Where(i => timed[i]).OrderByDescending(i => medians[i]).Take(slowest)
                .Select(i => Invariant($"  {medians[i],8:F3} ms  {Plan.Steps[i].Op.Node} -> [{string.Join(", ", Plan.Steps[i].Outputs.Select(o => ShapeUtil.Format(o.Shape)))}]")));
        return string.Join(Environment.NewLine, lines);
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}

using System.Diagnostics;
using System.Globalization;

namespace FisherKernels.Onnx.Jobs;

/// <summary>Where a repeated piece of work spends its time: milliseconds per named stage, summed within a run, medians over runs.</summary>
public sealed class StageTimes
{
    private readonly Dictionary<string, List<double>> stages = new(StringComparer.Ordinal);
    private readonly Dictionary<string, double> run = new(StringComparer.Ordinal);
    private long last;

    /// <summary>Starts a run (ends the previous one).</summary>
    public void Start()
    {
        EndRun();
        last = Stopwatch.GetTimestamp();
    }

    /// <summary>Charges the time since the last lap (or the start) to <paramref name="stage"/>.</summary>
    public void Lap(string stage)
    {
        long now = Stopwatch.GetTimestamp();
        run[stage] = run.GetValueOrDefault(stage) + Stopwatch.GetElapsedTime(last, now).TotalMilliseconds;
        last = now;
    }

    /// <summary>One line per stage, in the order first seen: its median over the runs.</summary>
    public string Format()
    {
        EndRun();
        return string.Join(Environment.NewLine, stages.Select(kv =>
        {
            var times = kv.Value.Order().ToArray();
            return string.Create(CultureInfo.InvariantCulture, $"  {kv.Key,-12} {times[times.Length / 2],8:F2} ms");
        }));
    }

    private void EndRun()
    {
        foreach (var (stage, ms) in run)
        {
            if (!stages.TryGetValue(stage, out var list)) stages[stage] = list = [];
            list.Add(ms);
        }
        run.Clear();
    }
}

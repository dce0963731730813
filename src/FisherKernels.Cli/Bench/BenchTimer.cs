using System.Diagnostics;

namespace FisherKernels.Cli.Bench;

/// <summary>Warm-up then median wall time of repeated runs (SPEC §6: median of at least 5).</summary>
internal static class BenchTimer
{
    public static double MedianMs(Action action, int runs = 7, int warmup = 2)
    {
        for (int i = 0; i < warmup; i++) action();
        var times = new double[Math.Max(5, runs)];
        for (int i = 0; i < times.Length; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }
}

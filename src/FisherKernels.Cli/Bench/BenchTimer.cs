using System.Diagnostics;

namespace FisherKernels.Cli.Bench;

/// <summary>
/// Times a figure and its baseline in the same process (SPEC §6): both warmed up, then runs
/// alternate ours/baseline so that load from other processes hits both alike; medians of ≥ 5 runs.
/// </summary>
internal static class BenchTimer
{
    public static (double OursMs, double BaselineMs) MedianPairMs(Action ours, Action baseline, int runs = 5, int warmup = 1)
    {
        for (int i = 0; i < warmup; i++) { ours(); baseline(); }
        var oursTimes = new double[Math.Max(5, runs)];
        var baselineTimes = new double[oursTimes.Length];
        for (int i = 0; i < oursTimes.Length; i++)
        {
            oursTimes[i] = TimeMs(ours);
            baselineTimes[i] = TimeMs(baseline);
        }
        return (Median(oursTimes), Median(baselineTimes));
    }

    private static double TimeMs(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    private static double Median(double[] times)
    {
        Array.Sort(times);
        return times.Length % 2 == 1 ? times[times.Length / 2] : (times[times.Length / 2 - 1] + times[times.Length / 2]) / 2;
    }
}

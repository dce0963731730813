using System.Diagnostics;

namespace FisherKernels.Cli.Bench;

/// <summary>One side's run times: median, fastest and slowest, in milliseconds.</summary>
internal sealed record Timing(double MedianMs, double MinMs, double MaxMs)
{
    public static Timing Of(IReadOnlyCollection<double> times)
    {
        var sorted = times.Order().ToArray();
        int half = sorted.Length / 2;
        double median = sorted.Length % 2 == 1 ? sorted[half] : (sorted[half - 1] + sorted[half]) / 2;
        return new Timing(median, sorted[0], sorted[^1]);
    }
}

/// <summary>
/// Times a figure and its baseline in the same process the way SPEC §6 asks: each side in blocks of its own
/// (warm-up, then <c>runs</c> timed runs of one side, then the same for the other), never alternating run by run, so
/// that neither side runs on caches, thread pools or spinning threads the other left behind; the blocks are repeated,
/// the leading side swapping each round, so that load from other processes falls on both alike.
/// </summary>
internal static class BenchTimer
{
    /// <summary>The pause between blocks: long enough for a thread pool that spins after its work (ONNX Runtime's does) to park.</summary>
    private static readonly TimeSpan Settle = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// The least time each side's first block warms up for (beyond its warm-up runs): .NET compiles a method first
    /// quickly and recompiles it optimized after about 30 calls, so a forward pass reaches its speed only after tens of
    /// runs (measured: 3-5x slower for its first 15). The command sets it from --quick (tests: zero).
    /// </summary>
    public static TimeSpan FirstWarmup { get; set; } = TimeSpan.FromSeconds(1);

    /// <param name="runs">Timed runs per block (at least 5).</param>
    /// <param name="blocks">Blocks per side (at least 2).</param>
    /// <param name="warmup">Untimed runs at the start of every block.</param>
    /// <param name="firstWarmup">The least warm-up time of each side's first block (null: <see cref="FirstWarmup"/>).</param>
    public static (Timing Ours, Timing Baseline) Blocks(Action ours, Action baseline, int runs = 5, int blocks = 2, int warmup = 1,
                                                        TimeSpan? firstWarmup = null)
    {
        runs = Math.Max(5, runs);
        blocks = Math.Max(2, blocks);
        var oursTimes = new List<double>(runs * blocks);
        var baselineTimes = new List<double>(runs * blocks);
        for (int round = 0; round < blocks; round++)
        {
            bool oursFirst = round % 2 == 0;
            var warmupTime = round == 0 ? firstWarmup ?? FirstWarmup : TimeSpan.Zero;
            Block(oursFirst ? ours : baseline, oursFirst ? oursTimes : baselineTimes, runs, warmup, warmupTime);
            Block(oursFirst ? baseline : ours, oursFirst ? baselineTimes : oursTimes, runs, warmup, warmupTime);
        }
        return (Timing.Of(oursTimes), Timing.Of(baselineTimes));
    }

    private static void Block(Action action, List<double> times, int runs, int warmup, TimeSpan warmupTime)
    {
        Thread.Sleep(Settle);
        long warmupStart = Stopwatch.GetTimestamp();
        for (int i = 0; i < warmup || Stopwatch.GetElapsedTime(warmupStart) < warmupTime; i++) action();
        for (int i = 0; i < runs; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
    }
}

namespace FisherKernels.Cli.Bench;

/// <summary>One row of `bench --json` (SPEC §6): a figure and its baseline, timed in the same process.</summary>
internal sealed record BenchResult(
    string Name, string Backend, string Shape, Timing Ours, double? Gflops, string Baseline, Timing BaselineTiming)
{
    /// <summary>The process's peak working set when the figure was taken (model benches' forward), beyond SPEC §6's fields.</summary>
    public long? PeakWorkingSetBytes { get; init; }

    public double MedianMs => Ours.MedianMs;

    public double BaselineMedianMs => BaselineTiming.MedianMs;

    /// <summary>Why the row failed (SPEC §6: reported, the other rows still run), or null.</summary>
    public string? Error { get; init; }

    /// <summary>A row that could not be timed, with the error in one line.</summary>
    public static BenchResult Failed(string name, string backend, string shape, string baseline, string error) =>
        new(name, backend, shape, new Timing(0, 0, 0), null, baseline, new Timing(0, 0, 0)) { Error = error.ReplaceLineEndings(" ") };

    /// <summary>Above 1 means faster than the baseline.</summary>
    public double Ratio => BaselineMedianMs / MedianMs;

    /// <summary>A result whose figure does <paramref name="flops"/> floating-point operations (null: not a flop count).</summary>
    public static BenchResult Timed(string name, string backend, string shape, double? flops,
                                    (Timing Ours, Timing Baseline) times, string baseline) =>
        new(name, backend, shape, times.Ours, flops / (times.Ours.MedianMs * 1e6), baseline, times.Baseline);
}

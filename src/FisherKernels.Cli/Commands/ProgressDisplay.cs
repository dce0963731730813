using System.Diagnostics;
using FisherKernels.Onnx.Jobs;
using Spectre.Console;

namespace FisherKernels.Cli.Commands;

/// <summary>
/// Shows a long job's <see cref="JobProgress"/>: a progress bar on a terminal, plain lines on stderr otherwise (at most one
/// every 2 s, and the last). Ctrl-C cancels the job's token, so it stops after its current step.
/// </summary>
internal static class ProgressDisplay
{
    /// <summary>
    /// Runs <paramref name="work"/>. <paramref name="stopAfter"/> (tests of resume) cancels as Ctrl-C does once it says so
    /// for a finished step (its 0-based index).
    /// </summary>
    public static T Run<T>(string description, string unit, Func<IProgress<JobProgress>, CancellationToken, T> work, Func<int, bool>? stopAfter = null)
    {
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cancel.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try
        {
            bool first = true; // the first report is where the job starts (a resumed one above 0), not a finished step
            void Step(JobProgress p, Action<bool> show)
            {
                bool start = first;
                first = false;
                show(start);
                if (!start && stopAfter?.Invoke(p.Done - 1) == true) cancel.Cancel();
            }
            if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
            {
                T result = default!;
                AnsiConsole.Progress().AutoClear(false).Start(ctx =>
                {
                    ProgressTask? task = null;
                    result = work(new Reporter(p => Step(p, _ =>
                    {
                        task ??= ctx.AddTask(description, maxValue: p.Total);
                        task.Value = p.Done;
                    })), cancel.Token);
                });
                return result;
            }
            var clock = Stopwatch.StartNew();
            return work(new Reporter(p => Step(p, start =>
            {
                if (start || !(clock.Elapsed.TotalSeconds >= 2 || p.Done == p.Total)) return;
                Console.Error.WriteLine($"{description}: {unit} {p.Done}/{p.Total}");
                clock.Restart();
            })), cancel.Token);
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>Reports synchronously, on the job's thread (<see cref="Progress{T}"/> would post them to another).</summary>
    private sealed class Reporter(Action<JobProgress> report) : IProgress<JobProgress>
    {
        public void Report(JobProgress value) => report(value);
    }
}

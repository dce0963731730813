using System.Runtime.InteropServices;
using FisherKernels.Cluster;
using FisherKernels.Onnx.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace FisherKernels.Cli.Commands;

/// <summary>The scale-out verbs (SPEC §9): <c>silo</c>, and <c>fit … --cluster</c>. They parse, call <see cref="ClusterHosting"/> and <see cref="ClusterFit"/>, and print.</summary>
internal static class ClusterCommands
{
    /// <summary>
    /// `silo --cluster NAME [--clustering localhost|redis=…|adonet=INVARIANT:CONNECTION] [--threads N]`: joins the cluster and fits
    /// the shards it is given until Ctrl-C or SIGTERM (a graceful stop: a running shard saves its checkpoint and runs again elsewhere).
    /// </summary>
    public static int Silo(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("silo", args.AsSpan(1), ["--cluster", "--clustering", "--backend", "--threads"], []);
        string cluster = options.Required("--cluster");
        Clustering clustering = Clustering.Parse(options.Optional("--clustering") ?? "localhost");
        ModelCommands.Context(options); // a wrong --backend or --threads fails now, not at the first shard
        using var stop = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; stop.Cancel(); };
        Console.CancelKeyPress += onCancel;
        using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
        try
        {
            ClusterHosting.RunSiloAsync(cluster, clustering, () => ModelCommands.Context(options), endpoint =>
            {
                stdout.WriteLine($"silo of cluster '{cluster}' ready: silo {endpoint.Silo}, gateway {endpoint.Gateway}{(endpoint.Primary ? " (primary: keeps the localhost membership)" : "")}");
                stdout.Flush();
            }, stop.Token).GetAwaiter().GetResult();
        }
        finally { Console.CancelKeyPress -= onCancel; }
        stdout.WriteLine($"silo of cluster '{cluster}' stopped");
        return 0;
    }

    /// <summary>`fit … --cluster NAME [--clustering …] [--shards N]`: the fit of <paramref name="request"/> on the cluster, progress as shards done per silo on stderr.</summary>
    public static int Fit(FitRequest request, CommandOptions options, TextWriter stdout)
    {
        string cluster = options.Required("--cluster");
        Clustering clustering = Clustering.Parse(options.Optional("--clustering") ?? "localhost");
        int shards = options.Int("--shards", 0, 1);
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cancel.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try
        {
            using IHost client = ClusterHosting.ConnectAsync(cluster, clustering, cancel.Token).GetAwaiter().GetResult();
            var progress = new Reporter(p => Console.Error.WriteLine(
                $"fit --cluster {cluster}: shard {p.Last.Shard + 1} ({p.Last.Batches}) done on {p.Last.Silo}{(p.Last.Attempts > 1 ? $" (run {p.Last.Attempts}, resumed at batch {p.Last.ResumedFrom})" : "")}; " +
                $"{p.Done}/{p.Shards} shards; per silo: {string.Join(", ", p.DonePerSilo.OrderBy(s => s.Key, StringComparer.Ordinal).Select(s => $"{s.Key} {s.Value}"))}"));
            ClusterFitResult result = ClusterFit.RunAsync(client.Services.GetRequiredService<IClusterClient>(), request, shards, progress, cancel.Token)
                .GetAwaiter().GetResult();
            stdout.WriteLine($"{FitService.Summary(request.OutPath, result.Curvature)}, {result.Shards.Count} shards on {result.Shards.Select(s => s.Silo).Distinct().Count()} silos");
            return 0;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    sealed class Reporter(Action<ShardProgress> report) : IProgress<ShardProgress>
    {
        public void Report(ShardProgress value) => report(value);
    }
}

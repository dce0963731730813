using System.Diagnostics;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using Microsoft.Extensions.Hosting;
using Orleans.Runtime;

namespace FisherKernels.Cluster;

/// <summary>What a silo fits shards with: its compute context, one per fit (a silo's own choice: <c>silo --threads</c>).</summary>
public sealed class ShardFitter(Func<OpContext> context)
{
    /// <summary>Called after each batch of a shard on this silo, with the token that stops the fit (tests pause a shard here to kill its silo).</summary>
    public Action<string, ShardWork, JobProgress, CancellationToken>? AfterBatch { get; init; }

    /// <summary>Called at each poll of a shard on this silo, with the silo (tests make a poll fail here, as a busy silo's may time out).</summary>
    public Action<string>? BeforePoll { get; init; }

    public FitResult Fit(FitRequest request, IProgress<JobProgress> progress, CancellationToken cancel) =>
        new FitService(context()).Run(request, progress, cancel);
}

/// <summary>
/// Fits one shard (<see cref="IShardFitGrain"/>) with <see cref="FitService"/>, resuming from the shard's checkpoint when an earlier
/// run left one. A silo stopping cancels the fit: it saves the checkpoint after the current batch and reports
/// <see cref="ShardState.Interrupted"/>. Placement is random unless the caller hints a silo (the coordinator does).
/// </summary>
[Orleans.Placement.RandomPlacement]
public sealed class ShardFitGrain(ShardFitter fitter, ILocalSiloDetails silo, IHostApplicationLifetime lifetime) : Grain, IShardFitGrain
{
    readonly CancellationTokenSource stop = new();
    readonly Action<string, ShardWork, JobProgress, CancellationToken>? afterBatch = fitter.AfterBatch;
    readonly Action<string>? beforePoll = fitter.BeforePoll;
    readonly object gate = new();
    readonly Stopwatch clock = new();
    Task? run;
    ShardState state = ShardState.NotStarted;
    int done, total, resumedFrom = -1;
    string? error;

    string Silo => silo.SiloAddress.ToString();

    public Task Start(ShardWork work)
    {
        ArgumentNullException.ThrowIfNull(work);
        lock (gate)
        {
            if (run is not null) return Task.CompletedTask;
            state = ShardState.Running;
            total = work.LastBatch - work.FirstBatch;
            clock.Start();
            run = Task.Run(() => Fit(work));
        }
        return Task.CompletedTask;
    }

    public Task<ShardStatus> Poll()
    {
        beforePoll?.Invoke(Silo);
        lock (gate) return Task.FromResult(new ShardStatus(Silo, state, done, total, Math.Max(resumedFrom, 0), clock.Elapsed.TotalSeconds, error));
    }

    void Fit(ShardWork work)
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stop.Token, lifetime.ApplicationStopping);
        ShardState end;
        string? message = null;
        try
        {
            // The token file must be on a path every silo reads (SPEC §9); say which silo could not, not only which file.
            try { using (File.OpenRead(work.TokensPath)) { } }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw FisherKernelsException.Argument($"silo {Silo} cannot read the token file '{work.TokensPath}' ({e.Message}); every silo must read it at the same path");
            }
            var progress = new Progress(this, work, cancel.Token);
            FitResult result = fitter.Fit(work.ToRequest(), progress, cancel.Token);
            end = result.Completed ? ShardState.Finished : ShardState.Interrupted;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            end = ShardState.Failed;
            message = e.Message;
        }
        lock (gate)
        {
            clock.Stop();
            state = end;
            error = message;
        }
    }

    /// <summary>Synchronous (not <see cref="Progress{T}"/>): the pause hook must run on the fit's thread, between batches.</summary>
    sealed class Progress(ShardFitGrain grain, ShardWork work, CancellationToken cancel) : IProgress<JobProgress>
    {
        public void Report(JobProgress value)
        {
            lock (grain.gate)
            {
                if (grain.resumedFrom < 0) grain.resumedFrom = value.Done;
                grain.done = value.Done;
            }
            if (value.Done > grain.resumedFrom) grain.afterBatch?.Invoke(grain.Silo, work, value, cancel);
        }
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        // Deactivated while fitting (the silo is stopping): save the checkpoint so the shard resumes elsewhere.
        await stop.CancelAsync();
        Task? fit;
        lock (gate) fit = run;
        if (fit is not null) await fit.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.ContinueOnCapturedContext | ConfigureAwaitOptions.SuppressThrowing);
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Onnx.Jobs;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace FisherKernels.Cluster;

/// <summary>A shard finished: which, where, after how many tries, from which checkpointed batch, in how long.</summary>
public sealed record ShardRecord(int Shard, BatchRange Batches, string Silo, int Attempts, int ResumedFrom, double Seconds);

/// <summary>Shards done of all, after a shard finished on <paramref name="Silo"/>; <paramref name="DonePerSilo"/> counts every silo's.</summary>
public sealed record ShardProgress(ShardRecord Last, int Done, int Shards, IReadOnlyDictionary<string, int> DonePerSilo);

/// <summary>The merged curvature (already written) and how its shards ran; <see cref="MergeSeconds"/> is the load-and-merge time.</summary>
public sealed record ClusterFitResult(KfacCurvature Curvature, IReadOnlyList<ShardRecord> Shards, double MergeSeconds);

/// <summary>
/// The coordinator of a cluster fit (SPEC §9). It cuts the token file into shards of whole batches, hands one shard at a time to
/// each active silo (a placement hint), polls, and when a silo stops answering or stops, runs that silo's shard again on
/// another one, which resumes from the shard's checkpoint on the shared path. Each shard's curvature is a file; the result is
/// those files merged in shard order with <see cref="KfacCurvature.MergeAll"/>, the code of <c>merge</c>: a shard is counted once
/// whatever ran it how often, and the result does not depend on which silo fitted what.
/// </summary>
public static class ClusterFit
{
    /// <summary>Between polls of a running shard.</summary>
    public static TimeSpan PollInterval { get; set; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Runs of one shard before the fit gives up (each lost silo costs one).</summary>
    public const int MaxAttempts = 5;

    /// <summary>
    /// Polls of a running shard that may fail in a row (a timeout, an unreachable silo) before its shard goes elsewhere. One
    /// slow answer from a busy silo is not a death; a silo that has left the cluster's membership loses its shard at once.
    /// </summary>
    public const int MaxFailedPolls = 3;

    /// <summary>Contiguous shards of whole batches, sizes differing by at most one.</summary>
    public static IReadOnlyList<BatchRange> Plan(int batches, int shards)
    {
        if (batches < 1) throw FisherKernelsException.Argument("fit --cluster: the token file has no batches");
        if (shards < 1) throw FisherKernelsException.Argument($"fit --cluster: --shards must be at least 1, got {shards}");
        shards = Math.Min(shards, batches);
        var plan = new List<BatchRange>(shards);
        for (int s = 0, first = 0; s < shards; s++)
        {
            int size = batches / shards + (s < batches % shards ? 1 : 0);
            plan.Add(new BatchRange(first, first + size));
            first += size;
        }
        return plan;
    }

    /// <summary>
    /// Fits <paramref name="request"/> on the cluster behind <paramref name="grains"/> in <paramref name="shards"/> shards (0: two per
    /// active silo), writes the merged curvature to its output and returns it.
    /// </summary>
    public static async Task<ClusterFitResult> RunAsync(IGrainFactory grains, FitRequest request, int shards = 0,
                                                        IProgress<ShardProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(grains);
        ArgumentNullException.ThrowIfNull(request);
        Validate(request);
        int sequences;
        using (NpyRows rows = NpyFile.OpenRows(request.TokensPath))
        {
            if (rows.Shape.Length != 2 || rows.Shape[0] < 1 || rows.Shape[1] < 1)
                throw FisherKernelsException.Argument($"{request.TokensPath}: token ids must have shape [batch, seq] with both at least 1, got [{ShapeUtil.Format(rows.Shape)}]");
            sequences = rows.Shape[0];
        }
        int batches = (sequences + request.BatchSize - 1) / request.BatchSize;
        if (shards == 0) shards = 2 * (await ActiveSilos(grains)).Count;
        return await RunAsync(grains, request, Plan(batches, Math.Max(shards, 1)), progress, cancel);
    }

    /// <summary><see cref="RunAsync(IGrainFactory, FitRequest, int, IProgress{ShardProgress}?, CancellationToken)"/> over a given plan.</summary>
    public static async Task<ClusterFitResult> RunAsync(IGrainFactory grains, FitRequest request, IReadOnlyList<BatchRange> plan,
                                                        IProgress<ShardProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(grains);
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(plan);
        Validate(request);
        KfacCurvature? init = CheckSelectionAndInit(request);
        string job = Guid.NewGuid().ToString("N");
        string[] outputs = plan.Select((_, s) => $"{request.OutPath}.shard-{s + 1}-of-{plan.Count}").ToArray();
        var pending = new ConcurrentQueue<int>(Enumerable.Range(0, plan.Count));
        var attempts = new int[plan.Count];
        var finished = new ShardRecord?[plan.Count];
        var perSilo = new Dictionary<string, int>();
        var lost = new HashSet<SiloAddress>();
        var workers = new Dictionary<SiloAddress, Task>();
        using var stopWorkers = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        int doneCount = 0;
        int DoneCount() { lock (finished) return doneCount; }

        // One worker per active silo takes the next shard, runs it there and polls; a silo that fails loses its worker, the shard goes back.
        async Task Worker(SiloAddress silo)
        {
            while (!stopWorkers.IsCancellationRequested && pending.TryDequeue(out int shard))
            {
                int attempt = Interlocked.Increment(ref attempts[shard]);
                if (attempt > MaxAttempts)
                    throw FisherKernelsException.Argument($"fit --cluster: shard {shard + 1} ({plan[shard]}) was lost {MaxAttempts} times; last on silo {silo}");
                ShardStatus? status = null;
                try
                {
                    IShardFitGrain grain = grains.GetGrain<IShardFitGrain>($"{job}/{shard}/{attempt}");
                    RequestContext.Set(IPlacementDirector.PlacementHintKey, silo);
                    try { await grain.Start(ShardWork.Of(request, shard, plan[shard], outputs[shard])); }
                    finally { RequestContext.Remove(IPlacementDirector.PlacementHintKey); }
                    int failedPolls = 0;
                    do
                    {
                        await Task.Delay(PollInterval, stopWorkers.Token);
                        try
                        {
                            status = await grain.Poll();
                            failedPolls = 0;
                        }
                        catch (Exception e) when (!stopWorkers.IsCancellationRequested && e is not FisherKernelsException && ++failedPolls < MaxFailedPolls)
                        {
                            // No answer this time: ask again while the silo is still in the cluster.
                            if (!(await ActiveSilos(grains)).Contains(silo)) throw;
                            status = null;
                        }
                    }
                    while (status is null || status.State == ShardState.Running);
                }
                catch (Exception e) when (!stopWorkers.IsCancellationRequested && e is not FisherKernelsException)
                {
                    status = null; // the silo died or stopped answering: its shard runs again elsewhere
                }
                if (status?.State == ShardState.Failed)
                    throw FisherKernelsException.Argument($"fit --cluster: shard {shard + 1} ({plan[shard]}) failed: {status.Error}");
                if (status?.State != ShardState.Finished)
                {
                    pending.Enqueue(shard);
                    lock (lost) lost.Add(silo);
                    return;
                }
                var record = new ShardRecord(shard, plan[shard], status.Silo, attempt, status.ResumedFrom, status.Seconds);
                lock (finished) // one report at a time, counts in order
                {
                    finished[shard] = record;
                    perSilo[status.Silo] = perSilo.GetValueOrDefault(status.Silo) + 1;
                    doneCount++;
                    progress?.Report(new ShardProgress(record, doneCount, plan.Count, new Dictionary<string, int>(perSilo)));
                }
            }
        }

        try
        {
            while (DoneCount() < plan.Count)
            {
                cancel.ThrowIfCancellationRequested();
                IReadOnlyList<SiloAddress> active = await ActiveSilos(grains);
                SiloAddress[] usable;
                lock (lost) usable = active.Where(s => !lost.Contains(s)).ToArray();
                foreach (SiloAddress silo in usable)
                    if ((!workers.TryGetValue(silo, out Task? w) || w.IsCompleted) && !pending.IsEmpty)
                        workers[silo] = Worker(silo);
                Task[] running = workers.Values.Where(w => !w.IsCompleted).ToArray();
                if (running.Length == 0 && !pending.IsEmpty && usable.Length == 0)
                    throw FisherKernelsException.Argument($"fit --cluster: no silo left to run {pending.Count} shard(s); start silos and rerun (the shards' checkpoints resume)");
                await Task.WhenAny(running.Append(Task.Delay(TimeSpan.FromSeconds(1), cancel)));
                foreach (Task w in workers.Values.Where(w => w.IsFaulted)) await w; // a shard whose inputs are wrong ends the fit
            }
        }
        finally { await stopWorkers.CancelAsync(); }

        var clock = Stopwatch.StartNew();
        KfacCurvature merged = KfacCurvature.MergeAll(outputs.Select(KfacCurvature.Load).ToArray(), null, FitService.CreatedBy);
        if (init is not null) merged = KfacCurvature.MergeAll([init, merged], [request.InitDecay, 1.0], FitService.CreatedBy); // as the local fit does
        merged.Save(request.OutPath);
        double mergeSeconds = clock.Elapsed.TotalSeconds;
        foreach (string output in outputs)
        {
            File.Delete(output);
            File.Delete(output + ".checkpoint"); // left by a run of a lost silo that went on after its shard was given to another
        }
        return new ClusterFitResult(merged, finished.Select(r => r!).ToList(), mergeSeconds);
    }

    static void Validate(FitRequest request)
    {
        if (request.Options.Ema is not null)
            throw FisherKernelsException.Argument("fit --cluster: --ema is refused: an exponential average depends on the order of the batches, and shards run in any order (SPEC §9)");
        request.Options.Validate();
        if (request.BatchSize < 1) throw FisherKernelsException.Argument($"--batch-size must be at least 1, got {request.BatchSize}");
    }

    /// <summary>
    /// A layer selection and C0 of <c>--init</c> are checked against the model here, before any shard runs, as the local fit checks
    /// them before its first batch; the model is loaded only when one of them is given. Returns C0, merged after the shards.
    /// </summary>
    static KfacCurvature? CheckSelectionAndInit(FitRequest request)
    {
        if (request.Selection.IsAll && request.InitPath is null) return FitService.LoadInit(request, "", []); // only checks --decay
        var lm = LanguageModel.Load(request.ModelPath);
        LayerShape[] shapes = KfacScoring.Shapes(FitService.Select(lm, request.Selection));
        return FitService.LoadInit(request, KfacScoring.Sha256(request.ModelPath), shapes);
    }

    static async Task<IReadOnlyList<SiloAddress>> ActiveSilos(IGrainFactory grains) => [.. await ActiveSiloSet(grains)];

    static async Task<IEnumerable<SiloAddress>> ActiveSiloSet(IGrainFactory grains)
    {
        Dictionary<SiloAddress, SiloStatus> hosts = await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true);
        return hosts.Keys.OrderBy(s => s.ToString(), StringComparer.Ordinal);
    }
}

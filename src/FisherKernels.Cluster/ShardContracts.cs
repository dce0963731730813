using FisherKernels.Curvature;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Jobs;

namespace FisherKernels.Cluster;

/// <summary>
/// One shard of a cluster fit (SPEC §9) on the silo it was placed on: <see cref="Start"/> begins the fit of the shard's batches
/// in the background and returns at once; <see cref="Poll"/> says how far it is. The coordinator polls with a short timeout, so a
/// silo that dies is noticed within seconds however long a shard takes.
/// </summary>
[Alias("FisherKernels.Cluster.IShardFitGrain")]
public interface IShardFitGrain : IGrainWithStringKey
{
    [Alias("Start")]
    Task Start(ShardWork work);

    [Alias("Poll")]
    Task<ShardStatus> Poll();
}

/// <summary>What a shard fits: a <see cref="FitRequest"/> over batches [First, Last), in fields Orleans can carry.</summary>
[GenerateSerializer, Immutable, Alias("FisherKernels.Cluster.ShardWork")]
public sealed record ShardWork
{
    [Id(0)] public required int Shard { get; init; }
    [Id(1)] public required string ModelPath { get; init; }
    [Id(2)] public required string TokensPath { get; init; }
    [Id(3)] public string? TargetsPath { get; init; }

    /// <summary>The shard's curvature, on the shared path; its checkpoint is beside it.</summary>
    [Id(4)] public required string OutPath { get; init; }
    [Id(5)] public required int BatchSize { get; init; }
    [Id(6)] public required int FirstBatch { get; init; }
    [Id(7)] public required int LastBatch { get; init; }
    [Id(8)] public required string Fisher { get; init; }
    [Id(9)] public required int Samples { get; init; }
    [Id(10)] public required long Seed { get; init; }
    [Id(11)] public required double SamplePositions { get; init; }
    [Id(12)] public required long MemoryBudgetBytes { get; init; }
    [Id(13)] public required int Rank { get; init; }
    [Id(14)] public required double CheckpointSeconds { get; init; }

    /// <summary>The fit's layer selection (SPEC §2): <c>--layers</c>, <c>--exclude-layers</c>, <c>--last-layer</c>.</summary>
    [Id(15)] public string? Layers { get; init; }
    [Id(16)] public string? ExcludeLayers { get; init; }
    [Id(17)] public bool LastLayer { get; init; }

    /// <summary>The shard of <paramref name="fit"/> over <paramref name="batches"/>, written to <paramref name="outPath"/>.</summary>
    public static ShardWork Of(FitRequest fit, int shard, BatchRange batches, string outPath) => new()
    {
        Shard = shard,
        ModelPath = fit.ModelPath,
        TokensPath = fit.TokensPath,
        TargetsPath = fit.TargetsPath,
        OutPath = outPath,
        BatchSize = fit.BatchSize,
        FirstBatch = batches.First,
        LastBatch = batches.Last,
        Fisher = fit.Options.Fisher.Name(),
        Samples = fit.Options.Samples,
        Seed = fit.Options.Seed,
        SamplePositions = fit.Options.SamplePositions,
        MemoryBudgetBytes = fit.Options.MemoryBudgetBytes,
        Rank = fit.Options.Rank,
        CheckpointSeconds = fit.CheckpointInterval.TotalSeconds,
        Layers = fit.Selection.Include,
        ExcludeLayers = fit.Selection.Exclude,
        LastLayer = fit.Selection.LastLayer,
    };

    /// <summary>The fit a silo runs for this shard.</summary>
    public FitRequest ToRequest() => new()
    {
        ModelPath = ModelPath,
        TokensPath = TokensPath,
        TargetsPath = TargetsPath,
        OutPath = OutPath,
        BatchSize = BatchSize,
        Batches = new BatchRange(FirstBatch, LastBatch),
        CheckpointInterval = TimeSpan.FromSeconds(CheckpointSeconds),
        Selection = new LayerSelection(Layers, ExcludeLayers, LastLayer),
        Options = new KfacFitOptions
        {
            Fisher = FisherTypes.TryParse(Fisher) ?? throw FisherKernelsException.Argument($"shard {Shard}: '{Fisher}' is not a Fisher type"),
            Samples = Samples,
            Seed = Seed,
            SamplePositions = SamplePositions,
            MemoryBudgetBytes = MemoryBudgetBytes,
            Rank = Rank,
        },
    };
}

/// <summary>Where a shard's fit stands on its silo.</summary>
public enum ShardState
{
    /// <summary>This activation was given no work: the one that was is gone with its silo.</summary>
    NotStarted,
    Running,
    Finished,
    /// <summary>Stopped with the silo; its state is in the checkpoint, to resume elsewhere.</summary>
    Interrupted,
    /// <summary>The inputs are wrong (<see cref="ShardStatus.Error"/> says which): running it again elsewhere would not help.</summary>
    Failed,
}

/// <param name="Silo">The silo that runs the shard.</param>
/// <param name="ResumedFrom">Batches of the shard already in the checkpoint when this run started.</param>
[GenerateSerializer, Immutable, Alias("FisherKernels.Cluster.ShardStatus")]
public sealed record ShardStatus(
    [property: Id(0)] string Silo,
    [property: Id(1)] ShardState State,
    [property: Id(2)] int Done,
    [property: Id(3)] int Total,
    [property: Id(4)] int ResumedFrom,
    [property: Id(5)] double Seconds,
    [property: Id(6)] string? Error);

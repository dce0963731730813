using System.Diagnostics;
using System.Globalization;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Onnx.Jobs;

/// <summary>What to fit (SPEC §3, the <c>fit</c> verb of §6): a model, a token file, optional targets, where to write.</summary>
public sealed record FitRequest
{
    public required string ModelPath { get; init; }
    public required string TokensPath { get; init; }

    /// <summary>Targets <c>[batch, seq]</c> with -100 for "no loss"; null for the next token.</summary>
    public string? TargetsPath { get; init; }

    public required string OutPath { get; init; }
    public KfacFitOptions Options { get; init; } = new();

    /// <summary>A curvature of the same model to continue from (<c>--init C0</c>, SPEC §3): the result is C0 merged with this fit.</summary>
    public string? InitPath { get; init; }

    /// <summary>λ that scales C0's positions before the merge (<c>--decay</c>, forgetting); 1 keeps all of it.</summary>
    public double InitDecay { get; init; } = 1.0;

    /// <summary>Sequences a batch (<c>--batch-size</c>).</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>
    /// Only batches [First, Last) of the token file, a shard of a cluster fit (SPEC §9); null for every batch. A shard's draws
    /// are those of the whole-file fit at the same batches, so merging the shards' curvatures gives the whole-file fit.
    /// </summary>
    public BatchRange? Batches { get; init; }

    /// <summary>The longest time between checkpoints of a running fit (one is saved after a batch once this has passed).</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The layers to fit (SPEC §2 <c>--layers</c>, <c>--exclude-layers</c>, <c>--last-layer</c>); recorded in the curvature.</summary>
    public LayerSelection Selection { get; init; } = LayerSelection.All;

    /// <summary>
    /// EK-FAC (<c>--ekfac</c>, SPEC §3): once the factors are final, a second pass over the same batches and draws adds E per
    /// layer with dense sides. Not with <see cref="InitPath"/> or a shard (<see cref="Batches"/>): E belongs to the eigenbases of
    /// the factors it was computed with, and a merge changes them.
    /// </summary>
    public bool Ekfac { get; init; }

    /// <summary>Told the memory plan (SPEC §3) before any batch runs: the CLI prints it.</summary>
    public Action<MemoryPlan>? OnPlan { get; init; }

    /// <summary>
    /// Batches given in memory in place of <see cref="TokensPath"/> and <see cref="TargetsPath"/> (fit --text: the windows
    /// of its sequences, SPEC §1), each with its targets and the positions it accumulates; null to read the token file.
    /// </summary>
    public IReadOnlyList<FitRows>? Rows { get; init; }

    /// <summary>Where the fit's state is saved to resume: beside the output.</summary>
    public string CheckpointPath => OutPath + ".checkpoint";
}

/// <summary>
/// One batch given in memory: tokens and targets <c>[rows, seq]</c>, and per position whether this batch accumulates it
/// (null: every position; see <see cref="KfacAccumulator.BeginBatch"/>). <paramref name="Name"/> names it in messages.
/// </summary>
public sealed record FitRows(NdArray<long> Tokens, NdArray<long> Targets, byte[]? Assigned, string Name);

/// <summary>Batches [First, Last) of a token file.</summary>
public readonly record struct BatchRange(int First, int Last)
{
    public int Count => Last - First;

    public override string ToString() => $"batches {First}..{Last - 1}";
}

/// <summary>Steps of a long job done of all (a fit's batches, of its range for a shard), reported after each step and once before the first (a resumed fit starts above 0).</summary>
public readonly record struct JobProgress(int Done, int Total);

/// <summary>The curvature written (null when the fit was cancelled: its state is then in the checkpoint).</summary>
public sealed record FitResult(KfacCurvature? Curvature, int BatchesDone, int Batches, string CheckpointPath)
{
    public bool Completed => Curvature is not null;
}

/// <summary>
/// The K-FAC fit (SPEC §3): streams the token file a batch at a time, accumulates every layer's factors, checkpoints
/// beside the output (after a batch at most every <see cref="CheckpointInterval"/>, and when cancelled) and resumes from
/// the checkpoint when one is there; the result is byte-identical to an uninterrupted fit.
/// </summary>
public sealed class FitService(OpContext context)
{
    /// <summary>The <c>created_by</c> of every file this engine writes.</summary>
    public static string CreatedBy => $"fisherkernels {typeof(FitService).Assembly.GetName().Version?.ToString(3)}";

    /// <summary>
    /// Runs the fit. Cancelling stops after the current batch, saves the checkpoint and returns an incomplete result;
    /// running the same request again resumes.
    /// </summary>
    public FitResult Run(FitRequest request, IProgress<JobProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var lm = LanguageModel.Load(request.ModelPath);
        request.Options.Validate();
        int batchSize = request.BatchSize;
        if (batchSize < 1) throw FisherKernelsException.Argument($"--batch-size must be at least 1, got {batchSize}");
        if (lm.Model.Layers.Count == 0) throw FisherKernelsException.Argument($"fit: model '{request.ModelPath}' has no layers (MatMul/Gemm with an initializer weight, SPEC §2)");
        IReadOnlyList<Layer> layers = Select(lm, request.Selection);
        LayerShape[] shapes = KfacScoring.Shapes(layers);

        using BatchSource source = request.Rows is { } given ? BatchSource.InMemory(given, batchSize) : BatchSource.Files(request.TokensPath, request.TargetsPath, batchSize);
        BatchRange range = request.Batches ?? new BatchRange(0, source.Count);
        if (range.First < 0 || range.Last > source.Count || range.Count < 1)
            throw FisherKernelsException.Argument($"fit: {range} are not batches of '{request.TokensPath}', which has {source.Count} of {batchSize} sequences");
        int batches = range.Count;
        // Every id is checked before any work, so a bad one anywhere in the files stops the fit at once.
        int vocabulary = source.TargetsGiven ? lm.Forward(context, source.FirstRow()).Shape[2] : 0;
        for (int batch = range.First; batch < range.Last; batch++)
        {
            var rows = source.Read(batch);
            lm.Inputs(rows.Tokens, null, source.TokensName(batch));
            if (source.TargetsGiven) Targets.Check(rows.Targets, rows.Tokens.Shape, vocabulary, source.TargetsName(batch));
        }
        // The memory plan before any batch runs (SPEC §3): a plan over the machine's available memory stops here.
        MemoryPlan plan = MemoryPlan.ForFit(lm, layers, source.LargestBatch, source.LongestRow, request.Options.MemoryBudgetBytes, request.Options.Rank);
        request.OnPlan?.Invoke(plan);
        plan.EnsureFits(MemoryPlan.AvailableBytes());
        string modelSha = KfacScoring.Sha256(request.ModelPath);
        string fingerprint = source.Fingerprint + (request.Batches is null ? "" : $", {range}");
        // C0 is checked before any batch runs: a curvature of another model or fisher type stops the fit at once.
        KfacCurvature? init = LoadInit(request, modelSha, shapes);
        if (request.Ekfac && (init is not null || request.Batches is not null))
            throw FisherKernelsException.Argument($"fit: --ekfac cannot be combined with {(init is not null ? "--init" : "a cluster shard")}: E belongs to the eigenbases of the factors it was computed with, and merging changes them (SPEC §3); fit --ekfac over all the data in one run");
        string checkpoint = request.CheckpointPath;
        KfacAccumulator accumulator = File.Exists(checkpoint)
            ? KfacAccumulator.Resume(checkpoint, context.Backend, shapes, request.Options, modelSha, fingerprint, range.First)
            : new KfacAccumulator(context.Backend, shapes, request.Options, modelSha, range.First);
        if (accumulator.BatchesDone > batches)
            throw FisherKernelsException.Argument($"fit: checkpoint '{checkpoint}' has {accumulator.BatchesDone} batches, the fit only {batches}; delete it");

        var parameters = LayerDiscovery.DefaultParameters(layers);
        var lastSave = Stopwatch.StartNew();
        int steps = request.Ekfac ? 2 * batches : batches; // EK-FAC's second pass reports as steps after the first's
        progress?.Report(new JobProgress(accumulator.BatchesDone, steps));
        for (int done = accumulator.BatchesDone; done < batches; done++)
        {
            if (cancel.IsCancellationRequested)
            {
                accumulator.SaveCheckpoint(checkpoint, fingerprint);
                return new FitResult(null, accumulator.BatchesDone, batches, checkpoint);
            }
            var rows = source.Read(range.First + done);
            FitBatch(lm, context, accumulator, layers, parameters, rows.Tokens, rows.Targets, assigned: rows.Assigned);
            progress?.Report(new JobProgress(done + 1, steps));
            if (lastSave.Elapsed >= request.CheckpointInterval && done + 1 < batches)
            {
                accumulator.SaveCheckpoint(checkpoint, fingerprint);
                lastSave.Restart();
            }
        }
        // EK-FAC: the finished first pass is checkpointed, so a second pass cancelled or killed resumes at its start.
        if (request.Ekfac) accumulator.SaveCheckpoint(checkpoint, fingerprint);
        KfacCurvature curvature = accumulator.ToCurvature(CreatedBy).WithLayerSelection(request.Selection.IsAll ? null : request.Selection.ToMetadata());
        if (init is not null) curvature = KfacCurvature.MergeAll([init, curvature], [request.InitDecay, 1.0], CreatedBy);
        if (request.Ekfac)
        {
            var second = new EkfacAccumulator(context.Backend, curvature, request.Options, range.First);
            for (int done = 0; done < batches; done++)
            {
                if (cancel.IsCancellationRequested) return new FitResult(null, batches, batches, checkpoint);
                var rows = source.Read(range.First + done);
                FitBatch(lm, context, second, layers, parameters, rows.Tokens, rows.Targets, assigned: rows.Assigned);
                progress?.Report(new JobProgress(batches + done + 1, steps));
            }
            curvature = second.ToCurvature();
        }
        curvature.Save(request.OutPath);
        File.Delete(checkpoint);
        return new FitResult(curvature, batches, batches, checkpoint);
    }

    /// <summary>
    /// C0 of <c>--init</c> (null without it), checked against the model (<paramref name="modelSha"/>, the fitted layers'
    /// <paramref name="shapes"/>) and this fit's Fisher type, with <c>--decay</c> checked too.
    /// </summary>
    public static KfacCurvature? LoadInit(FitRequest request, string modelSha, IReadOnlyCollection<LayerShape> shapes)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.InitPath is not { } initPath)
        {
            if (request.InitDecay != 1.0) throw FisherKernelsException.Argument("fit: --decay scales the curvature of --init; give --init C0");
            return null;
        }
        if (request.Options.Ema is not null)
            throw FisherKernelsException.Argument("fit: --init continues from a merged curvature; with --ema the order of batches matters, so the two cannot be combined");
        if (!double.IsFinite(request.InitDecay) || request.InitDecay < 0) throw FisherKernelsException.Argument($"--decay must be a finite number ≥ 0, got {request.InitDecay}");
        KfacCurvature init = KfacCurvature.LoadFor(initPath, modelSha, shapes);
        if (init.Fisher != request.Options.Fisher.Name())
            throw FisherKernelsException.Argument($"fit: --init '{initPath}' is a {init.Fisher} Fisher, this fit is {request.Options.Fisher.Name()}");
        return init;
    }

    /// <summary>The layers <paramref name="selection"/> keeps (SPEC §2), the output layer found only when it is asked for.</summary>
    public static IReadOnlyList<Layer> Select(LanguageModel lm, LayerSelection selection) => KfacScoring.SelectedLayers(lm, selection);

    /// <summary>
    /// One batch: the forward pass, the layer inputs, then one backward pass per label draw (SPEC §3 Fisher types), each
    /// computing only the layer outputs' gradients (no weight gradient: the factors need the taps alone).
    /// </summary>
    public static void FitBatch(LanguageModel lm, OpContext context, IFisherPass accumulator, IReadOnlyList<Layer> layers,
                                IReadOnlyList<string> parameters, NdArray<long> tokens, NdArray<long> targets, StageTimes? times = null,
                                byte[]? assigned = null)
    {
        times?.Start();
        var pass = ReversePass.Prepare(lm, context, tokens, parameters, layerOutputsOnly: true);
        var logits = pass.Logits;
        times?.Lap("forward");
        int positions = tokens.Shape[0] * tokens.Shape[1], vocab = logits.Shape[2];
        accumulator.BeginBatch(positions, assigned);
        accumulator.AddInputs(layers.Select(l => (l.Id, Rows(pass.Plan.ApplicationsOf(l), a => pass.Value(a.InputValue)))).ToList());
        times?.Lap("A factors");

        NdArray<float> seed = pass.Seed(lm.LogitsOutput);
        void Backpropagate(double weight)
        {
            times?.Lap("labels");
            pass.Run();
            times?.Lap("backward");
            accumulator.AddOutputGradients(layers.Select(l => (l.Id, Rows(pass.Plan.ApplicationsOf(l), a => pass.Gradient(a.OutputValue)))).ToList(), weight);
            times?.Lap("G factors");
        }

        switch (accumulator.Options.Fisher)
        {
            case FisherType.Empirical:
                pass.Clear();
                Derivatives.LossCotangent(logits, targets, seed);
                Backpropagate(1);
                break;
            case FisherType.Sampled:
                var labels = new NdArray<long>((int[])targets.Shape.Clone());
                int draws = accumulator.Options.Samples;
                for (int d = 0; d < draws; d++)
                {
                    accumulator.SampleLabels(logits.Data, positions, vocab, targets.Data, d, labels.Data);
                    pass.Clear();
                    Derivatives.LossCotangent(logits, labels, seed);
                    Backpropagate(1.0 / draws);
                }
                break;
            case FisherType.Exact: // Σ_y p(y) g_y g_yᵀ per targeted position t, separately (no cross terms), as √p(y)·(p − e_y) cotangents
                var p = new float[vocab];
                for (int t = 0; t < positions; t++)
                {
                    if (targets.Data[t] == Targets.Ignore) continue;
                    Derivatives.Softmax(logits.Data.AsSpan(t * vocab, vocab), p);
                    for (int y = 0; y < vocab; y++)
                    {
                        pass.Clear();
                        Span<float> row = seed.Data.AsSpan(t * vocab, vocab);
                        float root = MathF.Sqrt(p[y]);
                        for (int v = 0; v < vocab; v++) row[v] = root * p[v];
                        row[y] -= root;
                        Backpropagate(1);
                    }
                }
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(accumulator), accumulator.Options.Fisher, "not a Fisher type");
        }
        accumulator.EndBatch();
        times?.Lap("end");
    }

    /// <summary>The rows of a value at every application of a layer in the plan (a Loop body's, once per iteration), one after the other.</summary>
    static float[] Rows(IReadOnlyList<LayerApplication> applications, Func<LayerApplication, float[]> value)
    {
        if (applications.Count == 1) return value(applications[0]);
        return applications.SelectMany(value).ToArray();
    }

    /// <summary>The one line a finished fit prints.</summary>
    public static string Summary(string outPath, KfacCurvature curvature) => string.Create(CultureInfo.InvariantCulture,
        $"wrote {outPath}: {curvature.Fisher} Fisher of {curvature.Layers.Count} layers over {curvature.Positions:R} positions");

    /// <summary>
    /// The batches a fit reads: rows of token and target files, read a batch at a time (a fit holds one batch of them,
    /// whatever their length), or batches given in memory. The fingerprint ties a checkpoint to them.
    /// </summary>
    sealed class BatchSource : IDisposable
    {
        readonly Func<int, FitRows> read;
        readonly Func<int, string> tokensName, targetsName;
        readonly IDisposable? files;

        BatchSource(int count, int largestBatch, int longestRow, bool targetsGiven, string fingerprint, Func<int, FitRows> read,
                    Func<int, string> tokensName, Func<int, string> targetsName, IDisposable? files = null)
        {
            (Count, LargestBatch, LongestRow, TargetsGiven, Fingerprint) = (count, largestBatch, longestRow, targetsGiven, fingerprint);
            (this.read, this.tokensName, this.targetsName, this.files) = (read, tokensName, targetsName, files);
        }

        public int Count { get; }
        public int LargestBatch { get; }
        public int LongestRow { get; }
        /// <summary>Whether the targets were given (they are then checked against the vocabulary), not the next tokens.</summary>
        public bool TargetsGiven { get; }
        public string Fingerprint { get; }

        public FitRows Read(int batch) => read(batch);
        public string TokensName(int batch) => tokensName(batch);
        public string TargetsName(int batch) => targetsName(batch);

        /// <summary>The first row of the first batch [1, seq]: a forward pass of it tells the vocabulary.</summary>
        public NdArray<long> FirstRow()
        {
            var tokens = Read(0).Tokens;
            return new NdArray<long>([1, tokens.Shape[1]], tokens.Data[..tokens.Shape[1]]);
        }

        public static BatchSource Files(string tokensPath, string? targetsPath, int batchSize)
        {
            NpyRows tokenRows = NpyFile.OpenRows(tokensPath);
            NpyRows? targetRows = null;
            try
            {
                if (tokenRows.Shape.Length != 2 || tokenRows.Shape[0] < 1 || tokenRows.Shape[1] < 1)
                    throw FisherKernelsException.Argument($"{tokensPath}: token ids must have shape [batch, seq] with both at least 1, got [{ShapeUtil.Format(tokenRows.Shape)}]");
                targetRows = targetsPath is null ? null : NpyFile.OpenRows(targetsPath);
                if (targetRows is not null && !targetRows.Shape.AsSpan().SequenceEqual(tokenRows.Shape))
                    throw FisherKernelsException.Argument($"{targetsPath}: targets have shape [{ShapeUtil.Format(targetRows.Shape)}], the tokens [{ShapeUtil.Format(tokenRows.Shape)}]");
            }
            catch
            {
                tokenRows.Dispose();
                targetRows?.Dispose();
                throw;
            }
            int sequences = tokenRows.Shape[0];
            string Rows(int batch) => $"rows {batch * batchSize}..{Math.Min(sequences, (batch + 1) * batchSize) - 1}";
            FitRows Read(int batch)
            {
                int first = batch * batchSize, count = Math.Min(batchSize, sequences - first);
                NdArray<long> tokens = tokenRows.ReadInt64(first, count);
                return new FitRows(tokens, targetRows is null ? Targets.NextToken(tokens) : targetRows.ReadInt64(first, count), null, Rows(batch));
            }
            string fingerprint = $"tokens {KfacScoring.Sha256(tokensPath)}, targets {(targetsPath is null ? "next-token" : KfacScoring.Sha256(targetsPath))}, batch-size {batchSize}";
            return new BatchSource((sequences + batchSize - 1) / batchSize, Math.Min(batchSize, sequences), tokenRows.Shape[1], targetRows is not null, fingerprint, Read,
                                   b => $"{tokensPath} ({Rows(b)})", b => $"{targetsPath} ({Rows(b)})", new OpenFiles(tokenRows, targetRows));
        }

        public static BatchSource InMemory(IReadOnlyList<FitRows> batches, int batchSize)
        {
            if (batches.Count == 0) throw FisherKernelsException.Argument("fit: no batches");
            foreach (var b in batches)
                if (b.Tokens.Rank != 2 || !b.Tokens.Shape.AsSpan().SequenceEqual(b.Targets.Shape) || b.Assigned is { } a && a.Length != b.Tokens.Length)
                    throw FisherKernelsException.Argument($"fit: {b.Name}: tokens [{ShapeUtil.Format(b.Tokens.Shape)}], targets [{ShapeUtil.Format(b.Targets.Shape)}] and assigned positions do not match");
            // The checkpoint's fingerprint: every batch's ids, targets and assigned positions, and how they were cut.
            using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            foreach (var b in batches)
            {
                sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes<int>(b.Tokens.Shape));
                sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes<long>(b.Tokens.Data));
                sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes<long>(b.Targets.Data));
                sha.AppendData(b.Assigned ?? [2]);
            }
            string fingerprint = $"batches {Convert.ToHexStringLower(sha.GetHashAndReset())}, batch-size {batchSize}";
            return new BatchSource(batches.Count, batches.Max(b => b.Tokens.Shape[0]), batches.Max(b => b.Tokens.Shape[1]), true, fingerprint, b => batches[b],
                                   b => batches[b].Name, b => batches[b].Name);
        }

        public void Dispose() => files?.Dispose();

        sealed class OpenFiles(NpyRows tokens, NpyRows? targets) : IDisposable
        {
            public void Dispose()
            {
                tokens.Dispose();
                targets?.Dispose();
            }
        }
    }
}

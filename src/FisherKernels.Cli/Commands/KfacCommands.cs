using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Cli.Bench;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;
using Spectre.Console;

namespace FisherKernels.Cli.Commands;

/// <summary>The K-FAC verbs (SPEC §3, §6): fit, merge, calibrate, and the K-FAC epistemic score used by <c>score</c>.</summary>
internal static class KfacCommands
{
    static string CreatedBy => $"fisherkernels {typeof(KfacCommands).Assembly.GetName().Version?.ToString(3)}";

    /// <summary>
    /// `fit --model M --tokens T.npy [--targets Y.npy] [--fisher sampled|empirical|exact] [--samples K] [--seed S]
    /// [--ema λ] [--sample-positions p] [--batch-size N] --out C.safetensors`. Batches of N sequences are streamed; the
    /// state is checkpointed to <c>C.safetensors.checkpoint</c> (after every batch at most every 10 s, and on Ctrl-C), and a
    /// rerun with the same arguments resumes from it. The checkpoint is removed when the curvature is written.
    /// </summary>
    public static int Fit(string[] args, TextWriter stdout) => Fit(args, stdout, stopAfterBatch: null);

    /// <summary><see cref="Fit(string[], TextWriter)"/>, stopping as Ctrl-C does once <paramref name="stopAfterBatch"/> says so (tests of resume).</summary>
    internal static int Fit(string[] args, TextWriter stdout, Func<int, bool>? stopAfterBatch)
    {
        var options = CommandOptions.Parse("fit", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--fisher", "--samples", "--seed", "--ema", "--sample-positions", "--batch-size", "--out", "--backend", "--threads"], []);
        string outPath = options.Required("--out");
        string modelPath = options.Required("--model");
        var lm = LanguageModel.Load(modelPath);
        string tokensPath = options.Required("--tokens");
        // Token and target files are read a batch at a time: a fit holds one batch of them, whatever their length.
        using NpyRows tokenRows = NpyFile.OpenRows(tokensPath);
        if (tokenRows.Shape.Length != 2 || tokenRows.Shape[0] < 1 || tokenRows.Shape[1] < 1)
            throw FisherKernelsException.Argument($"{tokensPath}: token ids must have shape [batch, seq] with both at least 1, got [{ShapeUtil.Format(tokenRows.Shape)}]");
        string? targetsPath = options.Optional("--targets");
        using NpyRows? targetRows = targetsPath is null ? null : NpyFile.OpenRows(targetsPath);
        if (targetRows is not null && !targetRows.Shape.AsSpan().SequenceEqual(tokenRows.Shape))
            throw FisherKernelsException.Argument($"{targetsPath}: targets have shape [{ShapeUtil.Format(targetRows.Shape)}], the tokens [{ShapeUtil.Format(tokenRows.Shape)}]");
        var fitOptions = new KfacFitOptions
        {
            Fisher = options.Optional("--fisher") ?? "sampled",
            Samples = options.Int("--samples", 1, 1),
            Seed = options.Int("--seed", 0, 0),
            Ema = options.Optional("--ema") is { } ema ? Number(ema, "--ema") : null,
            SamplePositions = options.Optional("--sample-positions") is { } p ? Number(p, "--sample-positions") : 1.0,
        };
        fitOptions.Validate();
        int batchSize = options.Int("--batch-size", 8, 1);
        IReadOnlyList<Layer> layers = lm.Model.Layers;
        if (layers.Count == 0) throw FisherKernelsException.Argument($"fit: model '{modelPath}' has no layers (MatMul/Gemm with an initializer weight, SPEC §2)");
        LayerShape[] shapes = KfacScoring.Shapes(layers);
        var context = ModelCommands.Context(options);

        int sequences = tokenRows.Shape[0];
        int batches = (sequences + batchSize - 1) / batchSize;
        (NdArray<long> Tokens, NdArray<long> Targets) ReadBatch(int batch)
        {
            int first = batch * batchSize, count = Math.Min(batchSize, sequences - first);
            NdArray<long> batchTokens = tokenRows.ReadInt64(first, count);
            return (batchTokens, targetRows is null ? Targets.NextToken(batchTokens) : targetRows.ReadInt64(first, count));
        }
        // Every id is checked before any work, so a bad one anywhere in the files stops the fit at once.
        int vocabulary = targetRows is null ? 0 : VocabularyOf(lm, context, tokenRows.ReadInt64(0, 1));
        for (int batch = 0; batch < batches; batch++)
        {
            var (batchTokens, batchTargets) = ReadBatch(batch);
            string rows = $"rows {batch * batchSize}..{batch * batchSize + batchTokens.Shape[0] - 1}";
            lm.Inputs(batchTokens, null, $"{tokensPath} ({rows})");
            if (targetRows is not null) Targets.Check(batchTargets, batchTokens.Shape, vocabulary, $"{targetsPath} ({rows})");
        }
        string modelSha = KfacScoring.Sha256(modelPath);
        string fingerprint = $"tokens {KfacScoring.Sha256(tokensPath)}, targets {(targetsPath is null ? "next-token" : KfacScoring.Sha256(targetsPath))}, batch-size {batchSize}";
        string checkpoint = outPath + ".checkpoint";
        KfacAccumulator accumulator = File.Exists(checkpoint)
            ? KfacAccumulator.Resume(checkpoint, context.Backend, shapes, fitOptions, modelSha, fingerprint)
            : new KfacAccumulator(context.Backend, shapes, fitOptions, modelSha);
        if (accumulator.BatchesDone > batches)
            throw FisherKernelsException.Argument($"fit: checkpoint '{checkpoint}' has {accumulator.BatchesDone} batches, the token file only {batches}; delete it");

        var parameters = LayerDiscovery.DefaultParameters(layers);
        var lastSave = System.Diagnostics.Stopwatch.StartNew();
        bool stop = false;
        bool completed = WithProgress($"fit {Path.GetFileName(modelPath)}", batches, accumulator.BatchesDone, () => stop, batch =>
        {
            var (batchTokens, batchTargets) = ReadBatch(batch);
            FitBatch(lm, context, accumulator, layers, parameters, batchTokens, batchTargets);
            stop = stopAfterBatch?.Invoke(batch) == true;
            if (lastSave.Elapsed.TotalSeconds >= 10 && batch + 1 < batches)
            {
                accumulator.SaveCheckpoint(checkpoint, fingerprint);
                lastSave.Restart();
            }
        });
        if (!completed)
        {
            accumulator.SaveCheckpoint(checkpoint, fingerprint);
            Console.Error.WriteLine($"fisherkernels: fit interrupted after {accumulator.BatchesDone} of {batches} batches; state saved to '{checkpoint}', rerun the same command to resume");
            return 130;
        }
        KfacCurvature curvature = accumulator.ToCurvature(CreatedBy);
        curvature.Save(outPath);
        File.Delete(checkpoint);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {outPath}: {curvature.Fisher} Fisher of {curvature.Layers.Count} layers over {curvature.Positions:R} positions"));
        return 0;
    }

    /// <summary>
    /// One batch: the forward pass, the layer inputs, then one backward pass per label draw (SPEC §3 Fisher types), each
    /// computing only the layer outputs' gradients (no weight gradient: the factors need the taps alone).
    /// </summary>
    internal static void FitBatch(LanguageModel lm, OpContext context, KfacAccumulator accumulator, IReadOnlyList<Layer> layers,
                         IReadOnlyList<string> parameters, NdArray<long> tokens, NdArray<long> targets, StageTimes? times = null)
    {
        times?.Start();
        var (plan, backward, logits) = Derivatives.Prepare(lm, context, tokens, parameters, layerOutputsOnly: true);
        times?.Lap("forward");
        int positions = tokens.Shape[0] * tokens.Shape[1], vocab = logits.Shape[2];
        accumulator.BeginBatch(positions);
        accumulator.AddInputs(layers.Select(l => (l.Id, Rows(l, a => (NdArray<float>)plan.Get(a.InputValue)))).ToList());
        times?.Lap("A factors");

        NdArray<float> seed = backward.Gradient(lm.LogitsOutput);
        void Backpropagate(double weight)
        {
            times?.Lap("labels");
            backward.Run(context);
            times?.Lap("backward");
            accumulator.AddOutputGradients(layers.Select(l => (l.Id, Rows(l, a => backward.Gradient(a.OutputValue)))).ToList(), weight);
            times?.Lap("G factors");
        }

        switch (accumulator.Options.Fisher)
        {
            case "empirical":
                backward.Clear();
                Derivatives.LossCotangent(logits, targets, seed);
                Backpropagate(1);
                break;
            case "sampled":
                var labels = new NdArray<long>((int[])targets.Shape.Clone());
                int draws = accumulator.Options.Samples;
                for (int d = 0; d < draws; d++)
                {
                    accumulator.SampleLabels(logits.Data, positions, vocab, targets.Data, d, labels.Data);
                    backward.Clear();
                    Derivatives.LossCotangent(logits, labels, seed);
                    Backpropagate(1.0 / draws);
                }
                break;
            default: // exact: Σ_y p(y) g_y g_yᵀ per targeted position t, separately (no cross terms), as √p(y)·(p − e_y) cotangents
                var p = new float[vocab];
                for (int t = 0; t < positions; t++)
                {
                    if (targets.Data[t] == Targets.Ignore) continue;
                    Derivatives.Softmax(logits.Data.AsSpan(t * vocab, vocab), p);
                    for (int y = 0; y < vocab; y++)
                    {
                        backward.Clear();
                        Span<float> row = seed.Data.AsSpan(t * vocab, vocab);
                        float root = MathF.Sqrt(p[y]);
                        for (int v = 0; v < vocab; v++) row[v] = root * p[v];
                        row[y] -= root;
                        Backpropagate(1);
                    }
                }
                break;
        }
        accumulator.EndBatch();
        times?.Lap("end");
    }

    /// <summary>The rows of a value at every application of a layer, applications one after the other.</summary>
    static float[] Rows(Layer layer, Func<LayerApplication, NdArray<float>> value)
    {
        if (layer.Applications.Count == 1) return value(layer.Applications[0]).Data;
        return layer.Applications.SelectMany(a => value(a).Data).ToArray();
    }

    /// <summary>`merge C1.safetensors C2.safetensors ... --out C.safetensors`: adds the information of the curvatures (SPEC §3).</summary>
    public static int Merge(string[] args, TextWriter stdout)
    {
        var inputs = new List<string>();
        string? outPath = null;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--verbose") continue;
            if (args[i] == "--out")
            {
                if (outPath is not null) throw FisherKernelsException.Argument("merge: option --out is given twice");
                if (i + 1 >= args.Length) throw FisherKernelsException.Argument("merge: option --out needs a value");
                outPath = args[++i];
            }
            else if (args[i].StartsWith("--", StringComparison.Ordinal)) throw FisherKernelsException.Argument($"merge: unknown option '{args[i]}' (expected --out)");
            else inputs.Add(args[i]);
        }
        if (outPath is null) throw FisherKernelsException.Argument("merge: option --out is required");
        if (inputs.Count < 2) throw FisherKernelsException.Argument($"merge: needs at least two curvature files, got {inputs.Count}");
        KfacCurvature merged = KfacCurvature.Load(inputs[0]);
        foreach (string path in inputs.Skip(1)) merged = merged.Merge(KfacCurvature.Load(path), CreatedBy);
        merged.Save(outPath);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {outPath}: {inputs.Count} curvatures, {merged.Positions:R} positions"));
        return 0;
    }

    /// <summary>
    /// `calibrate --model M --tokens T.npy [--targets Y.npy] --curvature C.safetensors [--prior-precision τ] [--out C2]`:
    /// scores the model's top-1 prediction at each targeted position with K-FAC, fits β of <c>1/(1+β·u)</c>
    /// (u = <see cref="Calibration.RelativeUncertainty"/>) on whether the prediction was the target,
    /// prints AUROC, ECE and NLL, and stores β in the curvature (<c>--out</c>, else the curvature file itself).
    /// </summary>
    public static int Calibrate(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("calibrate", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--curvature", "--prior-precision", "--rank", "--memory-budget", "--out", "--backend", "--threads"], []);
        string curvaturePath = options.Required("--curvature");
        string outPath = options.Optional("--out") ?? curvaturePath;
        var lm = LanguageModel.Load(options.Required("--model"));
        string tokensPath = options.Required("--tokens");
        var tokens = NpyFile.ReadInt64(tokensPath);
        lm.Inputs(tokens, null, tokensPath);
        var context = ModelCommands.Context(options);
        double prior = options.Optional("--prior-precision") is { } tau ? Number(tau, "--prior-precision") : 1.0;
        var (curvature, posterior) = KfacScoring.LoadPosterior(lm, curvaturePath, PosteriorOptionsOf(options, prior), context.Backend, Console.Error);
        string? targetsPath = options.Optional("--targets");
        var logits = lm.Forward(context, tokens, null, tokensPath);
        int vocab = logits.Shape[2];
        var targets = targetsPath is null ? Targets.NextToken(tokens) : Targets.Check(NpyFile.Read(targetsPath), tokens.Shape, vocab, targetsPath);

        // Score what the model predicts (its top-1 token): the confidence must be computable without knowing the truth;
        // the true targets only say which predictions were right.
        int seq = tokens.Shape[1];
        var predicted = Targets.Predicted(logits, targets);
        var report = Onnx.Scoring.PositionScorer.Score(lm, context, tokens, predicted, LayerDiscovery.DefaultParameters(lm.Model.Layers), "kfac",
                                                       posterior.PriorPrecision, KfacScoring.Epistemic(lm, posterior));
        var p = new List<double>();
        var epistemic = new List<double>();
        var correct = new List<bool>();
        foreach (var sequence in report.Sequences)
            foreach (var token in sequence.Tokens)
            {
                p.Add(token.P);
                epistemic.Add(token.Epistemic);
                correct.Add(token.Target == targets.Data[sequence.Index * seq + token.Position]);
            }
        if (correct.Count == 0) throw FisherKernelsException.Argument($"calibrate: '{tokensPath}' has no targeted positions");
        CalibrationSummary summary = CalibrationSummary.Fit(p.ToArray(), epistemic.ToArray(), correct.ToArray());
        foreach (string line in summary.Lines("kfac")) stdout.WriteLine(line);
        curvature.WithCalibrationBeta(summary.Beta).Save(outPath);
        stdout.WriteLine($"wrote {outPath} with calibration_beta");
        return 0;
    }

    /// <summary>
    /// The posterior options of a verb that builds one: τ, <c>--rank</c> and <c>--memory-budget</c> (the largest dense eigenbasis
    /// a layer may hold; a layer above it gets the low-rank Woodbury form).
    /// </summary>
    internal static PosteriorOptions PosteriorOptionsOf(CommandOptions options, double priorPrecision)
    {
        var defaults = new PosteriorOptions();
        return new PosteriorOptions
        {
            PriorPrecision = priorPrecision,
            Rank = options.Int("--rank", defaults.Rank, 1),
            MemoryBudgetBytes = options.Bytes("--memory-budget", defaults.MemoryBudgetBytes, 1),
        };
    }

    /// <summary>The K-FAC posterior covers every layer's weight and bias (SPEC §2 default set); <c>--params</c> is for the isotropic method.</summary>
    public static string? RefuseParams(string? spec) => spec is null ? null
        : throw FisherKernelsException.Argument("score: --params applies to --method isotropic; K-FAC scores every layer's weight and bias");


    /// <summary>The logits' last dimension, from a forward pass over one sequence.</summary>
    static int VocabularyOf(LanguageModel lm, OpContext context, NdArray<long> sequence) => lm.Forward(context, sequence).Shape[2];

    static double Number(string text, string option) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) ? v
        : throw FisherKernelsException.Argument($"{option} must be a number, got '{text}'");

    /// <summary>
    /// Runs <paramref name="step"/> for items <paramref name="start"/>..<paramref name="total"/>-1 with a progress bar on a terminal
    /// and plain progress lines on stderr otherwise. Ctrl-C (or <paramref name="stopRequested"/>) stops after the current item: returns false.
    /// </summary>
    static bool WithProgress(string description, int total, int start, Func<bool> stopRequested, Action<int> step)
    {
        bool interrupted = false;
        bool cancelled() => interrupted || stopRequested();
        int next = start;
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; interrupted = true; };
        Console.CancelKeyPress += onCancel;
        try
        {
            if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
            {
                AnsiConsole.Progress().AutoClear(false).Start(ctx =>
                {
                    var task = ctx.AddTask(description, maxValue: total);
                    task.Value = start;
                    for (; next < total && !cancelled(); next++)
                    {
                        step(next);
                        task.Increment(1);
                    }
                });
            }
            else
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                for (; next < total && !cancelled(); next++)
                {
                    step(next);
                    if (clock.Elapsed.TotalSeconds >= 2 || next + 1 == total)
                    {
                        Console.Error.WriteLine($"{description}: batch {next + 1}/{total}");
                        clock.Restart();
                    }
                }
            }
            return next == total;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }
}

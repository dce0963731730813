using System.Globalization;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Commands;

/// <summary>The K-FAC verbs (SPEC §3, §6): fit, merge, calibrate. They parse, call the service and print.</summary>
internal static class KfacCommands
{
    /// <summary>
    /// `fit --model M --tokens T.npy [--targets Y.npy] [--fisher sampled|empirical|exact] [--samples K] [--seed S]
    /// [--ema λ] [--sample-positions p] [--batch-size N] --out C.safetensors`: <see cref="FitService"/>, with a progress bar;
    /// Ctrl-C stops after the current batch with the state in the checkpoint, and rerunning the command resumes.
    /// </summary>
    public static int Fit(string[] args, TextWriter stdout) => Fit(args, stdout, stopAfterBatch: null);

    /// <summary><see cref="Fit(string[], TextWriter)"/>, stopping as Ctrl-C does once <paramref name="stopAfterBatch"/> says so (tests of resume).</summary>
    internal static int Fit(string[] args, TextWriter stdout, Func<int, bool>? stopAfterBatch)
    {
        var options = CommandOptions.Parse("fit", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--fisher", "--samples", "--seed", "--ema", "--sample-positions", "--batch-size", "--out", "--backend", "--threads", "--init", "--decay",
             "--memory-budget", "--rank", "--layers", "--exclude-layers", "--cluster", "--clustering", "--shards", .. TextArguments.ValueOptions],
            [.. TextArguments.FlagOptions, "--last-layer", "--ekfac"]);
        if (options.Optional("--text") is null) TextArguments.RefuseWithoutText("fit", options);
        string fisher = options.Optional("--fisher") ?? FisherType.Sampled.Name();
        var folder = TextArguments.Model(options);
        var request = new FitRequest
        {
            OutPath = options.Required("--out"),
            ModelPath = folder.ModelPath,
            TokensPath = options.Optional("--text") is null ? options.Required("--tokens") : "",
            TargetsPath = options.Optional("--targets"),
            Options = new KfacFitOptions
            {
                Fisher = FisherTypes.TryParse(fisher)
                    ?? throw FisherKernelsException.Argument($"--fisher '{fisher}' is not one of {string.Join(", ", KfacCurvature.FisherTypes)}"),
                Samples = options.Int("--samples", 1, 1),
                Seed = options.Int("--seed", 0, 0),
                Ema = options.Optional("--ema") is { } ema ? Number(ema, "--ema") : null,
                SamplePositions = options.Optional("--sample-positions") is { } p ? Number(p, "--sample-positions") : 1.0,
                MemoryBudgetBytes = options.Bytes("--memory-budget", FactorPlan.DefaultBudgetBytes, 1),
                Rank = options.Int("--rank", FactorPlan.DefaultRank, 1),
            },
            BatchSize = options.Int("--batch-size", 8, 1),
            Selection = ModelCommands.Selection(options),
            // The plan's lines are fit's first (SPEC §3), before any batch runs.
            OnPlan = plan => { foreach (string line in plan.Describe()) stdout.WriteLine(line); },
            InitPath = options.Optional("--init"),
            InitDecay = options.Optional("--decay") is { } decay ? Number(decay, "--decay") : 1.0,
            Ekfac = options.Has("--ekfac"),
        };
        request.Options.Validate();
        if (request.Ekfac && options.Optional("--cluster") is not null)
            throw FisherKernelsException.Argument("fit: --ekfac cannot run on a cluster: the shards' curvatures are merged, and E belongs to the eigenbases of the factors it was computed with (SPEC §3); fit --ekfac in one process");
        if (options.Optional("--cluster") is not null)
            return options.Optional("--text") is null ? ClusterCommands.Fit(request, options, stdout)
                : throw FisherKernelsException.Argument("fit --cluster: --text is not supported on a cluster; tokenize to an .npy file every silo reads");
        if (options.Optional("--clustering") is not null || options.Optional("--shards") is not null)
            throw FisherKernelsException.Argument("fit: --clustering and --shards need --cluster NAME");
        var service = new FitService(ModelCommands.Context(options, onDevice: true));
        if (options.Optional("--text") is not null)
        {
            // fit --text: every window of every sequence a row, batched by length (TextArguments.FitBatches).
            var text = TextArguments.Read("fit", options, folder, LanguageModel.Load(folder.ModelPath))!;
            request = request with { Rows = text.FitBatches(text.Targets("fit", folder, request.TargetsPath), request.BatchSize), TargetsPath = null };
        }
        FitResult result = ProgressDisplay.Run($"fit {Path.GetFileName(request.ModelPath)}", "batch",
            (progress, cancel) => service.Run(request, progress, cancel), stopAfterBatch);
        if (!result.Completed)
        {
            Console.Error.WriteLine($"fisherkernels: fit interrupted after {result.BatchesDone} of {result.Batches} batches; state saved to '{result.CheckpointPath}', rerun the same command to resume");
            return 130;
        }
        stdout.WriteLine(FitService.Summary(request.OutPath, result.Curvature!));
        return 0;
    }

    /// <summary>
    /// `merge C1.safetensors C2.safetensors ... [--decay λ1,λ2,…] --out C.safetensors`: adds the information of the curvatures
    /// (SPEC §3), file k's positions first scaled by λk (forgetting).
    /// </summary>
    public static int Merge(string[] args, TextWriter stdout)
    {
        var inputs = new List<string>();
        string? outPath = null, decayText = null;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--verbose") continue;
            if (args[i] is "--out" or "--decay")
            {
                string option = args[i];
                if ((option == "--out" ? outPath : decayText) is not null) throw FisherKernelsException.Argument($"merge: option {option} is given twice");
                if (i + 1 >= args.Length) throw FisherKernelsException.Argument($"merge: option {option} needs a value");
                if (option == "--out") outPath = args[++i]; else decayText = args[++i];
            }
            else if (args[i].StartsWith("--", StringComparison.Ordinal)) throw FisherKernelsException.Argument($"merge: unknown option '{args[i]}' (expected --out, --decay)");
            else inputs.Add(args[i]);
        }
        if (outPath is null) throw FisherKernelsException.Argument("merge: option --out is required");
        if (inputs.Count < 2) throw FisherKernelsException.Argument($"merge: needs at least two curvature files, got {inputs.Count}");
        double[]? decays = decayText?.Split(',').Select(t => Number(t.Trim(), "--decay")).ToArray();
        if (decays is not null && decays.Length != inputs.Count)
            throw FisherKernelsException.Argument($"merge: --decay has {decays.Length} values for {inputs.Count} curvature files (one per file, in order)");
        KfacCurvature[] curvatures = inputs.Select(KfacCurvature.Load).ToArray();
        KfacCurvature merged = KfacCurvature.MergeAll(curvatures, decays, FitService.CreatedBy);
        merged.Save(outPath);
        if (curvatures.Any(c => c.IsEkfac))
            stdout.WriteLine("note: EK-FAC's E was dropped (it belongs to the eigenbases of each file's factors, SPEC §3); the merged curvature is K-FAC: run fit --ekfac over all the data for E");
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {outPath}: {inputs.Count} curvatures, {merged.Positions:R} positions"));
        return 0;
    }

    /// <summary>
    /// `calibrate --model M --tokens T.npy [--targets Y.npy] --curvature C.safetensors [--prior-precision τ|auto|auto-layer] [--out C2]`:
    /// τ as given, by marginal likelihood (SPEC §4), or (not given) as stored in the curvature, else 1;
    /// scores the model's top-1 prediction at each targeted position with K-FAC, fits β of <c>1/(1+β·u)</c>
    /// (u = <see cref="Calibration.RelativeUncertainty"/>) on whether the prediction was the target,
    /// prints AUROC, ECE and NLL, and stores β in the curvature (<c>--out</c>, else the curvature file itself).
    /// </summary>
    public static int Calibrate(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("calibrate", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--curvature", "--prior-precision", "--rank", "--memory-budget", "--posterior-cache", "--out", "--backend", "--threads",
             "--layers", "--exclude-layers", .. TextArguments.ValueOptions],
            [.. TextArguments.FlagOptions, "--last-layer"]);
        string curvaturePath = options.Required("--curvature");
        string outPath = options.Optional("--out") ?? curvaturePath;
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        var text = TextArguments.Read("calibrate", options, folder, lm);
        var context = ModelCommands.Context(options);
        string? priorText = options.Optional("--prior-precision");
        var search = priorText switch { "auto" => PriorPrecisionSearch.Auto, "auto-layer" => PriorPrecisionSearch.AutoLayer, _ => PriorPrecisionSearch.None };
        double prior = priorText is null || search != PriorPrecisionSearch.None ? 1.0 : Number(priorText, "--prior-precision");
        string? targetsPath = options.Optional("--targets");
        IReadOnlyList<(NdArray, NdArray?, string, string)> batches;
        if (text is not null)
            batches = text.WindowRows(text.Targets("calibrate", folder, targetsPath)).Select(r => ((NdArray)r.Tokens, (NdArray?)r.Targets, r.Name, r.Name)).ToList();
        else
        {
            string tokensPath = options.Required("--tokens");
            var tokens = NpyFile.ReadInt64(tokensPath);
            lm.Inputs(tokens, null, tokensPath);
            batches = [(tokens, targetsPath is null ? null : NpyFile.Read(targetsPath), tokensPath, targetsPath ?? "")];
        }
        var posterior = PosteriorOptionsOf(options, prior) with { UseStoredPriorPrecision = priorText is null };
        CalibrateResult result = CalibrateService.Calibrate(lm, context, batches, curvaturePath, posterior, search, outPath, Console.Error, ModelCommands.Selection(options));
        if (result.Evidence is var (atOptimum, atOne, layers))
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prior precision ({priorText}, marginal likelihood over {layers} dense layers): {result.PriorPrecision.ToMetadata()}; log evidence {atOptimum:G8} (τ = 1: {atOne:G8})"));
        else stdout.WriteLine($"prior precision: {result.PriorPrecision.ToMetadata()}");
        foreach (string line in result.Summary.Lines(ScoreMethod.Kfac.Name())) stdout.WriteLine(line);
        stdout.WriteLine($"wrote {outPath} with calibration_beta and prior_precision");
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
            CachePath = options.Optional("--posterior-cache"),
        };
    }



    static double Number(string text, string option) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) ? v
        : throw FisherKernelsException.Argument($"{option} must be a number, got '{text}'");
}

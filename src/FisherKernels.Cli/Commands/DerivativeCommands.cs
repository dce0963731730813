using System.Globalization;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Text;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Commands;

/// <summary>The verbs that differentiate the model (SPEC §6): jvp, score. They parse, call the service and write.</summary>
internal static class DerivativeCommands
{
    /// <summary>`jvp --model M --tokens T.npy --direction V.safetensors --out J.npy`.</summary>
    public static int Jvp(string[] args)
    {
        var options = CommandOptions.Parse("jvp", args.AsSpan(1), ["--model", "--tokens", "--direction", "--out", "--backend", "--threads", .. TextArguments.ValueOptions], TextArguments.FlagOptions);
        string outPath = options.Required("--out");
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        if (TextArguments.Read("jvp", options, folder, lm) is { } text)
        {
            string direction = options.Required("--direction");
            var context = ModelCommands.Context(options, onDevice: true);
            // Like forward --text: one file per sequence, each position's J·V from the window of its most left context.
            text.WritePerSequence(outPath, i => ModelCommands.WindowedLogits(text, i, tokens => JvpService.Jvp(lm, context, tokens, direction)));
            return 0;
        }
        string tokensPath = options.Required("--tokens");
        var tokens = NpyFile.Read(tokensPath);
        lm.Inputs(tokens, null, tokensPath);
        var jvp = JvpService.Jvp(lm, ModelCommands.Context(options, onDevice: true), tokens, options.Required("--direction"));
        NpyFile.Write(outPath, jvp);
        return 0;
    }

    /// <summary>
    /// `natgrad --model M --tokens T.npy | --text F [--targets Y.npy] --curvature C [--prior-precision τ] [--rank r] [--memory-budget SIZE]
    /// --out D.safetensors`: <see cref="NatgradService"/>; τ not given: the curvature's stored one, else 1. With --text the gradient
    /// is summed over every window of every sequence, each targeted position once (SPEC §1).
    /// </summary>
    public static int Natgrad(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("natgrad", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--curvature", "--prior-precision", "--rank", "--memory-budget", "--posterior-cache", "--out", "--backend", "--threads",
             "--layers", "--exclude-layers", .. TextArguments.ValueOptions],
            [.. TextArguments.FlagOptions, "--last-layer"]);
        string outPath = options.Required("--out");
        string? priorText = options.Optional("--prior-precision");
        double prior = 1.0;
        if (priorText is not null && (!double.TryParse(priorText, NumberStyles.Float, CultureInfo.InvariantCulture, out prior) || !(prior > 0) || !double.IsFinite(prior)))
            throw FisherKernelsException.Argument($"natgrad: --prior-precision must be a positive number, got '{priorText}' (calibrate --prior-precision auto stores one in the curvature)");
        var posterior = KfacCommands.PosteriorOptionsOf(options, prior) with { UseStoredPriorPrecision = priorText is null };
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        string? targetsPath = options.Optional("--targets");
        List<(NdArray<long> Tokens, NdArray<long>? Targets)> parts;
        if (TextArguments.Read("natgrad", options, folder, lm) is { } text)
            parts = text.FitBatches(text.Targets("natgrad", folder, targetsPath), int.MaxValue).Select(b => (b.Tokens, (NdArray<long>?)b.Targets)).ToList();
        else
        {
            string tokensPath = options.Required("--tokens");
            var tokens = NpyFile.ReadInt64(tokensPath);
            lm.Inputs(tokens, null, tokensPath);
            NdArray<long>? targets = null;
            if (targetsPath is not null)
            {
                var logits = lm.Forward(ModelCommands.Context(options), new NdArray<long>([1, tokens.Shape[1]], tokens.Data[..tokens.Shape[1]]));
                targets = Targets.Check(NpyFile.Read(targetsPath), tokens.Shape, logits.Shape[2], targetsPath);
            }
            parts = [(tokens, targets)];
        }
        var direction = new NatgradService(lm, ModelCommands.Context(options), Console.Error).Direction(parts, options.Required("--curvature"), posterior, ModelCommands.Selection(options));
        DirectionFile.Write(outPath, direction, lm.Model.Graph.Source, "fisherkernels natgrad");
        stdout.WriteLine($"wrote {outPath}: natural gradient of {direction.Count} tensors");
        return 0;
    }

    /// <summary>
    /// `merge-models --model A --curvature CA --model B --curvature CB [...] [--form kfac|diag] [--weights w1,w2,…] [--epsilon ε]
    /// --out M.onnx`: <see cref="MergeModelsService"/>; the k-th --curvature belongs to the k-th --model.
    /// </summary>
    public static int MergeModels(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("merge-models", args.AsSpan(1), ["--model", "--curvature", "--form", "--weights", "--epsilon", "--out", "--backend", "--threads"], []);
        string outPath = options.Required("--out");
        IReadOnlyList<string> models = options.All("--model"), curvatures = options.All("--curvature");
        if (models.Count != curvatures.Count)
            throw FisherKernelsException.Argument($"merge-models: {models.Count} --model and {curvatures.Count} --curvature options; give each model its curvature, in order");
        var form = options.Optional("--form") switch
        {
            null or "kfac" => MergeForm.Kfac,
            "diag" => MergeForm.Diag,
            var other => throw FisherKernelsException.Argument($"merge-models: --form must be kfac or diag, got '{other}'"),
        };
        double[]? weights = options.Optional("--weights")?.Split(',').Select(t =>
            double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v
                : throw FisherKernelsException.Argument($"merge-models: --weights must be comma-separated numbers, got '{t}'")).ToArray();
        double? epsilon = options.Optional("--epsilon") is { } text
            ? double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double e) ? e : throw FisherKernelsException.Argument($"merge-models: --epsilon must be a positive number, got '{text}'")
            : null;
        var inputs = models.Select((m, k) => (LanguageModel.Load(ModelFolder.Resolve(m).ModelPath), curvatures[k])).ToList();
        var result = MergeModelsService.Merge(inputs, new MergeModelsOptions { Form = form, Weights = weights, Epsilon = epsilon }, outPath, ModelCommands.Context(options).Backend);
        foreach (MergedLayer layer in result.Layers)
            Console.Error.WriteLine(form == MergeForm.Kfac
                ? string.Create(CultureInfo.InvariantCulture, $"layer '{layer.Layer}': ε {layer.Epsilon:G3}, {layer.Iterations} CG iterations, relative residual {layer.RelativeResidual:G3}")
                : string.Create(CultureInfo.InvariantCulture, $"layer '{layer.Layer}': ε {layer.Epsilon:G3}"));
        stdout.WriteLine($"wrote {outPath}: {models.Count} models merged ({form.ToString().ToLowerInvariant()}), {result.Layers.Count} layers by Fisher, {result.Averaged} other initializers averaged");
        return 0;
    }

    /// <summary>`apply --model M --direction D.safetensors --step η --out M2.onnx`: <see cref="ApplyService"/>, θ + η·d as a new model.</summary>
    public static int Apply(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("apply", args.AsSpan(1), ["--model", "--direction", "--step", "--out"], []);
        string stepText = options.Required("--step");
        if (!double.TryParse(stepText, NumberStyles.Float, CultureInfo.InvariantCulture, out double step) || !double.IsFinite(step))
            throw FisherKernelsException.Argument($"apply: --step must be a finite number (a descent step is negative), got '{stepText}'");
        string outPath = options.Required("--out");
        var lm = LanguageModel.Load(TextArguments.Model(options).ModelPath);
        ApplyResult result = ApplyService.Apply(lm, options.Required("--direction"), step, outPath);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {outPath}: {result.Tensors} initializers moved by η = {step:R} (largest change {result.MaxChange:G4})"));
        return 0;
    }

    /// <summary>`ewc --model BASE --candidate TUNED --curvature C [--json]`: <see cref="EwcService"/>, per layer and in all.</summary>
    public static int Ewc(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("ewc", args.AsSpan(1), ["--model", "--candidate", "--curvature", "--backend", "--threads"], ["--json"]);
        var baseModel = LanguageModel.Load(options.Required("--model"));
        var candidate = LanguageModel.Load(options.Required("--candidate"));
        EwcPenalty penalty = EwcService.Penalty(baseModel, candidate, options.Required("--curvature"), ModelCommands.Context(options).Backend);
        if (options.Has("--json"))
        {
            stdout.WriteLine(System.Text.Json.JsonSerializer.Serialize(new { total = penalty.Total, layers = penalty.Layers }));
            return 0;
        }
        foreach (var (layer, value) in penalty.Layers) stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{layer}: {value:R}"));
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"total: {penalty.Total:R}"));
        return 0;
    }

    /// <summary>`score --model M --tokens T.npy [--targets Y.npy] [--method isotropic|kfac] [--params FILE|all] [--layers RE] [--exclude-layers RE] [--last-layer] [--samples K] [--seed S] [--level token|sequence|both] --out S.json|S.csv`.</summary>
    public static int Score(string[] args)
    {
        var options = CommandOptions.Parse("score", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--method", "--curvature", "--prior-precision", "--params", "--out", "--backend", "--threads", "--rank", "--memory-budget", "--posterior-cache", "--samples", "--seed", "--html", "--level",
             "--layers", "--exclude-layers", .. TextArguments.ValueOptions], [.. TextArguments.FlagOptions, "--last-layer"]);
        string outPath = options.Required("--out");
        if (Path.GetExtension(outPath).ToLowerInvariant() is not (".json" or ".csv"))
            throw FisherKernelsException.Argument($"score: --out '{outPath}' must end in .json or .csv");
        string methodName = options.Optional("--method") ?? (options.Optional("--curvature") is null ? ScoreMethod.Isotropic.Name() : ScoreMethod.Kfac.Name());
        ScoreMethod method = ScoreMethods.TryParse(methodName) ?? throw FisherKernelsException.Argument($"score: --method must be isotropic or kfac, got '{methodName}'");
        double prior = 1.0;
        if (options.Optional("--prior-precision") is "auto" or "auto-layer")
            throw FisherKernelsException.Argument("score: --prior-precision auto is chosen by calibrate (calibrate --prior-precision auto stores it in the curvature, and score uses a stored τ when --prior-precision is not given)");
        if (options.Optional("--prior-precision") is { } priorText &&
            (!double.TryParse(priorText, NumberStyles.Float, CultureInfo.InvariantCulture, out prior) || !(prior > 0) || !double.IsFinite(prior)))
            throw FisherKernelsException.Argument($"score: --prior-precision must be a positive number, got '{priorText}'");
        var scoreOptions = new ScoreOptions
        {
            Method = method,
            CurvaturePath = method == ScoreMethod.Kfac ? options.Required("--curvature") : null,
            Posterior = KfacCommands.PosteriorOptionsOf(options, prior) with { UseStoredPriorPrecision = options.Optional("--prior-precision") is null },
            Parameters = options.Optional("--params"),
            Selection = ModelCommands.Selection(options),
            Samples = options.Optional("--samples") is null ? null : options.Int("--samples", 1, 1),
            Seed = options.Int("--seed", 0, 0),
            Level = options.Optional("--level") switch
            {
                null or "both" => ScoreLevel.Both,
                "token" => ScoreLevel.Token,
                "sequence" => ScoreLevel.Sequence,
                var other => throw FisherKernelsException.Argument($"score: --level must be token, sequence or both, got '{other}'"),
            },
        };
        scoreOptions.Validate();
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        var text = TextArguments.Read("score", options, folder, lm);
        string? htmlPath = options.Optional("--html");
        if (htmlPath is not null && text is null) throw FisherKernelsException.Argument("score: --html shows text: it needs --text");
        string? targetsPath = options.Optional("--targets");
        var service = new ScoreService(lm, ModelCommands.Context(options, onDevice: true), Console.Error);
        if (text is null)
        {
            string tokensPath = options.Required("--tokens");
            var tokens = NpyFile.Read(tokensPath);
            lm.Inputs(tokens, null, tokensPath);
            NdArray? targets = targetsPath is null ? null : NpyFile.Read(targetsPath);
            service.Score(tokens, targets, scoreOptions).Write(outPath);
            return 0;
        }
        var textTargets = text.Targets("score", folder, targetsPath);
        var report = TextScoring.Score(service, text.Tokenizer, text.Sequences, textTargets, text.Windows, scoreOptions);
        report.Write(outPath);
        if (htmlPath is not null) text.WritePage(htmlPath, report, targetsPath is null, $"score: {Path.GetFileName(folder.Folder ?? folder.ModelPath)}");
        return 0;
    }
}

using System.Globalization;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Cli.Commands;

/// <summary>The verbs that differentiate the model (SPEC §6): jvp, score.</summary>
internal static class DerivativeCommands
{
    /// <summary>`jvp --model M --tokens T.npy --direction V.safetensors --out J.npy`.</summary>
    public static int Jvp(string[] args)
    {
        var options = CommandOptions.Parse("jvp", args.AsSpan(1), ["--model", "--tokens", "--direction", "--out", "--backend", "--threads"], []);
        string outPath = options.Required("--out");
        var lm = LanguageModel.Load(options.Required("--model"));
        string tokensPath = options.Required("--tokens");
        var tokens = NpyFile.Read(tokensPath);
        lm.Inputs(tokens, null, tokensPath);
        string directionPath = options.Required("--direction");
        var file = SafetensorsFile.Read(directionPath);
        if (file.Names.Count == 0) throw FisherKernelsException.Argument($"--direction '{directionPath}' holds no tensor");
        var direction = file.Names.ToDictionary(n => n, file.GetFloat32);
        var jvp = Derivatives.Jvp(lm, ModelCommands.Context(options), tokens, direction, $"--direction '{directionPath}'");
        NpyFile.Write(outPath, jvp);
        return 0;
    }

    /// <summary>`score --model M --tokens T.npy [--targets Y.npy] [--method isotropic|kfac] [--params FILE|all] [--samples K] [--seed S] --out S.json|S.csv`.</summary>
    public static int Score(string[] args)
    {
        var options = CommandOptions.Parse("score", args.AsSpan(1),
            ["--model", "--tokens", "--targets", "--method", "--curvature", "--prior-precision", "--params", "--out", "--backend", "--threads", "--rank", "--memory-budget", "--samples", "--seed"], []);
        string outPath = options.Required("--out");
        if (Path.GetExtension(outPath).ToLowerInvariant() is not (".json" or ".csv"))
            throw FisherKernelsException.Argument($"score: --out '{outPath}' must end in .json or .csv");
        string method = options.Optional("--method") ?? (options.Optional("--curvature") is null ? "isotropic" : "kfac");
        if (method is not ("isotropic" or "kfac"))
            throw FisherKernelsException.Argument($"score: --method must be isotropic or kfac, got '{method}'");
        double prior = 1.0;
        if (options.Optional("--prior-precision") is { } priorText &&
            (!double.TryParse(priorText, NumberStyles.Float, CultureInfo.InvariantCulture, out prior) || !(prior > 0) || !double.IsFinite(prior)))
            throw FisherKernelsException.Argument($"score: --prior-precision must be a positive number, got '{priorText}'");

        int? samples = options.Optional("--samples") is null ? null : options.Int("--samples", 1, 1);
        if (samples is not null && method != "kfac")
            throw FisherKernelsException.Argument($"score: --samples draws from the K-FAC posterior; it needs --method kfac, not {method}");
        int seed = options.Int("--seed", 0, 0);
        var lm = LanguageModel.Load(options.Required("--model"));
        string tokensPath = options.Required("--tokens");
        var tokens = NpyFile.Read(tokensPath);
        lm.Inputs(tokens, null, tokensPath);
        string? targetsPath = options.Optional("--targets");
        NdArray? targets = targetsPath is null ? null : NpyFile.Read(targetsPath);
        var context = ModelCommands.Context(options);
        var parameters = Parameters(lm, method == "kfac" ? KfacCommands.RefuseParams(options.Optional("--params")) : options.Optional("--params"));
        var posterior = method == "kfac"
            ? KfacScoring.LoadPosterior(lm, options.Required("--curvature"), KfacCommands.PosteriorOptionsOf(options, prior), context.Backend, Console.Error).Posterior
            : null;
        var epistemic = posterior is not null ? KfacScoring.Epistemic(lm, posterior) : EpistemicMetric.SquaredGradientNorm;
        var report = PositionScorer.Score(lm, context, tokens, targets, parameters, method, prior, epistemic);
        if (posterior is not null) report = LastLayerVariance.Add(report, lm, context, posterior, tokens, Console.Error);
        if (samples is { } k) report = KfacScoring.AddSampling(report, lm, context, posterior!, tokens, k, seed);
        report.Write(outPath);
        return 0;
    }

    /// <summary>SPEC §2: layer weights and biases by default, `all`, or the names in a file.</summary>
    public static IReadOnlyList<string> Parameters(LanguageModel lm, string? spec) => spec switch
    {
        null => LayerDiscovery.DefaultParameters(lm.Model.Layers) is { Count: > 0 } layers ? layers
            : throw FisherKernelsException.Argument($"model '{lm.Model.Graph.Source}' has no layers (MatMul/Gemm with an initializer weight); pass --params"),
        "all" => LayerDiscovery.AllParameters(lm.Model.Graph),
        _ => LayerDiscovery.ReadParameterFile(lm.Model.Graph, spec),
    };
}

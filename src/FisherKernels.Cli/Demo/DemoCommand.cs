using System.Diagnostics;
using FisherKernels.Cli.Commands;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Demo;

/// <summary>
/// `fisherkernels demo [--model-dir DIR] [--out-dir DIR]`: the main job on the embedded default model.
/// Fits K-FAC curvature on part of the training corpus (the `fit` verb), scores held-out English and
/// out-of-distribution text with the isotropic and K-FAC estimators (the `score` scorer), and prints and
/// plots how well each uncertainty tells the texts apart and predicts next-token errors; writes a page of scored lines
/// (`score --text --html`). Its texts are read through the text path (<see cref="DefaultModel.ReadText"/>).
/// </summary>
internal static class DemoCommand
{
    public const int HeldOutWindows = 32;
    public const int WindowsPerOodSet = 16;

    /// <summary>
    /// Positions scored per window: the last ones, each predicted from at least 128 − 1 − this many bytes of
    /// context. Scoring a position costs one backward pass per estimator, so this bounds the demo's time.
    /// </summary>
    public const int ScoredPositions = 32;

    public static int Run(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("demo", args.AsSpan(1), ["--model-dir", "--out-dir", "--backend", "--threads"], []);
        var clock = Stopwatch.StartNew();
        var model = DefaultModel.Load(options.Optional("--model-dir"));
        var sets = DemoTexts.Load(model, HeldOutWindows, WindowsPerOodSet);
        var fit = model.Windows(model.ReadText("fit.txt"));
        string outDir = options.Optional("--out-dir") ?? "demo-output";
        Directory.CreateDirectory(outDir);
        stdout.WriteLine($"default model: {model.ModelPath} (bytes as tokens, context {model.Context})");
        stdout.WriteLine($"fit text: {fit.Shape[0]} windows; scored texts: " +
                         string.Join(", ", sets.Select(s => $"{s.Name} {s.Count}")) + $" windows, last {ScoredPositions} positions of each");

        // 1. K-FAC curvature on the fit windows, through the fit verb (its progress bar, its file).
        string fitTokens = Path.Combine(outDir, "fit_tokens.npy");
        string curvaturePath = Path.Combine(outDir, "curvature.safetensors"), ekfacPath = Path.Combine(outDir, "curvature_ekfac.safetensors");
        NpyFile.Write(fitTokens, fit);
        // The verbs the demo runs get its --backend and --threads.
        string[] Verb(params string[] args) =>
            [.. args, .. new[] { "--backend", "--threads" }.SelectMany(name => options.Optional(name) is { } value ? new[] { name, value } : [])];
        // EK-FAC's second pass gives E (SPEC §3); the same factors without E are the K-FAC curvature, so the two differ only in E.
        int rc = KfacCommands.Fit(Verb("fit", "--model", model.ModelPath, "--tokens", fitTokens, "--out", ekfacPath, "--seed", "0", "--ekfac"), stdout);
        if (rc != 0) return rc;
        KfacCurvature ekfac = KfacCurvature.Load(ekfacPath);
        ekfac.WithLayers(ekfac.Layers.Select(b => b.WithoutCorrection())).Save(curvaturePath);

        var lm = LanguageModel.Load(model.ModelPath);
        var context = ModelCommands.Context(options);
        var service = new ScoreService(lm, context);
        // τ = 1 and τ* by marginal likelihood (SPEC §4 --prior-precision auto) for each curvature.
        double Auto(string path) => MarginalLikelihood.Optimize(CalibrateService.MarginalTerms(lm, KfacScoring.LoadCurvature(lm, path), context.Backend));
        ScoreOptions Laplace(string path, double tau) => new()
        {
            Method = ScoreMethod.Kfac, CurvaturePath = path, LastLayerVariance = false, Posterior = new PosteriorOptions { PriorPrecision = tau },
        };
        double kfacTau = Auto(curvaturePath), ekfacTau = Auto(ekfacPath);
        var estimators = new (string Name, double? Tau, ScoreOptions Options)[]
        {
            ("isotropic", null, new ScoreOptions { Method = ScoreMethod.Isotropic }),
            ("K-FAC", 1.0, Laplace(curvaturePath, 1.0)),
            ("K-FAC τ*", kfacTau, Laplace(curvaturePath, kfacTau)),
            ("EK-FAC", 1.0, Laplace(ekfacPath, 1.0)),
            ("EK-FAC τ*", ekfacTau, Laplace(ekfacPath, ekfacTau)),
        };
        var kfacOptions = estimators[1].Options;
        stdout.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"posteriors: {KfacScoring.LoadCurvature(lm, curvaturePath).Layers.Count} layers; prior precision 1 and by marginal likelihood τ* = {kfacTau:G4} (K-FAC), {ekfacTau:G4} (EK-FAC)"));
        // Each report is labelled by its estimator's name as the tables print it.
        ScoreReport Score(string name, ScoreOptions scoreOptions, NdArray<long> tokens, NdArray<long>? targets) =>
            service.Score(tokens, targets, scoreOptions) with { Method = name };

        // 2. Every text, next-byte targets on the last positions, with both estimators.
        var scores = new Dictionary<(string Set, string Estimator), ScoreReport>();
        foreach (var set in sets)
        {
            var targets = LastTargets(set.Tokens, Targets.NextToken(set.Tokens));
            foreach (var (name, _, scoreOptions) in estimators)
                scores[(set.Name, name)] = Timed(stdout, $"score {set.Name} ({name})", () => Score(name, scoreOptions, set.Tokens, targets));
        }

        // 3. Next-token errors on held-out text: the uncertainty of the token the model predicts (its argmax),
        //    which needs no knowledge of the true next byte; an error is argmax ≠ true next byte.
        var heldOut = sets[0].Tokens;
        var logits = lm.Forward(context, heldOut);
        var predicted = Targets.Predicted(logits);
        var trueNext = LastTargets(heldOut, Targets.NextToken(heldOut));
        var predictions = new Dictionary<string, ScoreReport>();
        foreach (var (name, _, scoreOptions) in estimators)
            predictions[name] = Timed(stdout, $"score held-out predictions ({name})", () => Score(name, scoreOptions, heldOut, LastTargets(heldOut, predicted)));

        // 4. One text that switches from held-out English to German halfway, every position scored.
        var (mixed, part) = DemoTexts.Mixed(sets[0].Tokens, sets.First(s => s.Name == "german").Tokens);
        var mixedScores = Timed(stdout, "score example text (K-FAC)", () => Score("K-FAC", kfacOptions, mixed, null));

        // 5. The page a person reads: a few lines of each kind of text scored with K-FAC by the score verb (--text, --html).
        string pageText = Path.Combine(outDir, "page.txt"), page = Path.Combine(outDir, "page.html");
        File.WriteAllLines(pageText, DemoTexts.PageLines(model));
        rc = Timed(stdout, "score page (K-FAC)", () => DerivativeCommands.Score(Verb("score", "--model", model.Folder, "--text", pageText, "--method", "kfac",
            "--curvature", curvaturePath, "--out", Path.Combine(outDir, "page.json"), "--html", page)));
        if (rc != 0) return rc;

        // Report.
        stdout.WriteLine();
        DemoReport.PrintTokenTable(stdout, "held-out example: the last scored positions of window 0", heldOut, estimators.Select(e => scores[(sets[0].Name, e.Name)]).ToArray());
        stdout.WriteLine();
        stdout.WriteLine($"(a) in-distribution ({sets[0].Count} held-out windows) vs out-of-distribution ({sets.Skip(1).Sum(s => s.Count)} windows: {string.Join(", ", sets.Skip(1).Select(s => s.Name))}), per sequence, higher = more out-of-distribution:");
        var detailed = estimators.Take(2).Select(e => e.Name).ToArray(); // isotropic and K-FAC (τ = 1) in full; every estimator in (c)
        foreach (string name in detailed)
            foreach (string line in DemoReport.SequenceAurocLines(sets, set => scores[(set, name)], name)) stdout.WriteLine(line);
        stdout.WriteLine();
        stdout.WriteLine($"(b) next-token errors on held-out text ({trueNext.Data.Count(t => t != Targets.Ignore)} predictions; β fitted on even windows, ECE on odd windows):");
        var reliability = new List<(string, ReliabilityBin[])>();
        bool first = true;
        var analyses = estimators.ToDictionary(e => e.Name, e => DemoReport.ErrorAnalysis(predictions[e.Name], trueNext));
        foreach (string name in detailed)
        {
            var errors = analyses[name];
            foreach (string line in errors.Lines(name)) stdout.WriteLine(line);
            if (first) reliability.Add(("model confidence (before)", errors.BinsBefore));
            reliability.Add(($"{name}: 1/(1+β·u) (after)", errors.BinsAfter));
            first = false;
        }

        stdout.WriteLine();
        stdout.WriteLine("(c) every estimator on the log-p scale: OOD AUROC as in (a); next-token errors as in (b), ECE and NLL of 1/(1+β·u) on odd windows,");
        stdout.WriteLine("    selective prediction by u (AURC lower is better; PRR as LM-Polygraph: 1 = oracle, 0 = chance, whole range and up to 50 % rejected):");
        foreach (string line in DemoReport.SummaryLines(estimators.Select(e =>
                     (e.Name, e.Tau, DemoReport.OutOfDistributionAurocs(sets, set => scores[(set, e.Name)]).Epistemic, analyses[e.Name])).ToArray()))
            stdout.WriteLine(line);

        string perTokenPlot = Path.Combine(outDir, "per_token_uncertainty.png");
        string reliabilityPlot = Path.Combine(outDir, "reliability.png");
        DemoPlots.PerToken(perTokenPlot, "per-token uncertainty (K-FAC) over a text that switches from held-out English to German",
            mixedScores, part, ["English (held-out)", "German"], $"K-FAC {DemoReport.LogPScore}");
        DemoPlots.Reliability(reliabilityPlot, "next-token predictions on held-out text (odd windows)", reliability);
        stdout.WriteLine();
        stdout.WriteLine($"plots: {perTokenPlot}");
        stdout.WriteLine($"       {reliabilityPlot}");
        stdout.WriteLine($"page: {page}");
        stdout.WriteLine($"curvature: {curvaturePath} (K-FAC), {ekfacPath} (EK-FAC)");
        stdout.WriteLine($"demo finished in {clock.Elapsed.TotalSeconds:F0} s");
        return 0;
    }

    /// <summary><paramref name="targets"/> kept on the last <see cref="ScoredPositions"/> targeted positions of each row, -100 elsewhere.</summary>
    public static NdArray<long> LastTargets(NdArray<long> tokens, NdArray<long> targets)
    {
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        var result = new NdArray<long>(batch, seq);
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < seq; t++)
                result.Data[b * seq + t] = t >= seq - 1 - ScoredPositions && t < seq - 1 ? targets.Data[b * seq + t] : Targets.Ignore;
        return result;
    }

    static T Timed<T>(TextWriter stdout, string what, Func<T> step)
    {
        var clock = Stopwatch.StartNew();
        T result = step();
        stdout.WriteLine($"{what}: {clock.Elapsed.TotalSeconds:F1} s");
        return result;
    }
}

using System.Globalization;
using System.Text.Json;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Generation;
using FisherKernels.Text;
using FisherKernels.Text.Html;
using FisherKernels.Text.Tokenization;
using FisherKernels.Uncertainty;

namespace FisherKernels.Cli.Commands;

/// <summary>
/// `generate --model DIR --prompt TEXT | --prompt-file F [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
/// [--curvature C [--posterior-samples K]] [--abstain U] [--out G.json] [--html G.html]` (SPEC §4, §6): parses, calls
/// <see cref="GenerateService"/>, prints the text (stdout) and the time per token (stderr), writes the JSON and the page.
/// </summary>
internal static class GenerateCommand
{
    public static int Run(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("generate", args.AsSpan(1),
            ["--model", "--prompt", "--prompt-file", "--max-new", "--temperature", "--top-k", "--top-p", "--seed", "--curvature", "--posterior-samples",
             "--prior-precision", "--rank", "--memory-budget", "--abstain", "--out", "--html", "--tokenizer", "--context", "--backend", "--threads"],
            ["--no-special-tokens"]);
        string? outPath = options.Optional("--out");
        if (outPath is not null && !outPath.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
            throw FisherKernelsException.Argument($"generate: --out '{outPath}' must end in .json");
        string? htmlPath = options.Optional("--html");
        string prompt = (options.Optional("--prompt"), options.Optional("--prompt-file")) switch
        {
            ({ } p, null) => p,
            (null, { } file) => TextInput.Read(file),
            (null, null) => throw FisherKernelsException.Argument("generate: give --prompt TEXT or --prompt-file F"),
            _ => throw FisherKernelsException.Argument("generate: give --prompt or --prompt-file, not both"),
        };
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        TextTokenizer tokenizer = options.Optional("--tokenizer") is { } tokenizerPath ? TokenizerLoader.Load(tokenizerPath)
            : folder.Tokenizer ?? throw FisherKernelsException.Argument(
                $"generate: needs a tokenizer: pass --model as a model folder with one ({string.Join(", ", TokenizerLoader.FolderFiles)}) or --tokenizer PATH");
        if (lm.EmbeddingRows is int rows && tokenizer.VocabularySize > rows)
            throw FisherKernelsException.Argument($"generate: the tokenizer ({tokenizer.Description}) has ids up to {tokenizer.VocabularySize - 1}, but model '{folder.ModelPath}' has an embedding table of {rows} rows");
        var encoded = tokenizer.Encode(prompt, !options.Has("--no-special-tokens"));
        double prior = options.Optional("--prior-precision") is { } tau ? Number(tau, "--prior-precision") : 1.0;
        var defaults = new Uncertainty.PosteriorOptions();
        var generateOptions = new GenerateOptions
        {
            MaxNew = options.Int("--max-new", 64, 1),
            Sampling = new SamplingOptions
            {
                Temperature = options.Optional("--temperature") is { } t ? Number(t, "--temperature") : 1.0,
                TopK = options.Optional("--top-k") is null ? null : options.Int("--top-k", 0, 1),
                TopP = options.Optional("--top-p") is { } topP ? Number(topP, "--top-p") : null,
                Seed = options.Int("--seed", 0, 0),
            },
            CurvaturePath = options.Optional("--curvature"),
            Posterior = new PosteriorOptions
            {
                PriorPrecision = prior,
                // As in score: without --prior-precision, the τ calibrate stored in the curvature, else 1.
                UseStoredPriorPrecision = options.Optional("--prior-precision") is null,
                Rank = options.Int("--rank", defaults.Rank, 1),
                MemoryBudgetBytes = options.Bytes("--memory-budget", defaults.MemoryBudgetBytes, 1),
            },
            PosteriorSamples = options.Optional("--posterior-samples") is null ? null : options.Int("--posterior-samples", 1, 1),
            Abstain = options.Optional("--abstain") is { } u ? Number(u, "--abstain") : null,
            EndOfSequence = folder.EosTokenId ?? EndOfSequence(tokenizer, folder),
            Context = options.Optional("--context") is null ? folder.Context ?? lm.PositionRows : options.Int("--context", 0, 1),
        };
        generateOptions.Validate();

        var service = new GenerateService(lm, ModelCommands.Context(options), Console.Error);
        var promptIds = encoded.Ids.Select(i => (long)i).ToList();
        var generation = service.Generate(promptIds, generateOptions);
        var ids = generation.Tokens.Select(t => (int)t.Token).ToList();
        if (generation.Abstained is { } stop) ids.Add((int)stop.Token);
        string[] texts = tokenizer.IncrementalText(ids, encoded.Ids);

        if (outPath is not null) AtomicFile.WriteAllBytes(outPath, Json(folder.ModelPath, prompt, generation, texts));
        if (htmlPath is not null)
        {
            var tokens = new List<PageToken> { new(prompt) };
            tokens.AddRange(generation.Tokens.Select((t, i) => new PageToken(texts[i], new PageScore(t.Position, t.Token, t.P, t.Aleatoric, t.Epistemic, t.PLow, t.PHigh))));
            var ps = generation.Tokens.Select(t => t.P).ToList();
            ScorePage.Write(htmlPath, $"generate: {Path.GetFileName(folder.Folder ?? folder.ModelPath)}", generateOptions.CurvaturePath is null ? "isotropic" : "kfac",
                [new PageSequence(0, tokens, ps.Count > 0 ? ps.Average() : null, null, ps.Count > 0 ? generation.Tokens.Average(t => t.Aleatoric) : null)]);
        }
        stdout.WriteLine(prompt + string.Concat(texts.Take(generation.Tokens.Count)));
        if (generation.Abstained is { } abstained)
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"stopped (uncertain) before token {abstained.Token} {JsonSerializer.Serialize(texts[^1])} at position {abstained.Position}: epistemic of log p {Generation.EpistemicOfLogP(abstained):G6} > --abstain {generateOptions.Abstain:G6}"));
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"generated {generation.Tokens.Count} tokens ({generation.StopReason}): {1000 * (generation.SampleSecondsPerToken + generation.ScoreSecondsPerToken):F1} ms a token ({1000 * generation.SampleSecondsPerToken:F1} ms forward and draw, {1000 * generation.ScoreSecondsPerToken:F1} ms epistemic)"));
        return 0;
    }

    /// <summary>The end-of-sequence token when config.json names none: tokenizer_config.json's eos_token, else a usual name.</summary>
    static long? EndOfSequence(TextTokenizer tokenizer, ModelFolder folder)
    {
        var config = TokenizerConfig.Read(folder.Folder is null ? null : Path.Combine(folder.Folder, "tokenizer_config.json"));
        foreach (string? name in new[] { config.EosToken, "<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>" })
            if (name is not null && tokenizer.TokenId(name) is int id) return id;
        return null;
    }

    static byte[] Json(string model, string prompt, Generation generation, string[] texts)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("model", Path.GetFileName(model));
            json.WriteString("prompt", prompt);
            json.WriteString("stop_reason", generation.StopReason);
            json.WriteNumber("ms_per_token", 1000 * (generation.SampleSecondsPerToken + generation.ScoreSecondsPerToken));
            json.WriteNumber("ms_per_token_epistemic", 1000 * generation.ScoreSecondsPerToken);
            json.WriteStartArray("tokens");
            for (int i = 0; i < generation.Tokens.Count; i++) WriteToken(json, generation.Tokens[i], texts[i]);
            json.WriteEndArray();
            // With stop_reason "uncertain": the token that stopped generation (drawn, not generated), and its score of log p.
            if (generation.Abstained is { } abstained)
            {
                json.WritePropertyName("abstained");
                WriteToken(json, abstained, texts[^1], Generation.EpistemicOfLogP(abstained));
            }
            json.WriteEndObject();
        }
        return stream.ToArray();
    }

    static void WriteToken(Utf8JsonWriter json, GeneratedToken t, string text, double? epistemicLogP = null)
    {
        json.WriteStartObject();
        json.WriteNumber("position", t.Position);
        json.WriteNumber("token", t.Token);
        json.WriteString("text", text);
        json.WriteNumber("p", t.P);
        json.WriteNumber("aleatoric", t.Aleatoric);
        json.WriteNumber("epistemic", t.Epistemic);
        if (t.PLow is { } low) json.WriteNumber("p_low", low);
        if (t.PHigh is { } high) json.WriteNumber("p_high", high);
        if (epistemicLogP is { } e) json.WriteNumber("epistemic_log_p", e);
        json.WriteEndObject();
    }

    static double Number(string text, string option) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) ? v
        : throw FisherKernelsException.Argument($"{option} must be a number, got '{text}'");
}

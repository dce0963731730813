using System.Text.Json;
using System.Text.Json.Nodes;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// What tokenizer_config.json says beside a tokenizer: whether BOS/EOS are added (SentencePiece), lowercasing (vocab.txt),
/// and the special tokens' names.
/// </summary>
public sealed record TokenizerConfig
{
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
    public bool? DoLowerCase { get; init; }
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public string? UnkToken { get; init; }
    public IReadOnlyList<string> SpecialTokens { get; init; } = [];

    public static TokenizerConfig Read(string? path)
    {
        if (path is null || !File.Exists(path)) return new TokenizerConfig();
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            string? Token(string name) => root.TryGetProperty(name, out var v) ? v.ValueKind switch
            {
                JsonValueKind.String => v.GetString(),
                JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
                _ => null,
            } : null;
            bool? Flag(string name) => root.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
            var specials = new[] { "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "pad_token", "mask_token" }
                .Select(Token).OfType<string>().Distinct().ToList();
            return new TokenizerConfig
            {
                AddBosToken = Flag("add_bos_token"),
                AddEosToken = Flag("add_eos_token"),
                DoLowerCase = Flag("do_lower_case"),
                BosToken = Token("bos_token"),
                EosToken = Token("eos_token"),
                UnkToken = Token("unk_token"),
                SpecialTokens = specials,
            };
        }
        catch (JsonException e)
        {
            throw FisherKernelsException.Format($"'{path}': not valid JSON ({e.Message})");
        }
    }
}

/// <summary>
/// Finds and builds the tokenizer of a model folder or file (SPEC §1): tokenizer.json; else vocab.json + merges.txt; else
/// tokenizer.model (SentencePiece); else vocab.txt (WordPiece); else a default-model folder's raw bytes (model.json).
/// vocab.json + merges.txt and vocab.txt are turned into the tokenizer.json Hugging Face's converters write for them, so
/// every BPE and WordPiece tokenizer goes through one pipeline.
/// </summary>
public static class TokenizerLoader
{
    public static readonly string[] FolderFiles = ["tokenizer.json", "vocab.json + merges.txt", "tokenizer.model", "vocab.txt"];

    /// <summary>The tokenizer in <paramref name="folder"/>, or null when it holds none.</summary>
    public static TextTokenizer? FromFolder(string folder)
    {
        var config = TokenizerConfig.Read(Path.Combine(folder, "tokenizer_config.json"));
        string json = Path.Combine(folder, "tokenizer.json");
        if (File.Exists(json)) return FromTokenizerJson(json);
        if (File.Exists(Path.Combine(folder, "vocab.json")) && File.Exists(Path.Combine(folder, "merges.txt")))
            return FromVocabAndMerges(Path.Combine(folder, "vocab.json"), Path.Combine(folder, "merges.txt"), config);
        if (File.Exists(Path.Combine(folder, "tokenizer.model")))
            return new SentencePieceFileTokenizer(Path.Combine(folder, "tokenizer.model"), config.AddBosToken ?? true, config.AddEosToken ?? false);
        if (File.Exists(Path.Combine(folder, "vocab.txt"))) return FromWordPieceVocab(Path.Combine(folder, "vocab.txt"), config);
        if (DefaultModelTokenizer(folder) is { } bytes) return bytes;
        return null;
    }

    /// <summary><c>--tokenizer PATH</c>: a folder, or one of the files a folder would hold.</summary>
    public static TextTokenizer Load(string path)
    {
        if (Directory.Exists(path))
            return FromFolder(path) ?? throw FisherKernelsException.Argument($"--tokenizer '{path}': the folder holds no tokenizer ({string.Join(", ", FolderFiles)})");
        if (!File.Exists(path)) throw FisherKernelsException.Io($"--tokenizer '{path}' does not exist");
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var config = TokenizerConfig.Read(Path.Combine(folder, "tokenizer_config.json"));
        string name = Path.GetFileName(path).ToLowerInvariant();
        return name switch
        {
            "vocab.json" => FromVocabAndMerges(path, Beside(path, "merges.txt"), config),
            "merges.txt" => FromVocabAndMerges(Beside(path, "vocab.json"), path, config),
            "model.json" => DefaultModelTokenizer(folder) ?? throw FisherKernelsException.Unsupported($"--tokenizer '{path}': not a default-model description with \"tokenizer\": \"bytes\""),
            _ when name.EndsWith(".json", StringComparison.Ordinal) => FromTokenizerJson(path),
            _ when name.EndsWith(".model", StringComparison.Ordinal) => new SentencePieceFileTokenizer(path, config.AddBosToken ?? true, config.AddEosToken ?? false),
            _ when name.EndsWith(".txt", StringComparison.Ordinal) => FromWordPieceVocab(path, config),
            _ => throw FisherKernelsException.Unsupported($"--tokenizer '{path}': unsupported tokenizer file (expected {string.Join(", ", FolderFiles)}, or a folder)"),
        };
    }

    static string Beside(string path, string name)
    {
        string other = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, name);
        return File.Exists(other) ? other : throw FisherKernelsException.Io($"'{path}' needs '{name}' beside it, which does not exist");
    }

    /// <summary>The default model's folder (model.json with "tokenizer": "bytes"): each UTF-8 byte is a token.</summary>
    static ByteTokenizer? DefaultModelTokenizer(string folder)
    {
        string meta = Path.Combine(folder, "model.json");
        if (!File.Exists(meta)) return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(meta));
            return doc.RootElement.TryGetProperty("tokenizer", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "bytes" ? new ByteTokenizer() : null;
        }
        catch (JsonException) { return null; }
    }

    /// <summary>A Hugging Face tokenizer.json: added tokens, normalizer, pre-tokenizer, model, post-processor, decoder.</summary>
    public static TextTokenizer FromTokenizerJson(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw FisherKernelsException.Io($"cannot read tokenizer '{path}': {e.Message}", e); }
        JsonNode? node;
        try { node = JsonNode.Parse(bytes); }
        catch (JsonException e) { throw FisherKernelsException.Format($"'{path}': not valid JSON ({e.Message})"); }
        if (node is not JsonObject root || root["model"] is null)
            throw FisherKernelsException.Unsupported($"'{path}': not a Hugging Face tokenizer.json (no \"model\")");
        return FromJson(root, path);
    }

    internal static TextTokenizer FromJson(JsonObject root, string path)
    {
        using var doc = JsonDocument.Parse(root.ToJsonString());
        var json = doc.RootElement;
        JsonElement Part(string name) => json.TryGetProperty(name, out var v) ? v : default;
        string where = $"'{path}'";
        var added = new List<AddedToken>();
        if (json.TryGetProperty("added_tokens", out var list) && list.ValueKind == JsonValueKind.Array)
            foreach (var (a, i) in list.EnumerateArray().Select((a, i) => (a, i)))
            {
                if (!a.TryGetProperty("id", out var id) || !id.TryGetInt32(out int value)) throw FisherKernelsException.Format($"{where} added_tokens[{i}]: no \"id\"");
                added.Add(new AddedToken(value, Json.String(a, "content", $"{where} added_tokens[{i}]"), Json.Bool(a, "special", false),
                                         Json.Bool(a, "single_word", false), Json.Bool(a, "lstrip", false), Json.Bool(a, "rstrip", false)));
            }
        var normalizer = Part("normalizer") is { ValueKind: not JsonValueKind.Undefined } n ? TextNormalizer.FromJson(n, $"{where} normalizer") : null;
        var preTokenizer = Part("pre_tokenizer") is { ValueKind: not JsonValueKind.Undefined } p ? TextPreTokenizer.FromJson(p, $"{where} pre_tokenizer") : null;
        var decoderJson = Part("decoder");
        var decoder = decoderJson.ValueKind is not JsonValueKind.Undefined ? TokenDecoder.FromJson(decoderJson, $"{where} decoder") : null;
        bool byteLevel = preTokenizer?.IsByteLevel == true || (decoderJson.ValueKind == JsonValueKind.Object && decoderJson.GetRawText().Contains("\"ByteLevel\"", StringComparison.Ordinal));
        var model = TokenModel.FromJson(Part("model"), byteLevel, $"{where} model");
        var post = Part("post_processor") is { ValueKind: not JsonValueKind.Undefined } pp ? PostProcessor.FromJson(pp, $"{where} post_processor") : new PostProcessor();
        string kind = model switch
        {
            TokenModel.Bpe when byteLevel => "byte-level BPE",
            TokenModel.Bpe => "BPE",
            _ => model.GetType().Name,
        };
        return new PipelineTokenizer($"{kind} ({Path.GetFileName(path)})", added, normalizer, preTokenizer, model, post, decoder);
    }

    /// <summary>GPT-2 style vocab.json + merges.txt, as the tokenizer.json Hugging Face writes for them (byte-level, no prefix space).</summary>
    public static TextTokenizer FromVocabAndMerges(string vocabPath, string mergesPath, TokenizerConfig config)
    {
        JsonNode? vocab;
        try { vocab = JsonNode.Parse(File.ReadAllBytes(vocabPath)); }
        catch (JsonException e) { throw FisherKernelsException.Format($"'{vocabPath}': not valid JSON ({e.Message})"); }
        if (vocab is not JsonObject vocabObject) throw FisherKernelsException.Format($"'{vocabPath}': expected an object from token to id");
        var merges = new JsonArray();
        foreach (string line in File.ReadLines(mergesPath))
        {
            if (line.StartsWith("#version", StringComparison.Ordinal) || line.Trim().Length == 0) continue;
            merges.Add(line);
        }
        var added = new JsonArray();
        foreach (string special in config.SpecialTokens.Append("<|endoftext|>").Distinct())
            if (vocabObject[special] is JsonValue id)
                added.Add(new JsonObject { ["id"] = id.GetValue<int>(), ["content"] = special, ["special"] = true });
        var root = new JsonObject
        {
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocabObject.DeepClone(), ["merges"] = merges },
        };
        return FromJson(root, vocabPath);
    }

    /// <summary>BERT's vocab.txt, as Hugging Face's BertTokenizerFast builds it: BERT normalizer and pre-tokenizer, WordPiece, [CLS] … [SEP].</summary>
    public static TextTokenizer FromWordPieceVocab(string path, TokenizerConfig config)
    {
        var vocab = new JsonObject();
        int id = 0;
        foreach (string line in File.ReadLines(path))
        {
            string token = line.TrimEnd('\r');
            if (!vocab.ContainsKey(token)) vocab[token] = id;
            id++;
        }
        if (id == 0) throw FisherKernelsException.Format($"'{path}': empty WordPiece vocabulary");
        var added = new JsonArray();
        foreach (string special in new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Concat(config.SpecialTokens).Distinct())
            if (vocab[special] is JsonValue sid) added.Add(new JsonObject { ["id"] = sid.GetValue<int>(), ["content"] = special, ["special"] = true });
        JsonNode? post = vocab["[CLS]"] is JsonValue cls && vocab["[SEP]"] is JsonValue sep
            ? new JsonObject { ["type"] = "BertProcessing", ["cls"] = new JsonArray("[CLS]", cls.GetValue<int>()), ["sep"] = new JsonArray("[SEP]", sep.GetValue<int>()) }
            : null;
        bool lower = config.DoLowerCase ?? true;
        var root = new JsonObject
        {
            ["added_tokens"] = added,
            ["normalizer"] = new JsonObject { ["type"] = "BertNormalizer", ["clean_text"] = true, ["handle_chinese_chars"] = true, ["strip_accents"] = null, ["lowercase"] = lower },
            ["pre_tokenizer"] = new JsonObject { ["type"] = "BertPreTokenizer" },
            ["post_processor"] = post,
            ["decoder"] = new JsonObject { ["type"] = "WordPiece", ["prefix"] = "##", ["cleanup"] = true },
            ["model"] = new JsonObject { ["type"] = "WordPiece", ["vocab"] = vocab, ["unk_token"] = config.UnkToken ?? "[UNK]", ["continuing_subword_prefix"] = "##", ["max_input_chars_per_word"] = 100 },
        };
        return FromJson(root, path);
    }
}

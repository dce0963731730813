using System.Text.Json;
using FisherKernels.Text.Tokenization;

namespace FisherKernels.Text;

/// <summary>
/// <c>--model FILE|DIR</c> (SPEC §1): a folder as Hugging Face / Optimum write them — the model file (model.onnx, else the
/// only *.onnx), its tokenizer, config.json and tokenizer_config.json — or an ONNX file alone.
/// </summary>
public sealed class ModelFolder
{
    static readonly HashSet<string> EncoderOnlyTypes = new(StringComparer.OrdinalIgnoreCase)
    {
        "bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "camembert", "deberta", "deberta-v2", "mpnet",
        "ernie", "mobilebert", "squeezebert", "convbert", "megatron-bert", "layoutlm", "xlm", "flaubert", "rembert", "nezha", "modernbert",
    };

    private readonly Lazy<TextTokenizer?> tokenizer;

    private ModelFolder(string modelPath, string? folder, int? context, string? modelType, bool encoderOnly, int? eosTokenId)
    {
        ModelPath = modelPath;
        Folder = folder;
        Context = context;
        ModelType = modelType;
        EncoderOnly = encoderOnly;
        EosTokenId = eosTokenId;
        tokenizer = new(() => folder is null ? null : TokenizerLoader.FromFolder(folder));
    }

    /// <summary>The ONNX file.</summary>
    public string ModelPath { get; }
    /// <summary>The folder, when <c>--model</c> named one.</summary>
    public string? Folder { get; }
    /// <summary>The context from config.json (max_position_embeddings, n_positions, n_ctx) or the default model's model.json.</summary>
    public int? Context { get; }
    public string? ModelType { get; }
    /// <summary>Whether config.json names an encoder-only architecture (BERT, RoBERTa, …): next-token targets are then meaningless.</summary>
    public bool EncoderOnly { get; }
    /// <summary>config.json's eos_token_id (the first, where it lists several).</summary>
    public int? EosTokenId { get; }
    /// <summary>The folder's tokenizer (null for a file, or a folder without one).</summary>
    public TextTokenizer? Tokenizer => tokenizer.Value;

    public static ModelFolder Resolve(string path)
    {
        if (File.Exists(path)) return new ModelFolder(path, null, null, null, false, null);
        if (!Directory.Exists(path)) throw FisherKernelsException.Io($"--model '{path}' does not exist");
        string model = Path.Combine(path, "model.onnx");
        if (!File.Exists(model))
        {
            var onnx = Directory.GetFiles(path, "*.onnx");
            model = onnx.Length switch
            {
                1 => onnx[0],
                0 => throw FisherKernelsException.Io($"--model '{path}': the folder has no model.onnx and no other *.onnx file"),
                _ => throw FisherKernelsException.Argument($"--model '{path}': the folder has no model.onnx and several *.onnx files ({string.Join(", ", onnx.Select(Path.GetFileName).Order())}); name one"),
            };
        }
        int? context = null, eos = null;
        string? modelType = null;
        bool encoderOnly = false;
        string config = Path.Combine(path, "config.json");
        if (File.Exists(config))
        {
            using var doc = ReadJson(config);
            var root = doc.RootElement;
            foreach (string name in new[] { "max_position_embeddings", "n_positions", "n_ctx" })
                if (root.TryGetProperty(name, out var v) && v.TryGetInt32(out int n) && n > 0) { context = n; break; }
            modelType = root.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String ? mt.GetString() : null;
            bool maskedArchitecture = root.TryGetProperty("architectures", out var arch) && arch.ValueKind == JsonValueKind.Array
                && arch.EnumerateArray().Any(a => a.GetString() is { } s && (s.EndsWith("ForMaskedLM", StringComparison.Ordinal) || s.EndsWith("ForTokenClassification", StringComparison.Ordinal)));
            bool isDecoder = root.TryGetProperty("is_decoder", out var d) && d.ValueKind == JsonValueKind.True;
            encoderOnly = !isDecoder && (maskedArchitecture || (modelType is not null && EncoderOnlyTypes.Contains(modelType)));
            if (root.TryGetProperty("eos_token_id", out var e))
                eos = e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) ? id
                    : e.ValueKind == JsonValueKind.Array && e.GetArrayLength() > 0 && e[0].TryGetInt32(out int first) ? first : null;
        }
        string meta = Path.Combine(path, "model.json");
        if (context is null && File.Exists(meta))
        {
            using var doc = ReadJson(meta);
            if (doc.RootElement.TryGetProperty("context", out var c) && c.TryGetInt32(out int n) && n > 0) context = n;
        }
        return new ModelFolder(model, path, context, modelType, encoderOnly, eos);
    }

    static JsonDocument ReadJson(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw FisherKernelsException.Format($"'{path}': not valid JSON ({e.Message})"); }
    }
}

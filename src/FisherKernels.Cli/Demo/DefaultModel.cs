using System.Text.Json;

namespace FisherKernels.Cli.Demo;

/// <summary>
/// The embedded default model (models/default in the repository, copied beside the tool): a
/// byte-level transformer, its description (model.json) and the demo's texts, read through the
/// text path (its tokenizer is raw UTF-8 bytes, named by model.json).
/// </summary>
internal sealed class DefaultModel
{
    public const string FolderName = "models/default";

    public string Folder { get; }
    public string ModelPath => Path.Combine(Folder, "model.onnx");
    public int Context { get; }
    public int Vocab { get; }

    DefaultModel(string folder, int context, int vocab)
    {
        Folder = folder;
        Context = context;
        Vocab = vocab;
    }

    /// <summary>Reads model.json in <paramref name="folder"/> (default: models/default beside the tool).</summary>
    public static DefaultModel Load(string? folder = null)
    {
        folder ??= Path.Combine(AppContext.BaseDirectory, FolderName);
        string meta = Path.Combine(folder, "model.json");
        if (!File.Exists(meta))
            throw FisherKernelsException.Io($"default model not found: '{meta}' does not exist (build the tool, or pass --model-dir)");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(meta));
            var root = doc.RootElement;
            string tokenizer = root.GetProperty("tokenizer").GetString() ?? "";
            if (tokenizer != "bytes")
                throw FisherKernelsException.Format($"'{meta}': tokenizer '{tokenizer}' is not supported (only 'bytes')");
            var model = new DefaultModel(folder, root.GetProperty("context").GetInt32(), root.GetProperty("vocab").GetInt32());
            if (model.Context < 2 || model.Vocab != 256)
                throw FisherKernelsException.Format($"'{meta}': context {model.Context} and vocab {model.Vocab} do not describe a byte-level model");
            if (!File.Exists(model.ModelPath))
                throw FisherKernelsException.Io($"default model not found: '{model.ModelPath}' does not exist");
            return model;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw FisherKernelsException.Format($"'{meta}': not a valid model description ({e.Message})");
        }
    }

    /// <summary>
    /// The token ids of a demo text in the model folder, read as <c>--text F --document</c> reads a file (SPEC §1): strict
    /// UTF-8, the whole file one sequence, through the folder's tokenizer (raw bytes: the ids are the file's bytes).
    /// </summary>
    public long[] ReadText(string fileName)
    {
        string path = Path.Combine(Folder, fileName);
        if (!File.Exists(path)) throw FisherKernelsException.Io($"demo text '{path}' does not exist");
        var tokenizer = Text.ModelFolder.Resolve(Folder).Tokenizer ?? throw FisherKernelsException.Format($"'{Folder}': the default model's folder has no tokenizer");
        string text = Text.TextInput.Read(path);
        return tokenizer.Encode(Text.TextInput.Sequences(text, document: true, path)[0]).Ids.Select(id => (long)id).ToArray();
    }

    /// <summary>
    /// Cuts <paramref name="ids"/> into consecutive windows of <see cref="Context"/> tokens
    /// (a trailing partial window is dropped), at most <paramref name="maxWindows"/>: tokens [n, context].
    /// </summary>
    public NdArray<long> Windows(ReadOnlySpan<long> ids, int maxWindows = int.MaxValue)
    {
        int count = Math.Min(ids.Length / Context, maxWindows);
        var tokens = new NdArray<long>(count, Context);
        ids[..(count * Context)].CopyTo(tokens.Data);
        return tokens;
    }
}

using System.Text.Json;

namespace FisherKernels.Cli.Demo;

/// <summary>
/// The embedded default model (models/default in the repository, copied beside the tool): a
/// byte-level transformer, its description (model.json) and the demo's texts. Tokens are raw
/// bytes, so no tokenizer file is needed.
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

    /// <summary>The bytes of a demo text in the model folder.</summary>
    public byte[] ReadText(string fileName)
    {
        string path = Path.Combine(Folder, fileName);
        if (!File.Exists(path)) throw FisherKernelsException.Io($"demo text '{path}' does not exist");
        return File.ReadAllBytes(path);
    }

    /// <summary>
    /// Cuts <paramref name="bytes"/> into consecutive windows of <see cref="Context"/> bytes
    /// (a trailing partial window is dropped), at most <paramref name="maxWindows"/>: tokens [n, context].
    /// </summary>
    public NdArray<long> Windows(ReadOnlySpan<byte> bytes, int maxWindows = int.MaxValue)
    {
        int count = Math.Min(bytes.Length / Context, maxWindows);
        var tokens = new NdArray<long>(count, Context);
        for (int i = 0; i < count * Context; i++) tokens.Data[i] = bytes[i];
        return tokens;
    }
}

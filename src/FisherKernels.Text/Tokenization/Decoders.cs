using System.Globalization;
using System.Text;
using System.Text.Json;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// Hugging Face decoders (tokenizer.json "decoder"): token strings back to text. Supported: ByteLevel, ByteFallback,
/// Fuse, Strip, Replace, Metaspace, WordPiece, BPEDecoder, Sequence.
/// </summary>
internal abstract class TokenDecoder
{
    /// <summary>Hugging Face's decode_chain: token strings in, (fewer or changed) strings out, joined at the end.</summary>
    public abstract List<string> Decode(List<string> tokens);

    public static TokenDecoder? FromJson(JsonElement json, string where)
    {
        if (json.ValueKind == JsonValueKind.Null) return null;
        string type = Json.Type(json, where);
        return type switch
        {
            "ByteLevel" => new ByteLevel(),
            "ByteFallback" => new ByteFallback(),
            "Fuse" => new Fuse(),
            "Strip" => new Strip(Json.String(json, "content", where), Int(json, "start"), Int(json, "stop")),
            "Replace" => new Replace(Json.Pattern(json, where), Json.String(json, "content", where)),
            "Metaspace" => new Metaspace((Json.OptionalString(json, "replacement") ?? "▁")[0],
                                         (Json.OptionalString(json, "prepend_scheme") ?? (Json.Bool(json, "add_prefix_space", true) ? "always" : "never")) != "never"),
            "WordPiece" => new WordPiece(Json.OptionalString(json, "prefix") ?? "##", Json.Bool(json, "cleanup", true)),
            "BPEDecoder" => new BpeSuffix(Json.OptionalString(json, "suffix") ?? "</w>"),
            "Sequence" => new Sequence(Json.Array(json, "decoders", where).Select((d, i) => FromJson(d, $"{where}.decoders[{i}]")).OfType<TokenDecoder>().ToList()),
            _ => throw Json.Unsupported(where, "decoder", type, "ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, WordPiece, BPEDecoder, Sequence"),
        };
    }

    static int Int(JsonElement json, string name) => json.TryGetProperty(name, out var v) && v.TryGetInt32(out int i) ? i : 0;

    public static TokenDecoder ByteLevelDecoder() => new ByteLevel();
    public static TokenDecoder WordPieceDecoder(string prefix) => new WordPiece(prefix, cleanup: true);

    private sealed class ByteLevel : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens)
        {
            var bytes = new List<byte>();
            var text = new StringBuilder();
            foreach (string t in tokens)
                if (!ByteLevelSymbols.TryDecode(t, bytes))
                {
                    // Not byte symbols (e.g. an added token's text): flush the bytes so far and keep it as it is.
                    text.Append(Encoding.UTF8.GetString(bytes.ToArray())).Append(t);
                    bytes.Clear();
                }
            text.Append(Encoding.UTF8.GetString(bytes.ToArray()));
            return [text.ToString()];
        }
    }

    private sealed class ByteFallback : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens)
        {
            var result = new List<string>();
            var bytes = new List<byte>();
            void Flush()
            {
                if (bytes.Count == 0) return;
                result.Add(Encoding.UTF8.GetString(bytes.ToArray()));
                bytes.Clear();
            }
            foreach (string t in tokens)
            {
                if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                    && byte.TryParse(t.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b)) bytes.Add(b);
                else
                {
                    Flush();
                    result.Add(t);
                }
            }
            Flush();
            return result;
        }
    }

    private sealed class Fuse : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) => [string.Concat(tokens)];
    }

    private sealed class Strip(string content, int start, int stop) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) => tokens.Select(t =>
        {
            int from = 0, to = t.Length;
            for (int i = 0; i < start && t.AsSpan(from).StartsWith(content); i++) from += content.Length;
            for (int i = 0; i < stop && to - content.Length >= from && t.AsSpan(from, to - from).EndsWith(content); i++) to -= content.Length;
            return t[from..to];
        }).ToList();
    }

    private sealed class Replace(System.Text.RegularExpressions.Regex pattern, string content) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) => tokens.Select(t => pattern.Replace(t, content.Replace("$", "$$"))).ToList();
    }

    private sealed class Metaspace(char replacement, bool prefixWasAdded) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) => tokens.Select((t, i) =>
        {
            string s = t.Replace(replacement, ' ');
            return i == 0 && prefixWasAdded && s.StartsWith(' ') ? s[1..] : s;
        }).ToList();
    }

    private sealed class WordPiece(string prefix, bool cleanup) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) => tokens.Select((t, i) =>
        {
            string s = i > 0 && t.StartsWith(prefix, StringComparison.Ordinal) ? t[prefix.Length..] : i > 0 ? " " + t : t;
            return cleanup ? Cleanup(s) : s;
        }).ToList();

        /// <summary>Hugging Face's clean_up_tokenization: no space before punctuation and English contractions.</summary>
        static string Cleanup(string s) => s.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
            .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
    }

    private sealed class BpeSuffix(string suffix) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens) =>
            tokens.Select((t, i) => t.Replace(suffix, i == tokens.Count - 1 ? "" : " ")).ToList();
    }

    private sealed class Sequence(IReadOnlyList<TokenDecoder> steps) : TokenDecoder
    {
        public override List<string> Decode(List<string> tokens)
        {
            foreach (var step in steps) tokens = step.Decode(tokens);
            return tokens;
        }
    }
}

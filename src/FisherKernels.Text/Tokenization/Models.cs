using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace FisherKernels.Text.Tokenization;

/// <summary>A token of one pre-tokenized piece: its id, its vocabulary string and the piece's chars [From, To) behind it.</summary>
internal readonly record struct PieceToken(int Id, string Piece, int From, int To);

/// <summary>
/// The model of a Hugging Face tokenizer (tokenizer.json "model"): BPE and WordPiece through Microsoft.ML.Tokenizers'
/// own implementations, WordLevel by lookup. Unigram is refused by name.
/// </summary>
internal abstract class TokenModel
{
    public abstract IReadOnlyDictionary<string, int> Vocabulary { get; }

    /// <summary>The tokens of one pre-tokenized piece (never empty for a non-empty piece).</summary>
    public abstract List<PieceToken> Encode(AlignedText piece);

    /// <summary>The subword prefix (WordPiece "##") a decoder strips.</summary>
    public virtual string? ContinuingSubwordPrefix => null;

    public static TokenModel FromJson(JsonElement json, bool byteLevel, string where)
    {
        string type = json.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
            : json.TryGetProperty("merges", out _) ? "BPE" : json.TryGetProperty("continuing_subword_prefix", out _) ? "WordPiece" : "?";
        if (type is not ("BPE" or "WordPiece" or "WordLevel")) throw Json.Unsupported(where, "model", type, "BPE, WordPiece, WordLevel");
        var vocab = ReadVocabulary(json, where);
        return type switch
        {
            "BPE" => Bpe.FromJson(json, vocab, byteLevel, where),
            "WordPiece" => new WordPiece(vocab, Json.OptionalString(json, "unk_token") ?? "[UNK]",
                                         Json.OptionalString(json, "continuing_subword_prefix") ?? "##",
                                         json.TryGetProperty("max_input_chars_per_word", out var m) && m.TryGetInt32(out int max) ? max : 100, where),
            _ => new WordLevel(vocab, Json.OptionalString(json, "unk_token"), where),
        };
    }

    static Dictionary<string, int> ReadVocabulary(JsonElement json, string where)
    {
        if (!json.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw FisherKernelsException.Format($"{where}: \"vocab\" must be an object from token to id");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in v.EnumerateObject())
        {
            if (!entry.Value.TryGetInt32(out int id) || id < 0) throw FisherKernelsException.Format($"{where}: vocabulary entry '{entry.Name}' has no valid id");
            vocab[entry.Name] = id;
        }
        return vocab;
    }

    /// <summary>A whole-piece pre-tokenizer: the pipeline has already split the text, the library must not split again.</summary>
    static readonly PreTokenizer WholePiece = new RegexPreTokenizer(new System.Text.RegularExpressions.Regex(@"[\s\S]+"), null);

    internal sealed class Bpe : TokenModel
    {
        private readonly BpeTokenizer tokenizer;
        private readonly Dictionary<string, int> vocab;
        private readonly bool byteLevel, byteFallback, ignoreMerges;
        private readonly int? unknownId;

        Bpe(BpeTokenizer tokenizer, Dictionary<string, int> vocab, bool byteLevel, bool byteFallback, bool ignoreMerges, int? unknownId, string? prefix)
        {
            this.tokenizer = tokenizer;
            this.vocab = vocab;
            this.byteLevel = byteLevel;
            this.byteFallback = byteFallback;
            this.ignoreMerges = ignoreMerges;
            this.unknownId = unknownId;
            ContinuingSubwordPrefixValue = prefix;
        }

        private string? ContinuingSubwordPrefixValue { get; }
        public override string? ContinuingSubwordPrefix => ContinuingSubwordPrefixValue;
        public override IReadOnlyDictionary<string, int> Vocabulary => vocab;

        public static Bpe FromJson(JsonElement json, Dictionary<string, int> vocab, bool byteLevel, string where)
        {
            if (json.TryGetProperty("dropout", out var d) && d.ValueKind == JsonValueKind.Number && d.GetDouble() > 0)
                throw FisherKernelsException.Unsupported($"{where}: BPE dropout ({d.GetDouble().ToString(CultureInfo.InvariantCulture)}) makes tokenization random; not supported");
            var merges = new List<string>();
            foreach (var (m, i) in Json.Array(json, "merges", where).Select((m, i) => (m, i)))
            {
                if (m.ValueKind == JsonValueKind.String) merges.Add(m.GetString()!);
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].GetString() is { } a && m[1].GetString() is { } b)
                {
                    if (a.Contains(' ') || b.Contains(' ')) throw FisherKernelsException.Unsupported($"{where}: merge {i} ('{a}', '{b}') contains a space, which the BPE implementation cannot read");
                    merges.Add(a + " " + b);
                }
                else throw FisherKernelsException.Format($"{where}: merge {i} must be \"a b\" or [\"a\", \"b\"]");
            }
            string? unk = Json.OptionalString(json, "unk_token");
            bool byteFallback = Json.Bool(json, "byte_fallback", false);
            string? prefix = Json.OptionalString(json, "continuing_subword_prefix");
            var options = new BpeOptions(vocab)
            {
                Merges = merges,
                ByteLevel = byteLevel,
                PreTokenizer = WholePiece,
                UnknownToken = unk,
                // Byte fallback replaces every unknown char by its bytes: each must come back as its own unknown token.
                FuseUnknownTokens = !byteFallback && Json.Bool(json, "fuse_unk", false),
                ContinuingSubwordPrefix = prefix,
                EndOfWordSuffix = Json.OptionalString(json, "end_of_word_suffix"),
            };
            BpeTokenizer tokenizer;
            try { tokenizer = BpeTokenizer.Create(options); }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
            {
                throw FisherKernelsException.Format($"{where}: the BPE vocabulary and merges do not form a tokenizer ({e.Message})");
            }
            return new Bpe(tokenizer, vocab, byteLevel, byteFallback, Json.Bool(json, "ignore_merges", false),
                           unk is not null && vocab.TryGetValue(unk, out int u) ? u : null, prefix);
        }

        public override List<PieceToken> Encode(AlignedText piece)
        {
            string text = piece.Text;
            if (ignoreMerges && vocab.TryGetValue(byteLevel ? ByteLevelSymbols.Encode(text) : text, out int whole))
                return [new PieceToken(whole, byteLevel ? ByteLevelSymbols.Encode(text) : text, 0, text.Length)];
            var tokens = tokenizer.EncodeToTokens(text, out _, considerPreTokenization: false, considerNormalization: false);
            var result = new List<PieceToken>(tokens.Count);
            if (byteLevel)
            {
                // Each symbol is one UTF-8 byte: a token covers the chars its bytes belong to (Hugging Face's byte offsets
                // mapped to chars); the library's own offsets are not used because they are not per byte.
                var charOfByte = CharOfByte(text);
                int b = 0;
                foreach (var t in tokens)
                {
                    int n = t.Value.Length;
                    if (n == 0 || b + n > charOfByte.Length) throw new InvalidOperationException($"byte-level token '{t.Value}' does not fit its piece");
                    int from = charOfByte[b], last = charOfByte[b + n - 1];
                    result.Add(new PieceToken(t.Id, t.Value, from, last + (char.IsHighSurrogate(text[last]) ? 2 : 1)));
                    b += n;
                }
                if (b != charOfByte.Length) throw new InvalidOperationException("byte-level tokens do not cover their piece");
                return result;
            }
            foreach (var t in tokens)
            {
                var (from, to) = (t.Offset.Start.GetOffset(text.Length), t.Offset.End.GetOffset(text.Length));
                if (byteFallback && unknownId == t.Id)
                {
                    // An unknown char becomes the tokens <0xXX> of its UTF-8 bytes, each spanning the char.
                    foreach (byte x in Encoding.UTF8.GetBytes(text[from..to]))
                    {
                        string name = $"<0x{x:X2}>";
                        result.Add(new PieceToken(vocab.TryGetValue(name, out int id) ? id : t.Id, vocab.ContainsKey(name) ? name : t.Value, from, to));
                    }
                }
                else result.Add(new PieceToken(t.Id, t.Value, from, to));
            }
            return result;
        }
    }

    /// <summary>For each UTF-8 byte of <paramref name="text"/>, the index of the char it encodes (a surrogate pair's first char).</summary>
    internal static int[] CharOfByte(string text)
    {
        var result = new List<int>(text.Length);
        Span<byte> buffer = stackalloc byte[4];
        for (int i = 0; i < text.Length; i++)
        {
            int n = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])
                ? Encoding.UTF8.GetBytes(text.AsSpan(i, 2), buffer) : Encoding.UTF8.GetBytes(text.AsSpan(i, 1), buffer);
            for (int k = 0; k < n; k++) result.Add(i);
            if (n == 4) i++;
        }
        return result.ToArray();
    }

    private sealed class WordPiece : TokenModel
    {
        private readonly WordPieceTokenizer tokenizer;
        private readonly Dictionary<string, int> vocab;
        private readonly string prefix;

        public WordPiece(Dictionary<string, int> vocab, string unk, string prefix, int maxChars, string where)
        {
            this.vocab = vocab;
            this.prefix = prefix;
            if (!vocab.ContainsKey(unk)) throw FisherKernelsException.Format($"{where}: the unknown token '{unk}' is not in the vocabulary");
            // The library reads a vocab.txt: one token a line, the line number its id.
            var byId = new string?[vocab.Values.Max() + 1];
            foreach (var (token, id) in vocab) byId[id] = token;
            int gap = Array.IndexOf(byId, null);
            if (gap >= 0) throw FisherKernelsException.Unsupported($"{where}: WordPiece ids must be 0..{byId.Length - 1} without gaps; id {gap} is missing");
            if (byId.FirstOrDefault(t => t!.Contains('\n') || t.Contains('\r')) is { } bad)
                throw FisherKernelsException.Unsupported($"{where}: WordPiece token '{bad}' contains a line break");
            using var stream = new MemoryStream(Encoding.UTF8.GetBytes(string.Join("\n", byId) + "\n"));
            tokenizer = WordPieceTokenizer.Create(stream, new WordPieceOptions
            {
                UnknownToken = unk,
                ContinuingSubwordPrefix = prefix,
                MaxInputCharsPerWord = maxChars,
                PreTokenizer = WholePiece,
            });
        }

        public override IReadOnlyDictionary<string, int> Vocabulary => vocab;
        public override string? ContinuingSubwordPrefix => prefix;

        public override List<PieceToken> Encode(AlignedText piece)
        {
            var tokens = tokenizer.EncodeToTokens(piece.Text, out _, considerPreTokenization: false, considerNormalization: false);
            // WordPiece matches a word's characters left to right: each token covers as many chars as its text (less the
            // "##" of a continuation); an unknown word is one token over all of it. (The library's offsets are the word's.)
            if (tokens.Count == 1) return [new PieceToken(tokens[0].Id, tokens[0].Value, 0, piece.Length)];
            var result = new List<PieceToken>(tokens.Count);
            int at = 0;
            foreach (var (t, i) in tokens.Select((t, i) => (t, i)))
            {
                int length = i > 0 && t.Value.StartsWith(prefix, StringComparison.Ordinal) ? t.Value.Length - prefix.Length : t.Value.Length;
                int to = i == tokens.Count - 1 ? piece.Length : Math.Min(at + length, piece.Length);
                result.Add(new PieceToken(t.Id, t.Value, at, to));
                at = to;
            }
            return result;
        }
    }

    private sealed class WordLevel(Dictionary<string, int> vocab, string? unk, string where) : TokenModel
    {
        public override IReadOnlyDictionary<string, int> Vocabulary => vocab;

        public override List<PieceToken> Encode(AlignedText piece)
        {
            if (vocab.TryGetValue(piece.Text, out int id)) return [new PieceToken(id, piece.Text, 0, piece.Length)];
            if (unk is not null && vocab.TryGetValue(unk, out int u)) return [new PieceToken(u, unk, 0, piece.Length)];
            throw FisherKernelsException.Argument($"{where}: '{piece.Text}' is not in the WordLevel vocabulary and there is no unknown token");
        }
    }
}

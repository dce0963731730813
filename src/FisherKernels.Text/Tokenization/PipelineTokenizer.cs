using System.Text.Json;
using System.Text.RegularExpressions;

namespace FisherKernels.Text.Tokenization;

/// <summary>An added token of tokenizer.json ("added_tokens"): matched in the input before normalization.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool SingleWord, bool LStrip, bool RStrip);

/// <summary>
/// A Hugging Face tokenizer built from the parts of its tokenizer.json: added tokens, normalizer, pre-tokenizer, model
/// (through Microsoft.ML.Tokenizers), post-processor and decoder, each keeping every token's span in the input.
/// </summary>
internal sealed class PipelineTokenizer : TextTokenizer
{
    private readonly string description;
    private readonly IReadOnlyList<AddedToken> addedTokens;
    private readonly Regex? addedPattern;
    private readonly TextNormalizer? normalizer;
    private readonly TextPreTokenizer? preTokenizer;
    private readonly TokenModel model;
    private readonly PostProcessor post;
    private readonly TokenDecoder? decoder;
    private readonly Dictionary<int, string> pieceOfId = [];
    private readonly Dictionary<int, AddedToken> addedById = [];

    public PipelineTokenizer(string description, IReadOnlyList<AddedToken> addedTokens, TextNormalizer? normalizer, TextPreTokenizer? preTokenizer,
                             TokenModel model, PostProcessor post, TokenDecoder? decoder)
    {
        this.description = description;
        this.addedTokens = addedTokens;
        this.normalizer = normalizer;
        this.preTokenizer = preTokenizer;
        this.model = model;
        this.post = post;
        this.decoder = decoder;
        foreach (var (token, id) in model.Vocabulary) pieceOfId[id] = token;
        foreach (var a in addedTokens)
        {
            pieceOfId[a.Id] = a.Content;
            addedById[a.Id] = a;
        }
        VocabularySize = pieceOfId.Count == 0 ? 0 : pieceOfId.Keys.Max() + 1;
        // Longest first, so that "<|endoftext|>" wins over a shorter added token it contains.
        if (addedTokens.Count > 0)
            addedPattern = new Regex(string.Join("|", addedTokens.Select(a => a.Content).Where(c => c.Length > 0).Distinct()
                .OrderByDescending(c => c.Length).Select(Regex.Escape)), RegexOptions.CultureInvariant);
    }

    public override string Description => description;
    public override int VocabularySize { get; }

    public override int? TokenId(string token) =>
        addedTokens.FirstOrDefault(a => a.Content == token)?.Id ?? (model.Vocabulary.TryGetValue(token, out int id) ? id : null);

    public override TokenizedText Encode(string text, bool addSpecialTokens = true)
    {
        var ids = new List<int>();
        var starts = new List<int>();
        var ends = new List<int>();
        var pieces = new List<string>();
        var cp = CodePoints.IndexOfChars(text);
        foreach (var (from, to, added) in Segments(text))
        {
            if (added is not null)
            {
                ids.Add(added.Id);
                starts.Add(cp[from]);
                ends.Add(cp[to]);
                pieces.Add(added.Content);
                continue;
            }
            var aligned = AlignedText.Of(text[from..to], cp[from]);
            if (normalizer is not null) aligned = normalizer.Normalize(aligned);
            IReadOnlyList<AlignedText> parts = preTokenizer is null ? [aligned] : preTokenizer.SplitAll([aligned], first: from == 0);
            foreach (var part in parts)
            {
                if (part.Length == 0) continue;
                foreach (var t in model.Encode(part))
                {
                    var (s, e) = part.Span(t.From, t.To);
                    ids.Add(t.Id);
                    starts.Add(s);
                    ends.Add(e);
                    pieces.Add(t.Piece);
                }
            }
        }
        if (post.TrimOffsets) TrimOffsets(pieces, starts, ends, post.AddPrefixSpace);
        var addedFlags = new List<bool>(Enumerable.Repeat(false, ids.Count));
        if (addSpecialTokens)
        {
            foreach (var (list, atStart) in new[] { (post.Prefix, true), (post.Suffix, false) })
            {
                int at = atStart ? 0 : ids.Count;
                ids.InsertRange(at, list.Select(t => t.Id));
                pieces.InsertRange(at, list.Select(t => t.Piece));
                starts.InsertRange(at, list.Select(_ => 0));
                ends.InsertRange(at, list.Select(_ => 0));
                addedFlags.InsertRange(at, list.Select(_ => true));
            }
        }
        return new TokenizedText(text, ids.ToArray(), starts.ToArray(), ends.ToArray(), addedFlags.ToArray(), pieces.ToArray());
    }

    /// <summary>The input cut at its added tokens: (from, to, the added token or null for text between them), in UTF-16 indices.</summary>
    private IEnumerable<(int From, int To, AddedToken? Added)> Segments(string text)
    {
        int at = 0;
        if (addedPattern is not null)
        {
            foreach (Match m in addedPattern.Matches(text))
            {
                if (m.Index < at) continue;
                var token = addedTokens.First(a => a.Content == m.Value);
                int from = m.Index, to = m.Index + m.Length;
                if (token.SingleWord && ((from > 0 && IsWordChar(text[from - 1])) || (to < text.Length && IsWordChar(text[to])))) continue;
                if (token.LStrip) while (from > at && char.IsWhiteSpace(text[from - 1])) from--;
                if (token.RStrip) while (to < text.Length && char.IsWhiteSpace(text[to])) to++;
                if (from > at) yield return (at, from, null);
                yield return (from, to, token);
                at = to;
            }
        }
        if (at < text.Length) yield return (at, text.Length, null);
    }

    static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '_';

    /// <summary>Hugging Face's ByteLevel trim_offsets: a token's span leaves out its leading and trailing spaces.</summary>
    static void TrimOffsets(List<string> pieces, List<int> starts, List<int> ends, bool addPrefixSpace)
    {
        static bool IsSpace(char c) => c == ByteLevelSymbols.Of((byte)' ') || char.IsWhiteSpace(c);
        for (int i = 0; i < pieces.Count; i++)
        {
            string p = pieces[i];
            int leading = p.TakeWhile(IsSpace).Count();
            int trailing = p.Reverse().TakeWhile(IsSpace).Count();
            if (leading > 0)
            {
                bool isFirst = i == 0 || starts[i] == 0;
                if (!isFirst || !addPrefixSpace) starts[i] = Math.Min(starts[i] + leading, ends[i]);
            }
            if (trailing > 0 && ends[i] >= trailing) ends[i] = Math.Max(ends[i] - trailing, starts[i]);
        }
    }

    public override string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = false)
    {
        var text = new System.Text.StringBuilder();
        var run = new List<string>();
        void Flush()
        {
            if (run.Count == 0) return;
            text.Append(string.Concat(decoder is null ? run : decoder.Decode(run)));
            run.Clear();
        }
        foreach (int id in ids)
        {
            if (!pieceOfId.TryGetValue(id, out string? piece))
                throw FisherKernelsException.Argument($"token id {id} is not in the tokenizer's vocabulary ({description})");
            if (addedById.TryGetValue(id, out var added))
            {
                Flush();
                if (!(added.Special && skipSpecialTokens)) text.Append(added.Content);
            }
            else run.Add(piece);
        }
        Flush();
        return text.ToString();
    }
}

/// <summary>
/// What tokenizer.json's "post_processor" adds to a single sequence: tokens before and after it (TemplateProcessing,
/// BertProcessing, RobertaProcessing), and whether spans leave out spaces (ByteLevel/Roberta trim_offsets).
/// </summary>
internal sealed class PostProcessor
{
    public List<(int Id, string Piece)> Prefix { get; } = [];
    public List<(int Id, string Piece)> Suffix { get; } = [];
    public bool TrimOffsets { get; set; }
    public bool AddPrefixSpace { get; set; }

    public static PostProcessor FromJson(JsonElement json, string where)
    {
        var result = new PostProcessor();
        if (json.ValueKind != JsonValueKind.Null) result.Read(json, where);
        return result;
    }

    private void Read(JsonElement json, string where)
    {
        string type = Json.Type(json, where);
        switch (type)
        {
            case "ByteLevel":
                TrimOffsets = Json.Bool(json, "trim_offsets", true);
                AddPrefixSpace = Json.Bool(json, "add_prefix_space", true);
                break;
            case "BertProcessing":
            case "RobertaProcessing":
                Prefix.Add(Pair(json, "cls", where));
                Suffix.Add(Pair(json, "sep", where));
                if (type == "RobertaProcessing")
                {
                    TrimOffsets = Json.Bool(json, "trim_offsets", true);
                    AddPrefixSpace = Json.Bool(json, "add_prefix_space", true);
                }
                break;
            case "TemplateProcessing":
                Template(json, where);
                break;
            case "Sequence":
                foreach (var (p, i) in Json.Array(json, "processors", where).Select((p, i) => (p, i))) Read(p, $"{where}.processors[{i}]");
                break;
            default:
                throw Json.Unsupported(where, "post-processor", type, "TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence");
        }
    }

    static (int, string) Pair(JsonElement json, string name, string where) =>
        json.TryGetProperty(name, out var p) && p.ValueKind == JsonValueKind.Array && p.GetArrayLength() == 2 && p[0].ValueKind == JsonValueKind.String && p[1].TryGetInt32(out int id)
            ? (id, p[0].GetString()!) : throw FisherKernelsException.Format($"{where}: \"{name}\" must be [token, id]");

    private void Template(JsonElement json, string where)
    {
        if (!json.TryGetProperty("special_tokens", out var specials) || specials.ValueKind != JsonValueKind.Object)
            throw FisherKernelsException.Format($"{where}: TemplateProcessing needs \"special_tokens\"");
        bool seenSequence = false;
        foreach (var (item, i) in Json.Array(json, "single", where).Select((x, i) => (x, i)))
        {
            if (item.TryGetProperty("Sequence", out var seq))
            {
                if (seenSequence || Json.OptionalString(seq, "id") != "A") throw FisherKernelsException.Unsupported($"{where}.single[{i}]: only one sequence \"A\" is supported");
                seenSequence = true;
            }
            else if (item.TryGetProperty("SpecialToken", out var special))
            {
                string name = Json.String(special, "id", $"{where}.single[{i}].SpecialToken");
                if (!specials.TryGetProperty(name, out var entry)) throw FisherKernelsException.Format($"{where}: special token '{name}' is not in \"special_tokens\"");
                var ids = Json.Array(entry, "ids", $"{where}.special_tokens.{name}").Select(x => x.GetInt32()).ToList();
                var tokens = entry.TryGetProperty("tokens", out var ts) && ts.ValueKind == JsonValueKind.Array ? ts.EnumerateArray().Select(x => x.GetString() ?? name).ToList() : [];
                var target = seenSequence ? Suffix : Prefix;
                for (int k = 0; k < ids.Count; k++) target.Add((ids[k], k < tokens.Count ? tokens[k] : name));
            }
            else throw FisherKernelsException.Format($"{where}.single[{i}]: expected \"Sequence\" or \"SpecialToken\"");
        }
        if (!seenSequence) throw FisherKernelsException.Format($"{where}: the \"single\" template has no sequence");
    }
}

using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// Hugging Face pre-tokenizers (tokenizer.json "pre_tokenizer"): each splits pieces of aligned text into smaller ones.
/// Supported: ByteLevel, Split, Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation, Digits, Metaspace, Sequence.
/// </summary>
internal abstract class TextPreTokenizer
{
    /// <summary>GPT-2's split (also ByteLevel's with use_regex).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Splits <paramref name="piece"/>; <paramref name="first"/> says whether it starts the text (Metaspace's "first" scheme).</summary>
    public abstract IEnumerable<AlignedText> Split(AlignedText piece, bool first);

    /// <summary>Whether this (or a step of it) works on UTF-8 bytes: the model then reads byte-level symbols.</summary>
    public virtual bool IsByteLevel => false;

    public List<AlignedText> SplitAll(IReadOnlyList<AlignedText> pieces, bool first)
    {
        var result = new List<AlignedText>();
        for (int i = 0; i < pieces.Count; i++)
            foreach (var p in Split(pieces[i], first && i == 0))
                if (p.Length > 0) result.Add(p);
        return result;
    }

    public static TextPreTokenizer? FromJson(JsonElement json, string where)
    {
        if (json.ValueKind == JsonValueKind.Null) return null;
        string type = Json.Type(json, where);
        return type switch
        {
            "ByteLevel" => new ByteLevel(Json.Bool(json, "add_prefix_space", true), Json.Bool(json, "use_regex", true)),
            "Split" => new RegexSplit(Json.Pattern(json, where), Behavior(json, where, "Isolated"), Json.Bool(json, "invert", false)),
            "Whitespace" => new RegexSplit(new Regex(@"\w+|[^\w\s]+", RegexOptions.CultureInvariant), SplitBehavior.Removed, invert: true),
            "WhitespaceSplit" => new RegexSplit(new Regex(@"\s+", RegexOptions.CultureInvariant), SplitBehavior.Removed, invert: false),
            "BertPreTokenizer" => new Bert(),
            "Punctuation" => new CharSplit(IsPunctuation, Behavior(json, where, "Isolated")),
            "Digits" => Json.Bool(json, "individual_digits", false)
                ? new CharSplit(char.IsDigit, SplitBehavior.Isolated)
                : new RegexSplit(new Regex(@"\p{Nd}+", RegexOptions.CultureInvariant), SplitBehavior.Isolated, invert: false),
            "Metaspace" => Metaspace.Read(json, where),
            "Sequence" => new Sequence(Json.Array(json, "pretokenizers", where).Select((p, i) => FromJson(p, $"{where}.pretokenizers[{i}]")).OfType<TextPreTokenizer>().ToList()),
            _ => throw Json.Unsupported(where, "pre-tokenizer", type, "ByteLevel, Split, Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation, Digits, Metaspace, Sequence"),
        };
    }

    internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

    static SplitBehavior Behavior(JsonElement json, string where, string fallback)
    {
        string name = Json.OptionalString(json, "behavior") ?? fallback;
        return Enum.TryParse<SplitBehavior>(name, out var b) ? b
            : throw Json.Unsupported(where, "split behavior", name, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
    }

    /// <summary>Hugging Face's punctuation: ASCII symbols and every Unicode P* category.</summary>
    internal static bool IsPunctuation(char c) => c is >= '!' and <= '/' or >= ':' and <= '@' or >= '[' and <= '`' or >= '{' and <= '~'
        || char.GetUnicodeCategory(c) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
            or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;

    /// <summary>Cuts <paramref name="piece"/> at the ranges <paramref name="matches"/> (sorted, disjoint) as <paramref name="behavior"/> says.</summary>
    internal static IEnumerable<AlignedText> Cut(AlignedText piece, List<(int From, int To)> matches, SplitBehavior behavior, bool invert)
    {
        // Segments of the piece in order, each flagged whether it is a match (after inversion).
        var segments = new List<(int From, int To, bool Match)>();
        int at = 0;
        foreach (var (from, to) in matches)
        {
            if (from > at) segments.Add((at, from, invert));
            if (to > from) segments.Add((from, to, !invert));
            at = to;
        }
        if (at < piece.Length) segments.Add((at, piece.Length, invert));

        var result = new List<(int From, int To)>();
        switch (behavior)
        {
            case SplitBehavior.Removed:
                result.AddRange(segments.Where(s => !s.Match).Select(s => (s.From, s.To)));
                break;
            case SplitBehavior.Isolated:
                result.AddRange(segments.Select(s => (s.From, s.To)));
                break;
            case SplitBehavior.Contiguous:
                foreach (var s in segments)
                    if (s.Match && result.Count > 0 && segments[segments.IndexOf(s) - 1].Match) result[^1] = (result[^1].From, s.To);
                    else result.Add((s.From, s.To));
                break;
            case SplitBehavior.MergedWithPrevious:
                bool previousWasMatch = true;
                foreach (var s in segments)
                {
                    if (s.Match && result.Count > 0 && !previousWasMatch) result[^1] = (result[^1].From, s.To);
                    else result.Add((s.From, s.To));
                    previousWasMatch = s.Match;
                }
                break;
            case SplitBehavior.MergedWithNext:
                bool pendingMatch = false;
                foreach (var s in segments)
                {
                    if (pendingMatch && !s.Match) result[^1] = (result[^1].From, s.To);
                    else result.Add((s.From, s.To));
                    pendingMatch = s.Match;
                }
                break;
        }
        return result.Where(r => r.To > r.From).Select(r => piece.Slice(r.From, r.To));
    }

    private sealed class RegexSplit(Regex pattern, SplitBehavior behavior, bool invert) : TextPreTokenizer
    {
        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first) =>
            Cut(piece, pattern.Matches(piece.Text).Where(m => m.Length > 0).Select(m => (m.Index, m.Index + m.Length)).ToList(), behavior, invert);
    }

    private sealed class CharSplit(Func<char, bool> isMatch, SplitBehavior behavior) : TextPreTokenizer
    {
        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first)
        {
            var matches = new List<(int, int)>();
            for (int i = 0; i < piece.Length; i++)
                if (isMatch(piece.Text[i])) matches.Add((i, i + 1));
            return Cut(piece, matches, behavior, invert: false);
        }
    }

    private sealed class Bert : TextPreTokenizer
    {
        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first)
        {
            foreach (var word in Cut(piece, Regex.Matches(piece.Text, @"\s+").Select(m => (m.Index, m.Index + m.Length)).ToList(), SplitBehavior.Removed, false))
            {
                var matches = new List<(int, int)>();
                for (int i = 0; i < word.Length; i++)
                    if (IsPunctuation(word.Text[i])) matches.Add((i, i + 1));
                foreach (var part in Cut(word, matches, SplitBehavior.Isolated, false)) yield return part;
            }
        }
    }

    private sealed class ByteLevel(bool addPrefixSpace, bool useRegex) : TextPreTokenizer
    {
        static readonly Regex Gpt2 = new(Gpt2Pattern, RegexOptions.CultureInvariant);

        public override bool IsByteLevel => true;

        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first)
        {
            if (addPrefixSpace && piece.Length > 0 && piece.Text[0] != ' ')
            {
                // The added space belongs to no input character: it aligns with the first one, as Hugging Face's does.
                var b = new AlignedText.Builder();
                b.Append(" ", piece.Start[0], piece.Start[0]);
                b.Append(piece);
                piece = b.Build();
            }
            if (!useRegex) return [piece];
            return Cut(piece, Gpt2.Matches(piece.Text).Select(m => (m.Index, m.Index + m.Length)).ToList(), SplitBehavior.Isolated, false);
        }
    }

    internal sealed class Metaspace(char replacement, string prependScheme, bool split) : TextPreTokenizer
    {
        public static Metaspace Read(JsonElement json, string where)
        {
            string r = Json.OptionalString(json, "replacement") ?? "▁";
            if (r.Length != 1) throw FisherKernelsException.Unsupported($"{where}: Metaspace replacement '{r}' must be one character");
            string scheme = Json.OptionalString(json, "prepend_scheme") ?? (Json.Bool(json, "add_prefix_space", true) ? "always" : "never");
            if (scheme is not ("always" or "first" or "never")) throw Json.Unsupported(where, "Metaspace prepend_scheme", scheme, "always, first, never");
            return new Metaspace(r[0], scheme, Json.Bool(json, "split", true));
        }

        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first)
        {
            var replaced = piece.Map((s, i) => (1, s[i] == ' ' ? replacement.ToString() : s[i].ToString()));
            if ((prependScheme == "always" || (prependScheme == "first" && first)) && replaced.Length > 0 && replaced.Text[0] != replacement)
            {
                var b = new AlignedText.Builder();
                b.Append(replacement.ToString(), replaced.Start[0], replaced.Start[0]);
                b.Append(replaced);
                replaced = b.Build();
            }
            if (!split) return [replaced];
            var matches = new List<(int, int)>();
            for (int i = 0; i < replaced.Length; i++)
                if (replaced.Text[i] == replacement) matches.Add((i, i + 1));
            return Cut(replaced, matches, SplitBehavior.MergedWithNext, false);
        }
    }

    private sealed class Sequence(IReadOnlyList<TextPreTokenizer> steps) : TextPreTokenizer
    {
        public override bool IsByteLevel => steps.Any(s => s.IsByteLevel);

        public override IEnumerable<AlignedText> Split(AlignedText piece, bool first)
        {
            IReadOnlyList<AlignedText> pieces = [piece];
            foreach (var step in steps) pieces = step.SplitAll(pieces, first);
            return pieces;
        }
    }
}

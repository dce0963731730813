using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// Hugging Face normalizers (tokenizer.json "normalizer"), each keeping the alignment to the input. Supported:
/// NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer, Sequence.
/// </summary>
internal abstract class TextNormalizer
{
    public abstract AlignedText Normalize(AlignedText text);

    public static TextNormalizer? FromJson(JsonElement json, string where)
    {
        if (json.ValueKind == JsonValueKind.Null) return null;
        string type = Json.Type(json, where);
        return type switch
        {
            "NFC" => new UnicodeForm(NormalizationForm.FormC),
            "NFD" => new UnicodeForm(NormalizationForm.FormD),
            "NFKC" => new UnicodeForm(NormalizationForm.FormKC),
            "NFKD" => new UnicodeForm(NormalizationForm.FormKD),
            "Lowercase" => new Lowercase(),
            "StripAccents" => new StripAccents(),
            "Strip" => new Strip(Json.Bool(json, "left", true), Json.Bool(json, "right", true)),
            "Replace" => new Replace(Json.Pattern(json, where), Json.String(json, "content", where)),
            "Prepend" => new Prepend(Json.String(json, "prepend", where)),
            "BertNormalizer" => new Bert(Json.Bool(json, "clean_text", true), Json.Bool(json, "handle_chinese_chars", true),
                                         json.TryGetProperty("strip_accents", out var sa) && sa.ValueKind is JsonValueKind.True or JsonValueKind.False ? sa.GetBoolean() : null,
                                         Json.Bool(json, "lowercase", true)),
            "Sequence" => new Sequence(Json.Array(json, "normalizers", where).Select((n, i) => FromJson(n, $"{where}.normalizers[{i}]")).OfType<TextNormalizer>().ToList()),
            _ => throw Json.Unsupported(where, "normalizer", type, "NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer, Sequence"),
        };
    }

    /// <summary>Length of the combining sequence at <paramref name="i"/>: a code point and the marks that follow it.</summary>
    protected static int CombiningSequence(string s, int i)
    {
        int j = i + CharLength(s, i);
        while (j < s.Length && IsMark(s, j)) j += CharLength(s, j);
        return j - i;
    }

    protected static int CharLength(string s, int i) => char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;

    protected static bool IsMark(string s, int i) => CharUnicodeInfo.GetUnicodeCategory(s, i) is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark;

    private sealed class UnicodeForm(NormalizationForm form) : TextNormalizer
    {
        // Normalization composes or reorders only within a combining sequence; each is normalized alone and keeps its span.
        public override AlignedText Normalize(AlignedText text) => text.Map((s, i) =>
        {
            int n = CombiningSequence(s, i);
            return (n, s.Substring(i, n).Normalize(form));
        });
    }

    private sealed class Lowercase : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text) => text.Map((s, i) =>
        {
            int n = CharLength(s, i);
            return (n, s.Substring(i, n).ToLowerInvariant());
        });
    }

    private sealed class StripAccents : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text) => text.Map((s, i) =>
        {
            int n = CharLength(s, i);
            return (n, CharUnicodeInfo.GetUnicodeCategory(s, i) == UnicodeCategory.NonSpacingMark ? "" : s.Substring(i, n));
        });
    }

    private sealed class Strip(bool left, bool right) : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text)
        {
            int from = 0, to = text.Length;
            if (left) while (from < to && char.IsWhiteSpace(text.Text[from])) from++;
            if (right) while (to > from && char.IsWhiteSpace(text.Text[to - 1])) to--;
            return text.Slice(from, to);
        }
    }

    private sealed class Replace(Regex pattern, string content) : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text)
        {
            var b = new AlignedText.Builder();
            int at = 0;
            foreach (Match m in pattern.Matches(text.Text))
            {
                if (m.Length == 0) continue;
                b.Append(text.Slice(at, m.Index));
                var (s, e) = text.Span(m.Index, m.Index + m.Length);
                b.Append(content, s, e);
                at = m.Index + m.Length;
            }
            b.Append(text.Slice(at, text.Length));
            return b.Build();
        }
    }

    private sealed class Prepend(string prefix) : TextNormalizer
    {
        // As Hugging Face: nothing is prepended to an empty text; the prefix is aligned with the first character.
        public override AlignedText Normalize(AlignedText text)
        {
            if (text.Length == 0) return text;
            var b = new AlignedText.Builder();
            b.Append(prefix, text.Start[0], text.End[0]);
            b.Append(text);
            return b.Build();
        }
    }

    private sealed class Sequence(IReadOnlyList<TextNormalizer> steps) : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text)
        {
            foreach (var step in steps) text = step.Normalize(text);
            return text;
        }
    }

    /// <summary>BERT's: clean control characters, space out CJK ideographs, strip accents, lowercase (Hugging Face's BertNormalizer).</summary>
    private sealed class Bert(bool cleanText, bool chineseChars, bool? stripAccents, bool lowercase) : TextNormalizer
    {
        public override AlignedText Normalize(AlignedText text)
        {
            bool strip = stripAccents ?? lowercase;
            return text.Map((s, i) =>
            {
                int n = CharLength(s, i);
                string c = s.Substring(i, n);
                int cp = char.ConvertToUtf32(s, i);
                if (cleanText)
                {
                    if (cp == 0 || cp == 0xFFFD || (IsControl(s, i) && c is not ("\t" or "\n" or "\r"))) return (n, "");
                    if (char.IsWhiteSpace(s, i)) c = " ";
                }
                if (chineseChars && IsCjk(cp)) c = " " + c + " ";
                if (strip)
                {
                    var sb = new StringBuilder();
                    string d = c.Normalize(NormalizationForm.FormD);
                    for (int k = 0; k < d.Length; k++)
                        if (CharUnicodeInfo.GetUnicodeCategory(d, k) != UnicodeCategory.NonSpacingMark) sb.Append(d[k]);
                    c = sb.ToString();
                }
                if (lowercase) c = c.ToLowerInvariant();
                return (n, c);
            });
        }

        static bool IsControl(string s, int i) => CharUnicodeInfo.GetUnicodeCategory(s, i) is UnicodeCategory.Control or UnicodeCategory.Format;

        static bool IsCjk(int cp) => cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF
            or >= 0x2A700 and <= 0x2B73F or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
    }
}

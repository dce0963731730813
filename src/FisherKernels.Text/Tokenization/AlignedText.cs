using System.Text;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// A (normalized) string in which every UTF-16 char remembers the code points [Start, End) of the input it came from,
/// so that tokens of the normalized text map back to spans of the input (Hugging Face's alignments).
/// </summary>
internal sealed class AlignedText
{
    public AlignedText(string text, int[] start, int[] end)
    {
        Text = text;
        Start = start;
        End = end;
    }

    public string Text { get; }
    public int[] Start { get; }
    public int[] End { get; }
    public int Length => Text.Length;

    /// <summary>The input itself: each char aligned to its own code point (both halves of a surrogate pair to the same one).</summary>
    public static AlignedText Of(string text, int codePointOffset = 0)
    {
        var index = CodePoints.IndexOfChars(text);
        var start = new int[text.Length];
        var end = new int[text.Length];
        for (int i = 0; i < text.Length; i++)
        {
            start[i] = codePointOffset + index[i];
            end[i] = start[i] + 1;
        }
        return new AlignedText(text, start, end);
    }

    public AlignedText Slice(int from, int to) => new(Text[from..to], Start[from..to], End[from..to]);

    /// <summary>The input span [first start, last end) of chars [from, to); empty at <paramref name="from"/> when the range is empty.</summary>
    public (int Start, int End) Span(int from, int to)
    {
        if (to <= from)
        {
            int at = from < Length ? Start[from] : Length > 0 ? End[^1] : 0;
            return (at, at);
        }
        int s = int.MaxValue, e = int.MinValue;
        for (int i = from; i < to; i++)
        {
            s = Math.Min(s, Start[i]);
            e = Math.Max(e, End[i]);
        }
        return (s, e);
    }

    /// <summary>Concatenation of aligned pieces.</summary>
    public static AlignedText Concat(IReadOnlyList<AlignedText> parts)
    {
        var b = new Builder();
        foreach (var p in parts) b.Append(p);
        return b.Build();
    }

    /// <summary>
    /// Replaces each run of chars the <paramref name="map"/> groups (by returning how many chars it consumed and the
    /// replacement): every replacement char is aligned to the consumed chars' whole span.
    /// </summary>
    public AlignedText Map(Func<string, int, (int Consumed, string Replacement)> map)
    {
        var b = new Builder();
        for (int i = 0; i < Length;)
        {
            var (consumed, replacement) = map(Text, i);
            if (consumed <= 0) throw new InvalidOperationException("a normalizer step consumed no characters");
            var (s, e) = Span(i, i + consumed);
            b.Append(replacement, s, e);
            i += consumed;
        }
        return b.Build();
    }

    internal sealed class Builder
    {
        private readonly StringBuilder text = new();
        private readonly List<int> start = [];
        private readonly List<int> end = [];

        public void Append(AlignedText part)
        {
            text.Append(part.Text);
            start.AddRange(part.Start);
            end.AddRange(part.End);
        }

        public void Append(string s, int spanStart, int spanEnd)
        {
            text.Append(s);
            for (int i = 0; i < s.Length; i++)
            {
                start.Add(spanStart);
                end.Add(spanEnd);
            }
        }

        public AlignedText Build() => new(text.ToString(), start.ToArray(), end.ToArray());
    }
}

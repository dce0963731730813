namespace FisherKernels.Text.Tokenization;

/// <summary>
/// One text as token ids, each with its character span in the input: Unicode code points, end exclusive, as
/// Hugging Face's offset mappings count them. Special tokens the post-processor adds (BOS, [CLS], [SEP]) span (0, 0).
/// </summary>
public sealed class TokenizedText
{
    public TokenizedText(string text, int[] ids, int[] starts, int[] ends, bool[] added, string[] pieces)
    {
        if (starts.Length != ids.Length || ends.Length != ids.Length || added.Length != ids.Length || pieces.Length != ids.Length)
            throw new ArgumentException("ids, spans, flags and pieces must have one entry per token");
        Text = text;
        Ids = ids;
        Starts = starts;
        Ends = ends;
        Added = added;
        Pieces = pieces;
    }

    /// <summary>The input as given (the line without its line break, or the whole document).</summary>
    public string Text { get; }
    public int[] Ids { get; }
    public int[] Starts { get; }
    public int[] Ends { get; }
    /// <summary>True for a token the post-processor added (no characters of the input behind it).</summary>
    public bool[] Added { get; }
    /// <summary>Each token's string in the tokenizer's own vocabulary (e.g. "Ġworld", "##ing", "[CLS]").</summary>
    public string[] Pieces { get; }
    public int Count => Ids.Length;

    /// <summary>
    /// The text a reader sees for token <paramref name="i"/>: its span of the input, or for an added special token its
    /// own string (it has no characters of the input).
    /// </summary>
    public string TokenText(int i) => Added[i] ? Pieces[i] : CodePoints.Slice(Text, Starts[i], Ends[i]);
}

/// <summary>Code-point indexing of .NET (UTF-16) strings, as Hugging Face's offsets count characters.</summary>
public static class CodePoints
{
    /// <summary>Code point index of every UTF-16 index of <paramref name="text"/>, plus one entry for its end.</summary>
    public static int[] IndexOfChars(string text)
    {
        var index = new int[text.Length + 1];
        int cp = 0;
        for (int i = 0; i < text.Length; i++)
        {
            index[i] = cp;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) index[++i] = cp;
            cp++;
        }
        index[text.Length] = cp;
        return index;
    }

    public static int Count(string text) => IndexOfChars(text)[text.Length];

    /// <summary>The characters of code points [start, end) of <paramref name="text"/>.</summary>
    public static string Slice(string text, int start, int end)
    {
        int cp = 0, from = text.Length, i = 0;
        for (; i < text.Length; i++)
        {
            if (cp == start) from = i;
            if (cp == end) break;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) i++;
            cp++;
        }
        if (cp == start && from == text.Length) from = i;
        return from >= i ? "" : text[from..i];
    }
}

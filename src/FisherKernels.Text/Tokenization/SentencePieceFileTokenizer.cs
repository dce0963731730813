using Microsoft.ML.Tokenizers;

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// A SentencePiece model file (tokenizer.model: LLaMA-2, Mistral) through Microsoft.ML.Tokenizers' SentencePieceTokenizer.
/// Spans: the library reports offsets in its normalized text (the dummy prefix "▁" added, spaces as "▁"), mapped back
/// to the input here.
/// </summary>
internal sealed class SentencePieceFileTokenizer : TextTokenizer
{
    private readonly SentencePieceTokenizer tokenizer;
    private readonly string path;
    private readonly bool addBos, addEos;

    public SentencePieceFileTokenizer(string path, bool addBos, bool addEos)
    {
        this.path = path;
        this.addBos = addBos;
        this.addEos = addEos;
        try
        {
            using var stream = File.OpenRead(path);
            tokenizer = SentencePieceTokenizer.Create(stream, addBos, addEos);
        }
        catch (Exception e) when (e is not FisherKernelsException and not IOException and not UnauthorizedAccessException)
        {
            throw FisherKernelsException.Unsupported($"'{path}': not a SentencePiece model the tokenizer library can read ({e.Message})");
        }
        if (tokenizer.Normalizer is SentencePieceNormalizer { RemoveExtraWhiteSpaces: true })
            throw FisherKernelsException.Unsupported($"'{path}': SentencePiece models that collapse whitespace (remove_extra_whitespaces) are not supported: their tokens cannot be mapped to spans of the input");
        VocabularySize = tokenizer.Vocabulary.Values.Max() + 1;
    }

    public override string Description => $"SentencePiece ({Path.GetFileName(path)})";
    public override int VocabularySize { get; }

    public override int? TokenId(string token) => tokenizer.Vocabulary.TryGetValue(token, out int id) ? id : null;

    public override TokenizedText Encode(string text, bool addSpecialTokens = true)
    {
        var tokens = tokenizer.EncodeToTokens(text, out string? normalized, addSpecialTokens && addBos, addSpecialTokens && addEos);
        var aligned = Normalized(text);
        if (normalized is not null && normalized != aligned.Text)
            throw FisherKernelsException.Unsupported($"'{path}': the SentencePiece normalization of the text is not one the spans can follow (only the dummy prefix and spaces as '▁' are)");
        int n = tokens.Count;
        var ids = new int[n];
        var starts = new int[n];
        var ends = new int[n];
        var added = new bool[n];
        var pieces = new string[n];
        for (int i = 0; i < n; i++)
        {
            var t = tokens[i];
            ids[i] = t.Id;
            pieces[i] = t.Value;
            bool special = addSpecialTokens && ((addBos && i == 0 && t.Id == tokenizer.BeginningOfSentenceId) || (addEos && i == n - 1 && t.Id == tokenizer.EndOfSentenceId));
            added[i] = special;
            if (special) continue;
            int from = t.Offset.Start.GetOffset(aligned.Length), to = t.Offset.End.GetOffset(aligned.Length);
            // Byte-fallback tokens after a character's first byte come with an empty range at that character: every byte
            // token spans the character its byte belongs to, as Hugging Face's offsets do.
            if (to == from && from < aligned.Length) to = from + (char.IsHighSurrogate(aligned.Text[from]) ? 2 : 1);
            (starts[i], ends[i]) = aligned.Span(from, to);
        }
        return new TokenizedText(text, ids, starts, ends, added, pieces);
    }

    /// <summary>The library's normalized text, aligned: the dummy prefix "▁" (no input character) and each space as "▁".</summary>
    private AlignedText Normalized(string text)
    {
        var b = new AlignedText.Builder();
        if (tokenizer.AddDummyPrefix && text.Length > 0) b.Append("▁", 0, 0);
        var input = AlignedText.Of(text);
        b.Append(tokenizer.EscapeWhiteSpaces ? input.Map((s, i) => (1, s[i] == ' ' ? "▁" : s[i].ToString())) : input);
        return b.Build();
    }

    public override string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = false) => tokenizer.Decode(ids, !skipSpecialTokens);
}

namespace FisherKernels.Text.Tokenization;

/// <summary>
/// Text to token ids with character spans, and ids back to text: the tokenizer of a model folder (SPEC §1). Built by
/// <see cref="TokenizerLoader"/> from tokenizer.json, vocab.json + merges.txt, tokenizer.model or vocab.txt, or the
/// default model's raw bytes (<see cref="ByteTokenizer"/>).
/// </summary>
public abstract class TextTokenizer
{
    /// <summary>What kind of tokenizer, from which file (for messages).</summary>
    public abstract string Description { get; }

    /// <summary>One more than the largest id the tokenizer can produce.</summary>
    public abstract int VocabularySize { get; }

    /// <summary>
    /// Tokenizes <paramref name="text"/> exactly as the tokenizer defines, including the special tokens its post-processor
    /// adds (BOS, [CLS]/[SEP]) when <paramref name="addSpecialTokens"/>.
    /// </summary>
    public abstract TokenizedText Encode(string text, bool addSpecialTokens = true);

    /// <summary>The text of <paramref name="ids"/> (special tokens left out when <paramref name="skipSpecialTokens"/>).</summary>
    public abstract string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = false);

    /// <summary>The id of a token string (a special token such as "&lt;/s&gt;"), if the tokenizer has it.</summary>
    public abstract int? TokenId(string token);

    /// <summary>
    /// The text each id of <paramref name="ids"/> adds when decoded after the ones before it (so that bytes of one character
    /// split over tokens come out once, with the token that completes it).
    /// </summary>
    public string[] IncrementalText(IReadOnlyList<int> ids, IReadOnlyList<int>? before = null)
    {
        var prefix = new List<int>(before ?? []);
        string previous = Decode(prefix);
        var result = new string[ids.Count];
        for (int i = 0; i < ids.Count; i++)
        {
            prefix.Add(ids[i]);
            string now = Decode(prefix);
            // A character still incomplete decodes as U+FFFD at the end; it is reported with the token that completes it.
            string stable = now.EndsWith('\uFFFD') && i + 1 < ids.Count ? now.TrimEnd('\uFFFD') : now;
            result[i] = stable.StartsWith(previous, StringComparison.Ordinal) ? stable[previous.Length..] : Decode([ids[i]]);
            previous = stable;
        }
        return result;
    }
}

/// <summary>The default model's tokenizer: each UTF-8 byte is a token (ids 0..255); a byte spans the character it is part of.</summary>
public sealed class ByteTokenizer : TextTokenizer
{
    public override string Description => "raw UTF-8 bytes";
    public override int VocabularySize => 256;

    public override TokenizedText Encode(string text, bool addSpecialTokens = true)
    {
        var charOfByte = TokenModel.CharOfByte(text);
        var cp = CodePoints.IndexOfChars(text);
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        int n = bytes.Length;
        var ids = new int[n];
        var starts = new int[n];
        var ends = new int[n];
        var pieces = new string[n];
        for (int i = 0; i < n; i++)
        {
            ids[i] = bytes[i];
            starts[i] = cp[charOfByte[i]];
            ends[i] = starts[i] + 1;
            pieces[i] = ByteLevelSymbols.Of(bytes[i]).ToString();
        }
        return new TokenizedText(text, ids, starts, ends, new bool[n], pieces);
    }

    public override string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = false)
    {
        var bytes = new byte[ids.Count];
        for (int i = 0; i < ids.Count; i++)
            bytes[i] = ids[i] is >= 0 and < 256 ? (byte)ids[i] : throw FisherKernelsException.Argument($"token id {ids[i]} is not a byte (0..255)");
        return System.Text.Encoding.UTF8.GetString(bytes);
    }

    public override int? TokenId(string token) => null;
}

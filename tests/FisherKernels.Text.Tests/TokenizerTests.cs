using System.Text;
using System.Text.Json;
using FisherKernels.Text.Tokenization;
using Microsoft.ML.Tokenizers;

namespace FisherKernels.Tests;

public class TokenizerTests
{
    static readonly Lazy<TextTokenizer> Gpt2Json = new(() => TokenizerLoader.FromTokenizerJson(Path.Combine(Gpt2Reference.Directory, "tokenizer.json")));
    static readonly Lazy<TextTokenizer> Gpt2Files = new(() => TokenizerLoader.Load(Path.Combine(Gpt2Reference.Directory, "vocab.json")));
    static readonly Lazy<TiktokenTokenizer> Tiktoken = new(() => TiktokenTokenizer.CreateForModel("gpt2"));

    /// <summary>Texts with Unicode, whitespace runs, tabs, line breaks, contractions, digits and a special token.</summary>
    public static readonly string[] Texts =
    [
        "Hello world", "Hello, world!", " leading space", "trailing space ", "two  spaces   three", "tab\there\t\tand\t",
        "line\nbreak\n\n\npara", "\r\nwindows\r\n", "héllo wörld naïve café", "日本語のテキスト", "emoji 🙂🙃 and 👩‍👩‍👧", "I'm sure it's ok, don't you've",
        "numbers 1234567 and 3.14159", "<|endoftext|>after", "before<|endoftext|> after", "   ", "\t", "a", "Ünïcödé ∑ ∫ ∞ ≠ ≤", "x = [1, 2]; // code {}",
    ];

    [Fact]
    public void Gpt2IdsAreThoseOfGpt2Itself()
    {
        // Ids of GPT-2's vocabulary known from GPT-2 itself (e.g. its tokenizer's documentation and the tiktoken examples).
        foreach (var tokenizer in new[] { Gpt2Json.Value, Gpt2Files.Value })
        {
            Assert.Equal([15496, 995], tokenizer.Encode("Hello world").Ids);
            Assert.Equal([15496, 11, 995, 0], tokenizer.Encode("Hello, world!").Ids);
            Assert.Equal([262], tokenizer.Encode(" the").Ids);
            Assert.Equal([50256], tokenizer.Encode("<|endoftext|>").Ids);
            Assert.Equal([198], tokenizer.Encode("\n").Ids);
            Assert.Equal([197], tokenizer.Encode("\t").Ids);
            Assert.Equal([220], tokenizer.Encode(" ").Ids);
            Assert.Equal(50257, tokenizer.VocabularySize);
        }
    }

    [Fact]
    public void Gpt2TokenizerJsonMatchesTheLibrarysTiktokenTokenizer()
    {
        foreach (string text in Texts)
        {
            var expected = Tiktoken.Value.EncodeToIds(text);
            Assert.Equal(expected, Gpt2Json.Value.Encode(text).Ids);
            Assert.Equal(expected, Gpt2Files.Value.Encode(text).Ids);
        }
    }

    [Fact]
    public void Gpt2RoundTripsAndSpansSliceTheInput()
    {
        var tokenizer = Gpt2Json.Value;
        foreach (string text in Texts)
        {
            var encoded = tokenizer.Encode(text);
            Assert.Equal(text, tokenizer.Decode(encoded.Ids));
            int cps = CodePoints.Count(text);
            for (int i = 0; i < encoded.Count; i++)
            {
                Assert.InRange(encoded.Starts[i], 0, encoded.Ends[i]);
                Assert.InRange(encoded.Ends[i], 0, cps);
                // A token that is whole characters slices back to its own text; a token holding part of a character's
                // bytes spans that whole character.
                string own = tokenizer.Decode([encoded.Ids[i]]);
                if (!own.Contains('\uFFFD')) Assert.Equal(own, encoded.TokenText(i));
                else Assert.True(encoded.Ends[i] - encoded.Starts[i] >= 1);
                if (i > 0) Assert.True(encoded.Starts[i] >= encoded.Starts[i - 1]);
            }
            // Together the spans cover the input, in order.
            if (encoded.Count > 0) Assert.Equal((0, cps), (encoded.Starts[0], encoded.Ends[^1]));
        }
    }

    [Fact]
    public void SpansCountCodePointsAsHuggingFaceOffsets()
    {
        // "🙂" is two UTF-16 chars but one code point: the token after it starts at code point 3, not 4.
        var encoded = Gpt2Json.Value.Encode("a 🙂 b");
        Assert.Equal([(0, 1), (1, 3), (3, 5)], Enumerable.Range(0, encoded.Count).Select(i => (encoded.Starts[i], encoded.Ends[i])));
        Assert.Equal(["a", " 🙂", " b"], Enumerable.Range(0, encoded.Count).Select(encoded.TokenText));
    }

    static string WriteWordPieceVocab(string dir)
    {
        string[] tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", ".", ",", "!", "?", "'", "s",
                           "hello", "world", "un", "##believ", "##able", "caf", "##e", "na", "##ive", "日", "本", "zu", "##rich", "a", "##b", "##c",
                           "run", "##ning", "##s", "it", "don", "t", "1", "2", "##3", "x", "=", "(", ")"];
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "vocab.txt");
        File.WriteAllLines(path, tokens);
        return path;
    }

    public static readonly string[] WordPieceTexts =
    [
        "The cat sat on the mat.", "Hello, World!", "unbelievable", "Café naïve", "日本", "Zürich's cats", "running runs",
        "it's, don't", "unknownword here", "  spaced  out lines  ", "abc abcc",
    ];

    [Fact]
    public void WordPieceTokenizerJsonMatchesTheLibrarysBertTokenizer()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"fk-wp-{Guid.NewGuid():N}");
        string vocab = WriteWordPieceVocab(dir);
        try
        {
            // BERT uncased as Hugging Face defines it: lowercase and strip accents.
            var reference = BertTokenizer.Create(vocab, new BertOptions { LowerCaseBeforeTokenization = true, RemoveNonSpacingMarks = true });
            // A tokenizer.json as Hugging Face writes BERT's (BertNormalizer, BertPreTokenizer, WordPiece, TemplateProcessing).
            var ids = File.ReadAllLines(vocab).Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i);
            var json = new
            {
                added_tokens = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Select(t => new { id = ids[t], content = t, single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }),
                normalizer = new { type = "BertNormalizer", clean_text = true, handle_chinese_chars = true, strip_accents = (bool?)null, lowercase = true },
                pre_tokenizer = new { type = "BertPreTokenizer" },
                post_processor = new
                {
                    type = "TemplateProcessing",
                    single = new object[] { new { SpecialToken = new { id = "[CLS]", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } }, new { SpecialToken = new { id = "[SEP]", type_id = 0 } } },
                    special_tokens = new Dictionary<string, object> { ["[CLS]"] = new { id = "[CLS]", ids = new[] { 2 }, tokens = new[] { "[CLS]" } }, ["[SEP]"] = new { id = "[SEP]", ids = new[] { 3 }, tokens = new[] { "[SEP]" } } },
                },
                decoder = new { type = "WordPiece", prefix = "##", cleanup = true },
                model = new { type = "WordPiece", unk_token = "[UNK]", continuing_subword_prefix = "##", max_input_chars_per_word = 100, vocab = ids },
            };
            string jsonPath = Path.Combine(dir, "tokenizer.json");
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(json));
            var fromJson = TokenizerLoader.FromTokenizerJson(jsonPath);
            var fromVocab = TokenizerLoader.Load(vocab);
            foreach (string text in WordPieceTexts)
            {
                var expected = reference.EncodeToIds(text);
                Assert.Equal(expected, fromJson.Encode(text).Ids);
                Assert.Equal(expected, fromVocab.Encode(text).Ids);
                Assert.Equal(expected.Skip(1).SkipLast(1), fromJson.Encode(text, addSpecialTokens: false).Ids);
            }
            // "=" is punctuation to Hugging Face's BertPreTokenizer (every ASCII symbol is), which the library's BertTokenizer
            // drops instead; this follows Hugging Face.
            Assert.Equal([2, 41, 42, 43, 1, 44, 3], fromJson.Encode("x = (123)").Ids);
            // Tabs and line breaks are whitespace to Hugging Face's BertNormalizer (the library's BertTokenizer keeps such a run as one word).
            Assert.Equal([2, 1, 1, 1, 3], fromJson.Encode("  spaced\tout\nlines  ").Ids);
            // Spans point into the original (cased, accented) input; [CLS] and [SEP] span nothing.
            var encoded = fromJson.Encode("Café naïve!");
            Assert.Equal(["[CLS]", "Caf", "é", "na", "ïve", "!", "[SEP]"], Enumerable.Range(0, encoded.Count).Select(encoded.TokenText));
            Assert.Equal([(0, 0), (0, 3), (3, 4), (5, 7), (7, 10), (10, 11), (0, 0)], Enumerable.Range(0, encoded.Count).Select(i => (encoded.Starts[i], encoded.Ends[i])));
            Assert.Equal("cafe naive!", fromJson.Decode(encoded.Ids, skipSpecialTokens: true));
        }
        finally { Directory.Delete(dir, true); }
    }

    sealed record SentencePieceCase(string text, int[] ids, string[] pieces, int[] starts, int[] ends, string decoded);

    [Fact]
    public void SentencePieceModelMatchesSentencePieceItself()
    {
        // tiny_sp.model and its expected ids and spans come from SentencePiece (tests/fixtures/text/make_sentencepiece.py).
        string fixtures = Path.Combine(AppContext.BaseDirectory, "fixtures", "text");
        var cases = JsonSerializer.Deserialize<SentencePieceCase[]>(File.ReadAllText(Path.Combine(fixtures, "tiny_sp.expected.json")))!;
        var tokenizer = TokenizerLoader.Load(Path.Combine(fixtures, "tiny_sp.model"));
        Assert.Equal(400, tokenizer.VocabularySize);
        foreach (var c in cases)
        {
            var plain = tokenizer.Encode(c.text, addSpecialTokens: false);
            Assert.Equal(c.ids, plain.Ids);
            // SentencePiece's own offsets are byte offsets that go astray after the byte tokens of a multi-byte character;
            // where there are none they are the reference, and every byte token must span the character holding its byte.
            bool multiByteFallback = c.pieces.Any(p => p.StartsWith("<0x", StringComparison.Ordinal) && Convert.ToByte(p[3..5], 16) >= 0x80);
            if (!multiByteFallback)
            {
                Assert.Equal(c.starts, plain.Starts);
                Assert.Equal(c.ends, plain.Ends);
            }
            for (int i = 0; i < plain.Count; i++)
            {
                string slice = plain.TokenText(i);
                if (c.pieces[i].StartsWith("<0x", StringComparison.Ordinal))
                {
                    Assert.Equal(1, CodePoints.Count(slice));
                    Assert.Contains(Convert.ToByte(c.pieces[i][3..5], 16), Encoding.UTF8.GetBytes(slice));
                }
                else Assert.Equal(c.pieces[i].TrimStart('▁'), slice.Replace(' ', '▁').TrimStart('▁'));
            }
            Assert.Equal(c.decoded, tokenizer.Decode(plain.Ids));
            // LLaMA's default: BOS (id 1) once at the start, spanning nothing.
            var withBos = tokenizer.Encode(c.text);
            Assert.Equal(c.ids.Prepend(1), withBos.Ids);
            Assert.True(withBos.Added[0]);
        }
    }

    [Fact]
    public void ByteTokenizerIdsAreTheUtf8Bytes()
    {
        var tokenizer = new ByteTokenizer();
        string text = "añ🙂";
        var encoded = tokenizer.Encode(text);
        Assert.Equal(Encoding.UTF8.GetBytes(text).Select(b => (int)b), encoded.Ids);
        Assert.Equal([0, 1, 1, 2, 2, 2, 2], encoded.Starts);
        Assert.Equal([1, 2, 2, 3, 3, 3, 3], encoded.Ends);
        Assert.Equal(text, tokenizer.Decode(encoded.Ids));
        Assert.Equal(["a", "", "ñ", "", "", "", "🙂"], tokenizer.IncrementalText(encoded.Ids));
    }

    [Theory]
    [InlineData("{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}}", "model type 'Unigram' is not supported")]
    [InlineData("{\"normalizer\":{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"},\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0}}}", "normalizer type 'Precompiled' is not supported")]
    [InlineData("{\"pre_tokenizer\":{\"type\":\"UnicodeScripts\"},\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0}}}", "pre-tokenizer type 'UnicodeScripts' is not supported")]
    [InlineData("{\"vocab\":{}}", "not a Hugging Face tokenizer.json")]
    [InlineData("{\"model\":", "not valid JSON")]
    public void UnsupportedTokenizerPartsAreRefusedByName(string json, string message)
    {
        string path = Path.Combine(Path.GetTempPath(), $"fk-tok-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        try
        {
            var e = Assert.Throws<FisherKernelsException>(() => TokenizerLoader.Load(path));
            Assert.Contains(message, e.Message);
            Assert.Contains(path, e.Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void UnsupportedTokenizerFileIsRefused()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fk-tok-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, [1, 2, 3]);
        try { Assert.Contains("unsupported tokenizer file", Assert.Throws<FisherKernelsException>(() => TokenizerLoader.Load(path)).Message); }
        finally { File.Delete(path); }
    }
}

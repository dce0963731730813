using System.Text.Json;
using System.Text.RegularExpressions;

namespace FisherKernels.Onnx.Graph;

/// <summary>
/// The layer selection of SPEC §2: <c>--layers RE</c> keeps the layers whose id the .NET regular expression matches
/// (anywhere in the id, as <see cref="Regex.IsMatch(string)"/>; anchor it with ^…$ for a whole id), <c>--exclude-layers RE</c>
/// drops those it matches, <c>--last-layer</c> keeps only the output layer. A curvature records its selection
/// (<see cref="ToMetadata"/>, metadata <c>layers</c>) so that a later use with another selection is refused.
/// </summary>
public sealed record LayerSelection(string? Include = null, string? Exclude = null, bool LastLayer = false)
{
    static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(1);

    public static LayerSelection All { get; } = new();

    public bool IsAll => Include is null && Exclude is null && !LastLayer;

    /// <summary>
    /// The selected layers, in model order. <paramref name="outputLayer"/> is the id of the layer giving the logits (null with
    /// <paramref name="noOutputLayerReason"/> when there is none). Each problem is one line naming the option: an invalid
    /// pattern, a pattern matching no layer, a selection that leaves none.
    /// </summary>
    public IReadOnlyList<Layer> Apply(IReadOnlyList<Layer> layers, string? outputLayer, string noOutputLayerReason = "")
    {
        ArgumentNullException.ThrowIfNull(layers);
        IEnumerable<Layer> kept = layers;
        if (LastLayer)
        {
            if (outputLayer is null) throw FisherKernelsException.Argument($"--last-layer: the model has no output layer ({noOutputLayerReason})");
            kept = kept.Where(l => l.Id == outputLayer);
        }
        if (Include is not null)
        {
            Regex include = Compile("--layers", Include);
            kept = kept.Where(l => include.IsMatch(l.Id)).ToList();
            if (!kept.Any()) throw FisherKernelsException.Argument($"--layers '{Include}' matches no layer{(LastLayer ? " kept by --last-layer" : "")} (the model's layers: {Sample(layers)})");
        }
        if (Exclude is not null)
        {
            Regex exclude = Compile("--exclude-layers", Exclude);
            if (!layers.Any(l => exclude.IsMatch(l.Id))) throw FisherKernelsException.Argument($"--exclude-layers '{Exclude}' matches no layer (the model's layers: {Sample(layers)})");
            kept = kept.Where(l => !exclude.IsMatch(l.Id));
        }
        var result = kept.ToList();
        if (result.Count == 0) throw FisherKernelsException.Argument($"the layer selection ({Describe()}) leaves no layer");
        return result;
    }

    /// <summary>The options as written on the command line, for messages.</summary>
    public string Describe()
    {
        var parts = new List<string>();
        if (Include is not null) parts.Add($"--layers '{Include}'");
        if (Exclude is not null) parts.Add($"--exclude-layers '{Exclude}'");
        if (LastLayer) parts.Add("--last-layer");
        return parts.Count == 0 ? "every layer" : string.Join(" ", parts);
    }

    /// <summary>The curvature metadata <c>layers</c>: <c>{"layers": RE|null, "exclude_layers": RE|null, "last_layer": bool}</c>.</summary>
    public string ToMetadata() => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["layers"] = Include,
        ["exclude_layers"] = Exclude,
        ["last_layer"] = LastLayer,
    });

    /// <summary>The selection stored by <see cref="ToMetadata"/>; an error naming <paramref name="source"/> when it is not one.</summary>
    public static LayerSelection FromMetadata(string text, string source)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(text);
            JsonElement root = doc.RootElement;
            string? Text(string name) => root.TryGetProperty(name, out JsonElement e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;
            bool last = root.TryGetProperty("last_layer", out JsonElement l) && l.ValueKind == JsonValueKind.True;
            return new LayerSelection(Text("layers"), Text("exclude_layers"), last);
        }
        catch (JsonException e)
        {
            throw FisherKernelsException.Format($"{source}: metadata 'layers' is not a layer selection ({e.Message})");
        }
    }

    /// <summary>
    /// Checks a use's selection against the curvature's: a use that states none takes the curvature's; one that states
    /// another is refused in one line saying what to change.
    /// </summary>
    public void EnsureSameAs(LayerSelection stored, string curvature)
    {
        if (IsAll || this == stored) return;
        throw FisherKernelsException.Argument($"{curvature} was fitted with {stored.Describe()}, not {Describe()}: give the same selection, or none to use the curvature's");
    }

    static Regex Compile(string option, string pattern)
    {
        try { return new Regex(pattern, RegexOptions.CultureInvariant, MatchTimeout); }
        catch (ArgumentException e) { throw FisherKernelsException.Argument($"{option} '{pattern}' is not a valid .NET regular expression: {e.Message}"); }
    }

    static string Sample(IReadOnlyList<Layer> layers) =>
        string.Join(", ", layers.Take(6).Select(l => l.Id)) + (layers.Count > 6 ? $", … ({layers.Count} in all)" : "");
}

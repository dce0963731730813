using System.Globalization;
using FisherKernels.IO;

namespace FisherKernels.Curvature;

/// <summary>The expected shape of one layer, as the model defines it (SPEC §2); used to check a curvature against a model.</summary>
public readonly record struct LayerShape(string Layer, int InFeatures, int OutFeatures, bool HasBias);

/// <summary>
/// The prior precision τ stored in a curvature's metadata (<c>prior_precision</c>, SPEC §5): one number, or (auto-layer) a
/// JSON object from layer id to τ. <see cref="Shared"/> is the τ of layers the object does not name and the one a score
/// reports: the number itself, or the geometric mean of the object's values.
/// </summary>
public sealed record StoredPriorPrecision(double Shared, IReadOnlyDictionary<string, double>? PerLayer = null)
{
    /// <summary>One τ per layer; <see cref="Shared"/> their geometric mean (what a score reports).</summary>
    public static StoredPriorPrecision ByLayer(IReadOnlyDictionary<string, double> perLayer) =>
        new(Math.Exp(perLayer.Values.Average(Math.Log)), perLayer);

    public string ToMetadata()
    {
        if (PerLayer is null) return Shared.ToString("R", CultureInfo.InvariantCulture);
        return System.Text.Json.JsonSerializer.Serialize(PerLayer.ToDictionary(p => p.Key, p => p.Value));
    }

    /// <summary>Reads the metadata value; an error naming <paramref name="path"/> when it is neither a positive number nor an object of them.</summary>
    public static StoredPriorPrecision Parse(string text, string path)
    {
        FisherKernelsException Bad() => FisherKernelsException.Format($"{path}: metadata 'prior_precision' must be a positive number or a JSON object of them by layer, found '{text}'");
        static bool Positive(double v) => double.IsFinite(v) && v > 0;
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double tau)) return Positive(tau) ? new StoredPriorPrecision(tau) : throw Bad();
        Dictionary<string, double>? perLayer;
        try { perLayer = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, double>>(text); }
        catch (System.Text.Json.JsonException) { throw Bad(); }
        if (perLayer is null || perLayer.Count == 0 || !perLayer.Values.All(Positive)) throw Bad();
        return ByLayer(perLayer);
    }
}

/// <summary>
/// The K-FAC curvature of a model: one <see cref="KroneckerBlock"/> per layer, in a stable order, and
/// where it came from. Stored as safetensors (SPEC §5):
/// <list type="bullet">
/// <item>tensors <c>&lt;layer&gt;.A</c> and <c>&lt;layer&gt;.G</c>, F32, in layer order;</item>
/// <item><c>__metadata__</c>: <c>format</c> = <c>fisherkernels/1</c>, <c>fisher</c> (sampled | empirical | exact),
/// <c>positions</c> (M: the largest per-layer count, written with round-trip precision), <c>model_sha256</c>
/// (hex SHA-256 of the ONNX file), <c>created_by</c>; per layer <c>&lt;layer&gt;.has_bias</c> = <c>true</c> | <c>false</c>
/// (required: it says whether A's last row/column is the bias coordinate) and <c>&lt;layer&gt;.positions</c>
/// only where that layer's count differs from <c>positions</c>; optionally <c>calibration_beta</c>, the β of the
/// calibrated confidence <c>1/(1+β·u)</c> fitted by <c>calibrate</c>. Other metadata keys are ignored on load.</item>
/// </list>
/// </summary>
public sealed class KfacCurvature
{
    public const string FormatName = "fisherkernels/1";
    public static readonly IReadOnlyList<string> FisherTypes = Enum.GetValues<FisherType>().Select(f => f.Name()).ToArray();

    readonly Dictionary<string, KroneckerBlock> byLayer;

    public KfacCurvature(IEnumerable<KroneckerBlock> layers, string fisher, string modelSha256, string createdBy)
    {
        ArgumentNullException.ThrowIfNull(layers);
        Layers = layers.ToArray();
        byLayer = new Dictionary<string, KroneckerBlock>(StringComparer.Ordinal);
        foreach (KroneckerBlock b in Layers)
            if (!byLayer.TryAdd(b.Layer, b)) throw FisherKernelsException.Argument($"curvature: layer '{b.Layer}' is given twice");
        if (Layers.Count == 0) throw FisherKernelsException.Argument("curvature: needs at least one layer");
        if (!FisherTypes.Contains(fisher)) throw FisherKernelsException.Argument($"curvature: fisher type '{fisher}' is not one of {string.Join(", ", FisherTypes)}");
        if (string.IsNullOrWhiteSpace(modelSha256)) throw FisherKernelsException.Argument("curvature: model_sha256 is empty");
        Fisher = fisher;
        ModelSha256 = modelSha256;
        CreatedBy = createdBy ?? "";
    }

    /// <summary>The blocks in a stable order (the order they were given or stored in).</summary>
    public IReadOnlyList<KroneckerBlock> Layers { get; }

    public string Fisher { get; }
    public string ModelSha256 { get; }
    public string CreatedBy { get; }

    /// <summary>The file this curvature was loaded from, or null; names it in error messages.</summary>
    public string? Source { get; private init; }

    /// <summary>β of the calibrated confidence <c>1/(1+β·u)</c> (metadata <c>calibration_beta</c>), or null when not calibrated.</summary>
    public double? CalibrationBeta { get; private init; }

    /// <summary>
    /// The layer selection the curvature was fitted with (metadata <c>layers</c>, SPEC §5), as the Onnx layer's
    /// <c>LayerSelection.ToMetadata</c> writes it; null when the file states none (every layer).
    /// </summary>
    public string? LayerSelection { get; init; }

    /// <summary>τ of the posterior this curvature was calibrated with (metadata <c>prior_precision</c>), or null.</summary>
    public StoredPriorPrecision? PriorPrecision { get; private init; }

    /// <summary>This curvature with <paramref name="beta"/> as its calibration (same blocks, no copy).</summary>
    public KfacCurvature WithCalibrationBeta(double beta)
    {
        if (!double.IsFinite(beta) || beta < 0) throw FisherKernelsException.Argument($"calibration β must be finite and non-negative, got {beta}");
        return new KfacCurvature(Layers, Fisher, ModelSha256, CreatedBy) { Source = Source, CalibrationBeta = beta, LayerSelection = LayerSelection, PriorPrecision = PriorPrecision };
    }

    /// <summary>This curvature with <paramref name="prior"/> stored as its prior precision (same blocks, no copy).</summary>
    public KfacCurvature WithPriorPrecision(StoredPriorPrecision prior) =>
        new(Layers, Fisher, ModelSha256, CreatedBy) { Source = Source, CalibrationBeta = CalibrationBeta, LayerSelection = LayerSelection, PriorPrecision = prior };

    /// <summary>This curvature recording <paramref name="selection"/> as its layer selection (same blocks, no copy).</summary>
    public KfacCurvature WithLayerSelection(string? selection) =>
        new(Layers, Fisher, ModelSha256, CreatedBy) { Source = Source, CalibrationBeta = CalibrationBeta, LayerSelection = selection, PriorPrecision = PriorPrecision };

    /// <summary>Whether any layer carries EK-FAC's E (SPEC §3): scores then report the method <c>ekfac</c>.</summary>
    public bool IsEkfac => Layers.Any(b => b.E is not null);

    /// <summary>This curvature with <paramref name="layers"/> in place of its blocks (same layers, same metadata).</summary>
    public KfacCurvature WithLayers(IEnumerable<KroneckerBlock> layers) =>
        new(layers, Fisher, ModelSha256, CreatedBy) { Source = Source, CalibrationBeta = CalibrationBeta, LayerSelection = LayerSelection, PriorPrecision = PriorPrecision };

    /// <summary>M: the largest per-layer position count.</summary>
    public double Positions => Layers.Max(b => b.Positions);

    /// <summary>The block of <paramref name="layer"/>; an error naming the layer and the file if there is none.</summary>
    public KroneckerBlock this[string layer] =>
        byLayer.TryGetValue(layer, out KroneckerBlock? b) ? b
        : throw FisherKernelsException.Argument($"{Describe()} has no layer '{layer}'");

    public bool TryGetLayer(string layer, out KroneckerBlock block) => byLayer.TryGetValue(layer, out block!);

    /// <summary>Whether the curvature has a block for <paramref name="layer"/> (a layer-selected fit has only some).</summary>
    public bool Contains(string layer) => byLayer.ContainsKey(layer);

    /// <summary>Saves atomically (temporary file renamed into place).</summary>
    public void Save(string path)
    {
        double positions = Positions;
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = FormatName,
            ["fisher"] = Fisher,
            ["positions"] = FormatNumber(positions),
            ["model_sha256"] = ModelSha256,
            ["created_by"] = CreatedBy,
        };
        if (CalibrationBeta is double beta) metadata["calibration_beta"] = FormatNumber(beta);
        if (PriorPrecision is not null) metadata["prior_precision"] = PriorPrecision.ToMetadata();
        if (LayerSelection is not null) metadata["layers"] = LayerSelection;
        var tensors = new List<KeyValuePair<string, NdArray>>(2 * Layers.Count);
        foreach (KroneckerBlock b in Layers)
        {
            metadata[b.Layer + ".has_bias"] = b.HasBias ? "true" : "false";
            if (b.Positions != positions) metadata[b.Layer + ".positions"] = FormatNumber(b.Positions);
            AddSide(tensors, metadata, b.Layer + ".A", b.ASide);
            AddSide(tensors, metadata, b.Layer + ".G", b.GSide);
            if (b.E is not null) tensors.Add(new(b.Layer + ".E", b.E));
        }
        SafetensorsFile.Write(path, tensors, metadata);
    }

    /// <summary>A dense side as <c>&lt;key&gt;</c>; a low-rank one as <c>&lt;key&gt;.Y</c>, <c>&lt;key&gt;.diag</c> and the metadata <c>&lt;key&gt;.sketch_seed</c>, <c>sketch_generator</c> (SPEC §5).</summary>
    internal static void AddSide(List<KeyValuePair<string, NdArray>> tensors, Dictionary<string, string> metadata, string key, FactorSide side)
    {
        if (side.Sketch is not FactorSketch sketch)
        {
            tensors.Add(new(key, side.Matrix!));
            return;
        }
        tensors.Add(new(key + ".Y", sketch.Y));
        tensors.Add(new(key + ".diag", sketch.Diagonal));
        metadata[key + ".sketch_seed"] = sketch.Seed.ToString(CultureInfo.InvariantCulture);
        metadata["sketch_generator"] = FactorSketch.Generator;
    }

    /// <summary>The side stored under <paramref name="key"/> (dense, or the sketch keys of <see cref="AddSide"/>); null when neither is there.</summary>
    internal static FactorSide? ReadSide(SafetensorsFile file, string key, string path)
    {
        var meta = file.Metadata;
        if (file.Tensors.ContainsKey(key)) return FactorSide.Dense(file.GetFloat32(key));
        if (!file.Tensors.ContainsKey(key + ".Y")) return null;
        if (!file.Tensors.ContainsKey(key + ".diag")) throw FisherKernelsException.Format($"{path}: '{key}.Y' has no '{key}.diag' beside it");
        if (!meta.TryGetValue("sketch_generator", out string? generator) || generator != FactorSketch.Generator)
            throw FisherKernelsException.Unsupported($"{path}: sketch generator '{generator}' is not supported (expected '{FactorSketch.Generator}')");
        if (!meta.TryGetValue(key + ".sketch_seed", out string? seedText) || !ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out ulong seed))
            throw FisherKernelsException.Format($"{path}: metadata '{key}.sketch_seed' is missing or not an unsigned integer");
        NdArray<float> y = file.GetFloat32(key + ".Y"), d = file.GetFloat32(key + ".diag");
        if (y.Rank != 2 || d.Rank != 1 || d.Shape[0] != y.Shape[0] || y.Shape[1] < 1)
            throw FisherKernelsException.Format($"{path}: '{key}.Y' [{ShapeUtil.Format(y.Shape)}] and '{key}.diag' [{ShapeUtil.Format(d.Shape)}] must be [n, k] and [n]");
        return FactorSide.LowRank(new FactorSketch(y, d, seed));
    }

    /// <summary>The layer and side a curvature tensor belongs to (<c>&lt;layer&gt;.A</c>, <c>.A.Y</c>, <c>.A.diag</c>, likewise G; EK-FAC's <c>.E</c>), or null.</summary>
    static (string Layer, char Side)? SideOf(string name)
    {
        foreach (string suffix in (string[])[".A", ".G", ".E", ".A.Y", ".G.Y", ".A.diag", ".G.diag"])
            if (name.EndsWith(suffix, StringComparison.Ordinal) && name.Length > suffix.Length)
                return (name[..^suffix.Length], suffix[1]);
        return null;
    }

    /// <summary>Loads and validates a curvature file; every problem is an error naming the file and, where it applies, the layer.</summary>
    public static KfacCurvature Load(string path) => Load(path, modelLayers: null);

    /// <summary>
    /// Loads a curvature file for the model with <paramref name="modelLayers"/>: a layer whose <c>&lt;layer&gt;.has_bias</c>
    /// metadata is missing (files written by other tools, such as the torch goldens) takes the bias flag of the model's
    /// layer of that name, provided A's size agrees with it. A file that states has_bias for any layer (every file this
    /// project writes) must state it for all.
    /// </summary>
    public static KfacCurvature Load(string path, IReadOnlyCollection<LayerShape>? modelLayers) => Load(path, modelLayers, modelSha256: null);

    /// <summary>
    /// Loads the curvature for the model with <paramref name="modelSha256"/> and <paramref name="modelLayers"/>, refusing a file
    /// made for another model: by its model_sha256 first (before any layer is read, so a file of another model is named as
    /// such, not by its first unknown layer), then by layer names and shapes (<see cref="EnsureMatches"/>).
    /// </summary>
    /// <paramref name="selectedLayers"/>, when given, names the layers the file must hold from its recorded selection
    /// (<see cref="LayerSelection"/>, SPEC §2); without it, every one of <paramref name="modelLayers"/>.
    public static KfacCurvature LoadFor(string path, string modelSha256, IReadOnlyCollection<LayerShape> modelLayers,
                                        Func<KfacCurvature, IReadOnlyCollection<LayerShape>>? selectedLayers = null)
    {
        KfacCurvature curvature = Load(path, modelLayers, modelSha256);
        curvature.EnsureMatches(modelSha256, selectedLayers?.Invoke(curvature) ?? modelLayers);
        return curvature;
    }

    static KfacCurvature Load(string path, IReadOnlyCollection<LayerShape>? modelLayers, string? modelSha256)
    {
        SafetensorsFile file = SafetensorsFile.Read(path);
        var meta = file.Metadata;
        if (!meta.TryGetValue("format", out string? format))
            throw FisherKernelsException.Format($"{path}: not a FisherKernels curvature file (no 'format' in its metadata)");
        if (format != FormatName)
            throw FisherKernelsException.Unsupported($"{path}: curvature format '{format}' is not supported (expected '{FormatName}')");
        string fisher = Required(meta, "fisher", path);
        if (!FisherTypes.Contains(fisher))
            throw FisherKernelsException.Format($"{path}: fisher type '{fisher}' is not one of {string.Join(", ", FisherTypes)}");
        string modelSha = Required(meta, "model_sha256", path);
        if (string.IsNullOrWhiteSpace(modelSha)) throw FisherKernelsException.Format($"{path}: metadata 'model_sha256' is empty");
        if (modelSha256 is not null && !SameHash(modelSha, modelSha256)) throw DifferentModel($"curvature '{path}'", modelSha, modelSha256);
        double positions = ParsePositions(Required(meta, "positions", path), "positions", path);

        var layerNames = new List<string>();
        foreach (string name in file.Names)
        {
            if (SideOf(name) is not var (layer, side))
                throw FisherKernelsException.Format($"{path}: unexpected tensor '{name}' (curvature tensors are '<layer>.A' and '<layer>.G', or their '.Y' and '.diag' sketches)");
            if (side == 'E' && !file.Names.Any(n => n != name && SideOf(n)?.Layer == layer))
                throw FisherKernelsException.Format($"{path}: '{name}' (EK-FAC's E) has no factors '{layer}.A' and '{layer}.G' beside it");
            if (!layerNames.Contains(layer)) layerNames.Add(layer);
        }
        if (layerNames.Count == 0) throw FisherKernelsException.Format($"{path}: curvature has no layers");

        var blocks = new List<KroneckerBlock>(layerNames.Count);
        if (meta.Keys.Any(k => k.EndsWith(".has_bias", StringComparison.Ordinal))) modelLayers = null;
        foreach (string layer in layerNames)
        {
            FactorSide? aSide = ReadSide(file, layer + ".A", path), gSide = ReadSide(file, layer + ".G", path);
            if (aSide is null) throw FisherKernelsException.Format($"{path}: layer '{layer}' has G but no A");
            if (gSide is null) throw FisherKernelsException.Format($"{path}: layer '{layer}' has A but no G");
            string biasFlag = meta.TryGetValue(layer + ".has_bias", out string? flag) ? flag : InferBias(layer, aSide.Size, modelLayers, path);
            if (biasFlag is not ("true" or "false"))
                throw FisherKernelsException.Format($"{path}: metadata '{layer}.has_bias' must be 'true' or 'false', found '{biasFlag}'");
            double layerPositions = meta.TryGetValue(layer + ".positions", out string? p) ? ParsePositions(p, layer + ".positions", path) : positions;
            string? problem = KroneckerBlock.Check(layer, aSide, gSide, biasFlag == "true", layerPositions);
            NdArray<float>? e = file.Tensors.ContainsKey(layer + ".E") ? file.GetFloat32(layer + ".E") : null;
            problem ??= KroneckerBlock.CheckCorrection(layer, aSide, gSide, e);
            if (problem is not null) throw FisherKernelsException.Format($"{path}: {problem}");
            blocks.Add(new KroneckerBlock(layer, aSide, gSide, biasFlag == "true", layerPositions, e));
        }
        meta.TryGetValue("created_by", out string? createdBy);
        double? beta = null;
        if (meta.TryGetValue("calibration_beta", out string? betaText))
        {
            if (!double.TryParse(betaText, NumberStyles.Float, CultureInfo.InvariantCulture, out double b) || !double.IsFinite(b) || b < 0)
                throw FisherKernelsException.Format($"{path}: metadata 'calibration_beta' must be a non-negative number, found '{betaText}'");
            beta = b;
        }
        meta.TryGetValue("layers", out string? selection);
        StoredPriorPrecision? prior = meta.TryGetValue("prior_precision", out string? priorText) ? StoredPriorPrecision.Parse(priorText, path) : null;
        return new KfacCurvature(blocks, fisher, modelSha, createdBy ?? "") { Source = path, CalibrationBeta = beta, LayerSelection = selection, PriorPrecision = prior };
    }

    /// <summary>"true"/"false" for a layer without has_bias metadata, from the model's layer of that name.</summary>
    static string InferBias(string layer, int aDim, IReadOnlyCollection<LayerShape>? modelLayers, string path)
    {
        if (modelLayers is null) throw FisherKernelsException.Format($"{path}: metadata '{layer}.has_bias' is missing");
        foreach (LayerShape s in modelLayers)
        {
            if (s.Layer != layer) continue;
            int expected = s.InFeatures + (s.HasBias ? 1 : 0);
            if (aDim != expected)
                throw FisherKernelsException.Format($"{path}: layer '{layer}' has A of size {aDim} and no has_bias metadata; the model's layer needs [{expected}, {expected}] (in {s.InFeatures}, bias {s.HasBias})");
            return s.HasBias ? "true" : "false";
        }
        throw FisherKernelsException.Format($"{path}: metadata '{layer}.has_bias' is missing and the model has no layer '{layer}'");
    }

    /// <summary>
    /// Adds the information of two curvatures of the same model (SPEC §3): per layer, positions add and
    /// A, G become position-weighted means. The model hash, fisher type, layer set and shapes must agree;
    /// the error says which does not. The result keeps this curvature's layer order.
    /// </summary>
    public KfacCurvature Merge(KfacCurvature other, string? createdBy = null)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (!SameHash(ModelSha256, other.ModelSha256))
            throw FisherKernelsException.Argument($"cannot merge curvatures of different models: {Describe()} has model_sha256 {ModelSha256}, {other.Describe()} has {other.ModelSha256}");
        if (Fisher != other.Fisher)
            throw FisherKernelsException.Argument($"cannot merge curvatures of different fisher types: {Describe()} is {Fisher}, {other.Describe()} is {other.Fisher}");
        foreach (KroneckerBlock b in other.Layers)
            if (!byLayer.ContainsKey(b.Layer)) throw FisherKernelsException.Argument($"cannot merge: layer '{b.Layer}' is in {other.Describe()} but not in {Describe()}");
        var merged = new List<KroneckerBlock>(Layers.Count);
        foreach (KroneckerBlock b in Layers)
        {
            if (!other.TryGetLayer(b.Layer, out KroneckerBlock o))
                throw FisherKernelsException.Argument($"cannot merge: layer '{b.Layer}' is in {Describe()} but not in {other.Describe()}");
            merged.Add(b.Merge(o));
        }
        if (LayerSelection != other.LayerSelection)
            throw FisherKernelsException.Argument($"cannot merge curvatures of different layer selections: {Describe()} has {LayerSelection ?? "every layer"}, {other.Describe()} has {other.LayerSelection ?? "every layer"}");
        return new KfacCurvature(merged, Fisher, ModelSha256, createdBy ?? CreatedBy) { LayerSelection = LayerSelection };
    }

    /// <summary>This curvature with every layer's positions scaled by <paramref name="decay"/> (<see cref="KroneckerBlock.Decayed"/>); a new curvature, so it has no calibration or prior precision.</summary>
    public KfacCurvature Decayed(double decay) =>
        new(Layers.Select(b => b.Decayed(decay)), Fisher, ModelSha256, CreatedBy) { Source = Source, LayerSelection = LayerSelection };

    /// <summary>
    /// Merges <paramref name="curvatures"/> in order (SPEC §3 <c>merge</c>), the k-th first decayed by <paramref name="decays"/>[k]
    /// when given (one per curvature): <c>M = Σ λ_k M_k</c>, <c>A = Σ λ_k M_k A_k / M</c>, likewise G.
    /// </summary>
    public static KfacCurvature MergeAll(IReadOnlyList<KfacCurvature> curvatures, IReadOnlyList<double>? decays, string createdBy)
    {
        ArgumentNullException.ThrowIfNull(curvatures);
        if (curvatures.Count < 1) throw FisherKernelsException.Argument("merge: needs at least one curvature");
        if (decays is not null && decays.Count != curvatures.Count)
            throw FisherKernelsException.Argument($"merge: --decay has {decays.Count} values for {curvatures.Count} curvatures (one per curvature, in order)");
        KfacCurvature Input(int k) => decays is null ? curvatures[k] : curvatures[k].Decayed(decays[k]);
        KfacCurvature merged = Input(0);
        for (int k = 1; k < curvatures.Count; k++) merged = merged.Merge(Input(k), createdBy);
        return merged;
    }

    /// <summary>
    /// Checks that this curvature was fitted on the model with <paramref name="modelSha256"/> and has exactly
    /// the layers <paramref name="layers"/> with their shapes; the error names the hash or the layer that differs.
    /// </summary>
    public void EnsureMatches(string modelSha256, IReadOnlyCollection<LayerShape> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (!SameHash(ModelSha256, modelSha256)) throw DifferentModel(Describe(), ModelSha256, modelSha256);
        var expected = new HashSet<string>(StringComparer.Ordinal);
        foreach (LayerShape s in layers)
        {
            expected.Add(s.Layer);
            if (!byLayer.TryGetValue(s.Layer, out KroneckerBlock? b))
                throw FisherKernelsException.Argument(LayerSelection is null
                    ? $"{Describe()} has no curvature for layer '{s.Layer}' of the model"
                    : $"{Describe()} records the layer selection {LayerSelection}, which keeps layer '{s.Layer}' of the model, but has no curvature for it: fit it again");
            if (b.HasBias != s.HasBias || b.InFeatures != s.InFeatures || b.OutFeatures != s.OutFeatures)
                throw FisherKernelsException.Argument($"{Describe()}: layer '{s.Layer}' has in {b.InFeatures}, out {b.OutFeatures}, bias {b.HasBias}; the model has in {s.InFeatures}, out {s.OutFeatures}, bias {s.HasBias}");
        }
        foreach (KroneckerBlock b in Layers)
            if (!expected.Contains(b.Layer))
                throw FisherKernelsException.Argument($"{Describe()} has layer '{b.Layer}', which the model does not have");
    }

    string Describe() => Source is null ? "curvature" : $"curvature '{Source}'";

    static FisherKernelsException DifferentModel(string curvature, string fileSha256, string modelSha256) =>
        FisherKernelsException.Argument($"{curvature} was fitted on a different model (model_sha256 {fileSha256}, this model has {modelSha256})");

    static bool SameHash(string x, string y) => string.Equals(x.Trim(), y.Trim(), StringComparison.OrdinalIgnoreCase);

    static string Required(IReadOnlyDictionary<string, string> meta, string key, string path) =>
        meta.TryGetValue(key, out string? v) ? v : throw FisherKernelsException.Format($"{path}: metadata '{key}' is missing");

    static double ParsePositions(string text, string key, string path)
    {
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v) || v < 0)
            throw FisherKernelsException.Format($"{path}: metadata '{key}' must be a non-negative number, found '{text}'");
        return v;
    }

    static string FormatNumber(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}

using System.Globalization;
using System.Text.Json;
using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Onnx.Jobs;

/// <summary>
/// A direction file (SPEC §5: safetensors, one key per initializer name, its shape). Those <c>natgrad</c> writes also say
/// which model they belong to and which tensors they hold (metadata <c>model_sha256</c>, <c>tensors</c>), so that
/// <c>apply</c> can refuse one of another model or one that lost a tensor; a direction written by other tools has
/// neither and is taken as it is.
/// </summary>
public static class DirectionFile
{
    public const string FormatName = "fisherkernels-direction/1";

    public static void Write(string path, IReadOnlyDictionary<string, NdArray<float>> tensors, string modelPath, string createdBy)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatName,
            ["model_sha256"] = KfacScoring.Sha256(modelPath),
            ["tensors"] = JsonSerializer.Serialize(tensors.Keys.ToArray()),
            ["created_by"] = createdBy,
        };
        SafetensorsFile.Write(path, tensors.Select(p => new KeyValuePair<string, NdArray>(p.Key, p.Value)), metadata);
    }

    /// <summary>
    /// The direction in <paramref name="path"/> for <paramref name="lm"/>: every tensor an initializer of the model (not a
    /// Constant node's value) of its shape with finite values; with natgrad's metadata, the model's hash and every tensor it lists.
    /// </summary>
    public static Dictionary<string, NdArray<float>> Read(string path, LanguageModel lm)
    {
        ArgumentNullException.ThrowIfNull(lm);
        SafetensorsFile file = SafetensorsFile.Read(path);
        string what = $"direction '{path}'";
        if (file.Names.Count == 0) throw FisherKernelsException.Argument($"{what} holds no tensor");
        var graph = lm.Model.Graph;
        if (file.Metadata.TryGetValue("model_sha256", out string? sha))
        {
            string modelSha = KfacScoring.Sha256(graph.Source);
            if (!string.Equals(sha.Trim(), modelSha, StringComparison.OrdinalIgnoreCase))
                throw FisherKernelsException.Argument($"{what} was computed for another model (model_sha256 {sha}; model '{graph.Source}' has {modelSha})");
        }
        if (file.Metadata.TryGetValue("tensors", out string? listed))
        {
            string[] names;
            try { names = JsonSerializer.Deserialize<string[]>(listed) ?? []; }
            catch (JsonException) { throw FisherKernelsException.Format($"{what}: metadata 'tensors' is not a JSON list of names"); }
            foreach (string name in names)
                if (!file.Tensors.ContainsKey(name)) throw FisherKernelsException.Argument($"{what} is missing tensor '{name}' (its metadata lists it)");
        }
        var direction = new Dictionary<string, NdArray<float>>(StringComparer.Ordinal);
        foreach (string name in file.Names)
        {
            if (!graph.Initializers.TryGetValue(name, out var init) || graph.ConstantNodeValues.Contains(name))
                throw FisherKernelsException.Argument($"{what}: '{name}' is not an initializer of model '{graph.Source}' (a direction of another model?)");
            if (init.ElementType != ElementType.Float32)
                throw FisherKernelsException.Argument($"{what}: initializer '{name}' is {init.ElementType}, not a float parameter");
            NdArray<float> value = file.GetFloat32(name);
            if (!init.Shape.AsSpan().SequenceEqual(value.Shape))
                throw FisherKernelsException.Argument($"{what}: '{name}' has shape [{ShapeUtil.Format(value.Shape)}], the model's initializer [{ShapeUtil.Format(init.Shape)}]");
            int bad = Array.FindIndex(value.Data, v => !float.IsFinite(v));
            if (bad >= 0) throw FisherKernelsException.Argument($"{what}: '{name}' has a non-finite value at element {bad}");
            direction[name] = value;
        }
        return direction;
    }
}

/// <summary>What <c>apply</c> wrote: how many initializers moved, and the largest change of any weight.</summary>
public sealed record ApplyResult(int Tensors, double MaxChange);

/// <summary><c>apply --step η</c> (SPEC §4): <c>θ + η·d</c> for each initializer of the direction, written as a new ONNX model.</summary>
public static class ApplyService
{
    public static ApplyResult Apply(LanguageModel lm, string directionPath, double step, string outPath)
    {
        ArgumentNullException.ThrowIfNull(lm);
        if (!double.IsFinite(step)) throw FisherKernelsException.Argument($"apply: --step must be a finite number, got {step.ToString("R", CultureInfo.InvariantCulture)}");
        Dictionary<string, NdArray<float>> direction = DirectionFile.Read(directionPath, lm);
        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        double maxChange = 0;
        foreach (var (name, d) in direction)
        {
            float[] theta = ((NdArray<float>)lm.Model.Graph.Initializers[name]).Data;
            var moved = new float[theta.Length];
            for (int i = 0; i < moved.Length; i++)
            {
                moved[i] = (float)(theta[i] + step * d.Data[i]);
                if (!float.IsFinite(moved[i]))
                    throw FisherKernelsException.Argument(string.Create(CultureInfo.InvariantCulture,
                        $"apply: --step {step:R} makes initializer '{name}' non-finite at element {i} ({theta[i]:R} + {step:R} × {d.Data[i]:R}); nothing was written"));
                maxChange = Math.Max(maxChange, Math.Abs((double)moved[i] - theta[i]));
            }
            values[name] = moved;
        }
        InitializerWriter.Write(lm.Model.Graph.Source, outPath, values);
        return new ApplyResult(values.Count, maxChange);
    }
}

using FisherKernels.IO;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Tests.Commands;

/// <summary>
/// Checks on a curvature file before <c>score --method kfac</c> uses it (issue 5): another model's file (by hash, or by layer
/// shapes when the hash agrees), non-finite factors (naming the layer), a corrupt file. Each is one exact line on stderr and
/// leaves no output.
/// </summary>
public class CurvatureCheckTests
{
    static readonly string Model = Fixtures.Path("gpt2_tiny.onnx"), Curvature = Fixtures.Path("gpt2_tiny.kfac.safetensors");
    const string Attention = "transformer.h.0.attn.c_attn.weight"; // in 32 + bias, out 96

    static void AssertRefused(string curvature, string expectedLine)
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run("score", "--model", Model, "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                              "--curvature", curvature, "--out", temp.File("s.json"));
        Assert.NotEqual(0, code);
        Assert.Equal("fisherkernels: " + expectedLine, stderr.Trim());
        Assert.Empty(Directory.GetFiles(temp.Path));
    }

    /// <summary>The fixture's tensors and metadata, with <paramref name="change"/> applied to the tensors, written to <paramref name="path"/>.</summary>
    static string Rewrite(string path, Action<Dictionary<string, NdArray>> change, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        SafetensorsFile file = SafetensorsFile.Read(Curvature);
        var tensors = file.Names.ToDictionary(n => n, n => (NdArray)file.GetFloat32(n));
        change(tensors);
        var metadata = new Dictionary<string, string>(file.Metadata);
        foreach (var (key, value) in extraMetadata ?? new Dictionary<string, string>()) metadata[key] = value;
        SafetensorsFile.Write(path, tensors, metadata);
        return path;
    }

    [Fact]
    public void ACurvatureOfAnotherModelIsRefusedByItsHash()
    {
        // llama_tiny's torch-written file has no has_bias metadata: the hash is checked before its layers are read.
        string other = Fixtures.Path("llama_tiny.kfac.safetensors");
        AssertRefused(other, $"curvature '{other}' was fitted on a different model " +
                             $"(model_sha256 {SafetensorsFile.Read(other).Metadata["model_sha256"]}, this model has {KfacScoring.Sha256(Model)})");
    }

    [Fact]
    public void ACurvatureWithTheModelsHashButOtherLayerShapesIsRefusedNamingTheLayer()
    {
        using var temp = new TempFolder();
        // G of the attention projection cut to 90 × 90 (the model's layer has 96 outputs); has_bias stated for every layer.
        var bias = SafetensorsFile.Read(Curvature).Names.Where(n => n.EndsWith(".A", StringComparison.Ordinal))
            .ToDictionary(n => n[..^2] + ".has_bias", n => n.Contains("wte", StringComparison.Ordinal) ? "false" : "true");
        string shapes = Rewrite(temp.File("shapes.safetensors"), tensors =>
        {
            float[] g = ((NdArray<float>)tensors[Attention + ".G"]).Data;
            tensors[Attention + ".G"] = new NdArray<float>([90, 90], Enumerable.Range(0, 90 * 90).Select(i => g[i / 90 * 96 + i % 90]).ToArray());
        }, bias);
        AssertRefused(shapes, $"curvature '{shapes}': layer '{Attention}' has in 32, out 90, bias True; the model has in 32, out 96, bias True");

        string missing = Rewrite(temp.File("missing.safetensors"), tensors =>
        {
            tensors.Remove(Attention + ".A");
            tensors.Remove(Attention + ".G");
        }, bias.Where(p => !p.Key.StartsWith(Attention, StringComparison.Ordinal)).ToDictionary());
        AssertRefused(missing, $"curvature '{missing}' has no curvature for layer '{Attention}' of the model");
    }

    [Theory]
    [InlineData("A", float.NaN, "NaN")]
    [InlineData("G", float.PositiveInfinity, "Infinity")]
    public void NonFiniteFactorsAreRefusedNamingTheLayer(string factor, float value, string shown)
    {
        using var temp = new TempFolder();
        string path = Rewrite(temp.File("bad.safetensors"), tensors =>
        {
            var data = ((NdArray<float>)tensors[Attention + "." + factor]).Data;
            int n = (int)Math.Sqrt(data.Length);
            data[1 * n + 2] = data[2 * n + 1] = value;
        });
        AssertRefused(path, $"{path}: layer '{Attention}': factor {factor} has a non-finite value {shown} at [1, 2]");
    }

    [Fact]
    public void CorruptCurvatureFilesAreRefusedNamingTheFile()
    {
        using var temp = new TempFolder();
        byte[] bytes = File.ReadAllBytes(Curvature);
        string truncated = temp.File("truncated.safetensors"), stub = temp.File("stub.safetensors"), garbage = temp.File("garbage.safetensors");
        File.WriteAllBytes(truncated, bytes[..5000]); // the torch goldens store F64: A [33 × 33] is 8712 bytes
        File.WriteAllBytes(stub, bytes[..4]);
        File.WriteAllText(garbage, "garbage garbage garbage garbage");
        long headerLength = BitConverter.ToInt64(bytes, 0);
        AssertRefused(truncated, $"{truncated}: tensor '{Attention}.A' data [0, {33 * 33 * 8}] runs past the end of the file (data section has {5000 - 8 - headerLength} bytes)");
        AssertRefused(stub, $"{stub}: not a safetensors file (only 4 bytes)");
        AssertRefused(garbage, $"{garbage}: header length {BitConverter.ToInt64("garbage "u8)} exceeds the limit of 100000000 bytes");
    }
}

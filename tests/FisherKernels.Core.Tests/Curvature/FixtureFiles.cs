using System.Security.Cryptography;
using System.Text.Json;
using FisherKernels.Curvature;

namespace FisherKernels.Tests.Curvature;

/// <summary>The torch goldens in tests/fixtures (see its README) and what the curvature tests need from them.</summary>
internal static class FixtureFiles
{
    public static readonly string[] Models = ["gpt2_tiny", "llama_tiny", "bert_tiny"];

    public static string Folder { get; } = Find();

    public static string PathOf(string name) => Path.Combine(Folder, name);

    static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "fixtures");
            if (File.Exists(Path.Combine(candidate, "README.md"))) return candidate;
        }
        throw new DirectoryNotFoundException("tests/fixtures not found above " + AppContext.BaseDirectory);
    }

    /// <summary>A layer of <c>&lt;model&gt;.layers.json</c>: its shape, its bias initializer and how the weight is stored.</summary>
    public sealed record FixtureLayer(LayerShape Shape, string? Bias, bool StoredInOut);

    public static FixtureLayer[] Layers(string model)
    {
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(PathOf(model + ".layers.json")));
        return doc.RootElement.GetProperty("layers").EnumerateArray().Select(l =>
        {
            string? bias = l.GetProperty("bias").ValueKind == JsonValueKind.String ? l.GetProperty("bias").GetString() : null;
            return new FixtureLayer(new LayerShape(l.GetProperty("id").GetString()!, l.GetProperty("in").GetInt32(), l.GetProperty("out").GetInt32(), bias is not null),
                                    bias, l.GetProperty("storage").GetString() == "in_out");
        }).ToArray();
    }

    public static string Sha256(string name) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(PathOf(name))));
}

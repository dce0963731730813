using System.Text.Json;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;

namespace FisherKernels.Tests.Import;

/// <summary>Layer tables against tests/fixtures/&lt;m&gt;.layers.json, written by the torch generator's own discovery.</summary>
public class LayerDiscoveryTests
{
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    [InlineData("llama_tiny_fp16")]
    [InlineData("gpt2_tiny_external")]
    public void MatchesTheGeneratorsLayerTable(string model)
    {
        var graph = OnnxImporter.Load(Fixtures.Path(model + ".onnx"));
        var layers = LayerDiscovery.Discover(graph);
        string reference = model.StartsWith("llama", StringComparison.Ordinal) ? "llama_tiny" : model.StartsWith("gpt2", StringComparison.Ordinal) ? "gpt2_tiny" : model;
        using var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path(reference + ".layers.json")));
        var expected = json.RootElement.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(expected.Count, layers.Count);
        foreach (var e in expected)
        {
            var layer = Assert.Single(layers, l => l.Id == e.GetProperty("id").GetString());
            Assert.Equal(e.GetProperty("bias").ValueKind == JsonValueKind.Null ? null : e.GetProperty("bias").GetString(), layer.Bias);
            Assert.Equal(e.GetProperty("op").GetString(), layer.Op);
            Assert.Equal(e.GetProperty("in").GetInt32(), layer.In);
            Assert.Equal(e.GetProperty("out").GetInt32(), layer.Out);
            Assert.Equal(e.GetProperty("storage").GetString() == "out_in", layer.StoredOutIn);
            var use = Assert.Single(layer.Applications);
            Assert.Equal(e.GetProperty("node").GetString(), use.Node.Name);
            Assert.Equal(e.GetProperty("input_value").GetString(), use.InputValue);
            Assert.Equal(e.GetProperty("output_value").GetString(), use.OutputValue);
        }
    }

    /// <summary>
    /// Other exports of gpt2_tiny's weights (older opset, KV cache, merged decoder): as language models they have the
    /// same layers, whatever the graph's names (the merged decoder's through its else-branch, SPEC §1).
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny_opset11")]
    [InlineData("gpt2_tiny_past")]
    [InlineData("gpt2_tiny_merged")]
    public void OtherExportsHaveGpt2TinysLayers(string model)
    {
        static string Describe(Layer l) => $"{l.Id} {l.Op} {l.In}x{l.Out} bias={l.Bias} out_in={l.StoredOutIn} uses={l.Applications.Count}";
        var expected = LayerDiscovery.Discover(OnnxImporter.Load(Fixtures.Path("gpt2_tiny.onnx"))).Select(Describe).Order(StringComparer.Ordinal);
        var actual = Onnx.LanguageModel.Load(Fixtures.Path(model + ".onnx")).Model.Layers.Select(Describe).Order(StringComparer.Ordinal);
        Assert.Equal(expected, actual);
    }

    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    public void AllParametersAreTheGradientGoldensKeys(string model)
    {
        var graph = OnnxImporter.Load(Fixtures.Path(model + ".onnx"));
        var golden = FisherKernels.IO.SafetensorsFile.Read(Fixtures.Path(model + ".grads_all.safetensors"));
        Assert.Equal(golden.Names.OrderBy(n => n, StringComparer.Ordinal), LayerDiscovery.AllParameters(graph).OrderBy(n => n, StringComparer.Ordinal));
        var defaults = FisherKernels.IO.SafetensorsFile.Read(Fixtures.Path(model + ".grads.safetensors"));
        Assert.Equal(defaults.Names.OrderBy(n => n, StringComparer.Ordinal),
                     LayerDiscovery.DefaultParameters(LayerDiscovery.Discover(graph)).OrderBy(n => n, StringComparer.Ordinal));
    }
}

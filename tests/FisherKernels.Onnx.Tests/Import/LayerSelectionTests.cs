using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Tests.Import;

/// <summary>SPEC §2's layer selection on the GPT-2 fixture (ids as the torch generator lists them in gpt2_tiny.layers.json).</summary>
public sealed class LayerSelectionTests
{
    static readonly LanguageModel Gpt2 = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));

    static string[] Select(LayerSelection selection)
    {
        string? output = LastLayerVariance.OutputLayer(Gpt2, out string reason)?.Layer.Id;
        return selection.Apply(Gpt2.Model.Layers, output, reason).Select(l => l.Id).ToArray();
    }

    [Fact]
    public void IncludeExcludeAndLastLayerKeepWhatSpecSays()
    {
        Assert.Equal(9, Select(LayerSelection.All).Length);
        Assert.Equal(["transformer.h.0.c_fc.weight", "transformer.h.1.c_fc.weight"], Select(new(Include: @"\.c_fc\.")));
        Assert.Equal(["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight", "transformer.h.1.c_fc.weight", "transformer.h.1.c_proj.weight"],
                     Select(new(Include: @"^transformer\.h\.1\.")));
        Assert.Equal(["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight"],
                     Select(new(Include: "attn", Exclude: null)));
        Assert.DoesNotContain("transformer.wte.weight", Select(new(Exclude: "wte")));
        Assert.Equal(8, Select(new(Exclude: "wte")).Length);
        // The tied head is the output layer: its output is the logits.
        Assert.Equal(["transformer.wte.weight"], Select(new(LastLayer: true)));
    }

    [Theory]
    [InlineData("[unclosed", null, false, "--layers '[unclosed' is not a valid .NET regular expression")]
    [InlineData("no_such_layer", null, false, "--layers 'no_such_layer' matches no layer (the model's layers: transformer.h.0.attn.c_attn.weight")]
    [InlineData(null, "(", false, "--exclude-layers '(' is not a valid .NET regular expression")]
    [InlineData(null, "nothing", false, "--exclude-layers 'nothing' matches no layer")]
    [InlineData(null, ".", false, "the layer selection (--exclude-layers '.') leaves no layer")]
    [InlineData("c_fc", null, true, "--layers 'c_fc' matches no layer kept by --last-layer")]
    public void BadSelectionsAreOneLineNamingTheOption(string? include, string? exclude, bool last, string message)
    {
        var e = Assert.Throws<FisherKernelsException>(() => Select(new(include, exclude, last)));
        Assert.StartsWith(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void TheSelectionRoundTripsThroughMetadataAndIsCheckedOnUse()
    {
        var fitted = new LayerSelection(Include: "h\\.1", Exclude: "c_proj");
        LayerSelection stored = LayerSelection.FromMetadata(fitted.ToMetadata(), "c.safetensors");
        Assert.Equal(fitted, stored);
        LayerSelection.All.EnsureSameAs(stored, "curvature 'c.safetensors'"); // none given: the curvature's is used
        fitted.EnsureSameAs(stored, "curvature 'c.safetensors'");
        var e = Assert.Throws<FisherKernelsException>(() => new LayerSelection(LastLayer: true).EnsureSameAs(stored, "curvature 'c.safetensors'"));
        Assert.Equal("curvature 'c.safetensors' was fitted with --layers 'h\\.1' --exclude-layers 'c_proj', not --last-layer: give the same selection, or none to use the curvature's", e.Message);
        Assert.Throws<FisherKernelsException>(() => LayerSelection.FromMetadata("not json", "c.safetensors"));
    }
}

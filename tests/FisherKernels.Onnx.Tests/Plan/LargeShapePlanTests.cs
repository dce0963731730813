using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// Sizes past 2³¹ planned without allocating them (issue 18): a batch whose activations pass 2 GB is measured in 64 bits,
/// and one with a single value past what an array holds is refused in one line before anything is allocated.
/// </summary>
public sealed class LargeShapePlanTests
{
    static readonly LanguageModel Gpt2 = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));

    static long Measure(int batch, int seq) => ExecutionPlan.MeasureBuffers(Gpt2.Model, new Dictionary<string, int[]> { ["input_ids"] = [batch, seq] },
        LayerDiscovery.DefaultParameters(Gpt2.Model.Layers).ToHashSet(), keepAll: true);

    [Fact]
    public void ActivationsPast2GBAreMeasuredIn64BitsAndScaleWithTheBatch()
    {
        long small = Measure(2, 12);
        Assert.Equal(Gpt2.Model.GetPlan(new Dictionary<string, int[]> { ["input_ids"] = [2, 12] },
            LayerDiscovery.DefaultParameters(Gpt2.Model.Layers).ToHashSet(), keepAll: true).BufferBytes, small);
        // 400,000 sequences of 12 tokens: 4.8M positions, logits alone 4.8M × 64 floats (1.2 GB); every value kept.
        long large = Measure(400_000, 12);
        Assert.True(large > int.MaxValue, $"{large}");
        Assert.True(large >= 400_000L * 12 * 64 * 4);
        // Kept values are either per position or fixed (the causal mask): the bytes are affine in the batch, exactly.
        Assert.Equal(100_000 * (Measure(4, 12) - small), large - Measure(200_000, 12));
    }

    [Fact]
    public void AValuePastOneArrayIsRefusedBeforeAnythingIsAllocated()
    {
        // 3,000,000 × 12 positions: the [batch, seq, 96] attention projection has 3.5·10⁹ elements.
        var e = Assert.Throws<FisherKernelsException>(() => Measure(3_000_000, 12));
        Assert.Contains("more than one array holds", e.Message);
        Assert.Contains("lower --batch-size", e.Message);
    }
}

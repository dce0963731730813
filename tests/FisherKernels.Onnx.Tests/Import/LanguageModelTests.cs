using FisherKernels.Onnx;

namespace FisherKernels.Tests.Import;

public class LanguageModelTests
{
    /// <summary>The fixtures' learned position tables have N_CTX = 32 rows (tests/fixtures/generate.py); the token tables 64.</summary>
    [Theory]
    [InlineData("gpt2_tiny.onnx", 32)]
    [InlineData("bert_tiny.onnx", 32)]
    public void PositionTableRowsAreTheDefaultContext(string model, int rows)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model));
        Assert.Equal(rows, lm.PositionRows);
        Assert.NotEqual(lm.EmbeddingRows, lm.PositionRows);
    }
}

using FisherKernels.IO;

namespace FisherKernels.Tests.Commands;

/// <summary><c>fit</c> reads its token and target files a batch at a time; every id is still checked before any work.</summary>
public class FitInputTests
{
    static readonly string Model = Fixtures.Path("gpt2_tiny.onnx");

    /// <summary>The fixture's two sequences and a third, a copy of the first with <paramref name="badId"/> at position 5 when given.</summary>
    static NdArray<long> ThreeSequences(long? badId = null)
    {
        var tokens = NpyFile.ReadInt64(Fixtures.Path("gpt2_tiny.tokens.npy"));
        int seq = tokens.Shape[1];
        long[] third = tokens.Data[..seq];
        if (badId is { } id) third[5] = id;
        return new NdArray<long>([3, seq], [.. tokens.Data, .. third]);
    }

    [Fact]
    public void ABadIdInALaterBatchStopsTheFitBeforeAnyWorkNamingTheRows()
    {
        using var temp = new TempFolder();
        string tokens = temp.File("t.npy"), output = temp.File("c.safetensors");
        NpyFile.Write(tokens, ThreeSequences(badId: 100_000));
        var (code, _, stderr) = CliRunner.Run("fit", "--model", Model, "--tokens", tokens, "--batch-size", "1", "--out", output);
        Assert.Equal(2, code);
        Assert.StartsWith($"fisherkernels: {tokens} (rows 2..2): token id 100000 at [0, 5] is outside the vocabulary", stderr);
        Assert.DoesNotContain("batch", stderr); // no progress line: it stopped before the first batch
        Assert.Equal([tokens], Directory.GetFiles(temp.Path));

        NpyFile.Write(tokens, ThreeSequences());
        string targets = temp.File("y.npy");
        var wrongTargets = ThreeSequences();
        wrongTargets.Data[2 * wrongTargets.Shape[1] + 3] = 100_000;
        NpyFile.Write(targets, wrongTargets);
        (code, _, stderr) = CliRunner.Run("fit", "--model", Model, "--tokens", tokens, "--targets", targets, "--batch-size", "2", "--fisher", "empirical", "--out", output);
        Assert.Equal(2, code);
        Assert.StartsWith($"fisherkernels: {targets} (rows 2..2): target 100000 at [0, 3] is outside the vocabulary", stderr);

        NpyFile.Write(targets, new NdArray<long>([2, wrongTargets.Shape[1]]));
        (code, _, stderr) = CliRunner.Run("fit", "--model", Model, "--tokens", tokens, "--targets", targets, "--out", output);
        Assert.Equal(2, code);
        Assert.Equal($"fisherkernels: {targets}: targets have shape [2, {wrongTargets.Shape[1]}], the tokens [3, {wrongTargets.Shape[1]}]", stderr.Trim());
        Assert.False(File.Exists(output));
    }
}

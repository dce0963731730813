using System.Text.Json;
using FisherKernels.Curvature;
using FisherKernels.IO;

namespace FisherKernels.Tests.Commands;

/// <summary>fit's memory plan, low-rank sides and layer selection (SPEC §2, §3) as a user runs them, against the torch goldens.</summary>
public class FitPlanCommandTests
{
    static readonly string Model = Fixtures.Path("gpt2_tiny.onnx"), Tokens = Fixtures.Path("gpt2_tiny.tokens.npy"), Targets = Fixtures.Path("gpt2_tiny.targets.npy");
    const string Head = "transformer.wte.weight", Attention = "transformer.h.0.attn.c_attn.weight";

    static string Fit(TempFolder temp, string name, params string[] extra)
    {
        string output = temp.File(name);
        var (code, _, stderr) = CliRunner.Run(["fit", "--model", Model, "--tokens", Tokens, "--targets", Targets, "--fisher", "empirical", "--out", output, .. extra]);
        Assert.True(code == 0, stderr);
        return output;
    }

    static double RelativeError(float[] actual, float[] reference) =>
        Math.Sqrt(actual.Select((v, i) => Math.Pow(v - reference[i], 2)).Sum() / reference.Sum(v => (double)v * v));

    [Fact]
    public void LastLayerFitsTheHeadAloneAndRecordsTheSelection()
    {
        using var temp = new TempFolder();
        string output = Fit(temp, "c.safetensors", "--last-layer");
        var file = SafetensorsFile.Read(output);
        Assert.Equal([Head + ".A", Head + ".G"], file.Names.Order());
        var golden = SafetensorsFile.Read(Fixtures.Path("gpt2_tiny.kfac_targets.safetensors"));
        Assert.True(RelativeError(file.GetFloat32(Head + ".G").Data, golden.GetFloat32(Head + ".G").Data) < 1e-3);
        Assert.Equal("""{"layers":null,"exclude_layers":null,"last_layer":true}""", file.Metadata["layers"]);
        // Scoring with it covers the head alone (LayerSelectionScoreTests checks the scores against a float64 reference).
    }

    /// <summary>
    /// Under a budget that the first attention projection's factors miss, its G (96²) is sketched: the file holds the sketch of
    /// the torch golden G, the plan says so before the first batch, and K-FAC scores from it (G has rank ≤ 24 ≤ r, so the
    /// Nyström recovery is exact) equal those of the dense fit.
    /// </summary>
    [Fact]
    public void ABudgetSketchesTheLargeSideAndScoresStayTheSame()
    {
        using var temp = new TempFolder();
        string dense = Fit(temp, "dense.safetensors");
        string output = temp.File("low.safetensors");
        var (code, stdout, stderr) = CliRunner.Run("fit", "--model", Model, "--tokens", Tokens, "--targets", Targets, "--fisher", "empirical", "--out", output,
                                                   "--memory-budget", "80000", "--rank", "60");
        Assert.True(code == 0, stderr);
        Assert.StartsWith("memory plan (--memory-budget 78.13 KiB a layer, --rank 60, batch 2×12):", stdout);
        Assert.Contains(stdout.Split('\n'), l => l.Contains(Attention) && l.Contains("G     96 lowrank"));
        var file = SafetensorsFile.Read(output);
        Assert.Contains(Attention + ".G.Y", file.Names);
        Assert.Contains(Head + ".G", file.Names);
        var golden = SafetensorsFile.Read(Fixtures.Path("gpt2_tiny.kfac_targets.safetensors"));
        var expected = FactorSketch.FromDense(golden.GetFloat32(Attention + ".G").Data, 96, 68, FactorSketch.DefaultSeed(Attention, 'G'));
        Assert.True(RelativeError(file.GetFloat32(Attention + ".G.Y").Data, expected.Y.Data) < 1e-3);

        double[] Scores(string curvature)
        {
            string scores = temp.File(Path.GetFileName(curvature) + ".json");
            var (c, _, e) = CliRunner.Run("score", "--model", Model, "--tokens", Tokens, "--targets", Targets, "--method", "kfac", "--curvature", curvature, "--out", scores);
            Assert.True(c == 0, e);
            using var json = JsonDocument.Parse(File.ReadAllText(scores));
            return json.RootElement.GetProperty("sequences").EnumerateArray()
                .SelectMany(s => s.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("epistemic").GetDouble())).ToArray();
        }
        double[] reference = Scores(dense), sketched = Scores(output);
        Assert.Equal(reference.Length, sketched.Length);
        for (int t = 0; t < reference.Length; t++) Assert.True(Math.Abs(sketched[t] - reference[t]) <= 1e-3 * reference[t] + 1e-12, $"token {t}: {sketched[t]} vs {reference[t]}");
    }

    [Theory]
    [InlineData("--layers", "(", "fisherkernels: --layers '(' is not a valid .NET regular expression")]
    [InlineData("--layers", "nothing_matches", "fisherkernels: --layers 'nothing_matches' matches no layer")]
    [InlineData("--memory-budget", "100", "over --memory-budget 100 B: raise --memory-budget, lower --rank, or leave the layer out with --exclude-layers")]
    public void BadSelectionsAndBudgetsAreOneLineAndWriteNothing(string option, string value, string message)
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run("fit", "--model", Model, "--tokens", Tokens, "--out", temp.File("c.safetensors"), option, value);
        Assert.NotEqual(0, code);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.Empty(Directory.GetFiles(temp.Path));
    }
}

using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Commands;

/// <summary><c>score --method kfac --samples K</c>: linearized sampling against the K-FAC quadratic form of the target logit's gradient.</summary>
public class SamplingCommandTests
{
    static string[] ScoreArgs(string model, string output) =>
        ["score", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
         "--method", "kfac", "--curvature", Fixtures.Path(model + ".kfac.safetensors"), "--out", output];

    /// <summary>
    /// The reference variance of the target logit: <c>∇z_yᵀ Σ ∇z_y</c> from a backward pass seeded with e_y (gradients and the
    /// K-FAC quadratic form are each checked against torch float64 elsewhere), independent of the sampling and the JVPs.
    /// </summary>
    static double QuadraticForm(LanguageModel lm, OpContext context, KfacPosterior posterior, NdArray<long> tokens, int sequence, int position, long target)
    {
        int seq = tokens.Shape[1];
        var row = new NdArray<long>([1, seq], tokens.Data[(sequence * seq)..((sequence + 1) * seq)]);
        var (_, backward, logits) = Derivatives.Prepare(lm, context, row, LayerDiscovery.DefaultParameters(lm.Model.Layers));
        backward.Clear();
        backward.Gradient(lm.LogitsOutput).Data[position * logits.Shape[2] + (int)target] = 1;
        backward.Run(context);
        return KfacScoring.GradientQuadratic(lm, posterior, backward);
    }

    [Theory]
    [InlineData("gpt2_tiny", 1e-3)]
    [InlineData("llama_tiny", 1e-3)]
    [InlineData("gpt2_tiny", 1000)]
    [InlineData("gpt2_tiny", 1e-3, 8)] // 20 KiB budget: the Woodbury form (rank 8) on all layers but the attention projections
    public void SampledLogitVarianceAgreesWithTheQuadraticForm(string model, double prior, int lowRank = 0)
    {
        using var temp = new TempFolder();
        const int Samples = 1000; // relative standard error of a variance estimate: √(2/K) ≈ 4.5%
        string output = temp.File("s.json");
        // A small prior precision lets the curvature shape Σ (a large one makes it nearly τ⁻¹·I, blind to the layout of δ);
        // a large one keeps the posterior narrow enough that softmax is near-linear over it, so p lies inside its interval.
        var (code, _, stderr) = CliRunner.Run([.. ScoreArgs(model, output), "--prior-precision", prior.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
                                               "--samples", Samples.ToString(), "--seed", "7",
                                               .. (lowRank > 0 ? ["--memory-budget", "20K", "--rank", lowRank.ToString()] : Array.Empty<string>())]);
        Assert.True(code == 0, stderr);

        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var context = new OpContext(new CpuBackend(threads: 1));
        var (_, posterior) = KfacScoring.LoadPosterior(lm, Fixtures.Path(model + ".kfac.safetensors"), 
            lowRank > 0 ? new PosteriorOptions { PriorPrecision = prior, MemoryBudgetBytes = 20 << 10, Rank = lowRank } : new PosteriorOptions { PriorPrecision = prior },
            context.Backend, TextWriter.Null);
        Assert.Equal(lowRank > 0, posterior.Layers.Any(l => l.IsLowRank));
        var tokens = NpyFile.ReadInt64(Fixtures.Path(model + ".tokens.npy"));
        using var json = JsonDocument.Parse(File.ReadAllText(output));
        double diff = 0, norm = 0;
        int count = 0;
        foreach (JsonElement sequence in json.RootElement.GetProperty("sequences").EnumerateArray())
            foreach (JsonElement token in sequence.GetProperty("tokens").EnumerateArray())
            {
                double reference = QuadraticForm(lm, context, posterior, tokens, sequence.GetProperty("index").GetInt32(),
                                                 token.GetProperty("position").GetInt32(), token.GetProperty("target").GetInt64());
                double sampled = token.GetProperty("logit_variance").GetDouble();
                Assert.True(Math.Abs(sampled - reference) <= 0.25 * reference, $"position {token.GetProperty("position")}: sampled {sampled}, quadratic form {reference}");
                diff += (sampled - reference) * (sampled - reference);
                norm += reference * reference;
                double p = token.GetProperty("p").GetDouble(), low = token.GetProperty("p_low").GetDouble(), high = token.GetProperty("p_high").GetDouble();
                Assert.True(0 <= low && low < high && high <= 1, $"interval [{low}, {high}]");
                if (prior >= 1000) Assert.True(low < p && p < high, $"p {p} outside its 90% interval [{low}, {high}]");
                count++;
            }
        Assert.True(count > 0);
        Assert.True(Math.Sqrt(diff / norm) <= 0.1, $"relative error of the sampled variances {Math.Sqrt(diff / norm)}");
    }

    [Fact]
    public void SampledFieldsAppearOnlyWithSamples()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run(ScoreArgs("gpt2_tiny", temp.File("plain.csv")));
        Assert.True(code == 0, stderr);
        Assert.Equal(ScoreReport.CsvHeader + ScoreReport.LastLayerCsvColumn, File.ReadLines(temp.File("plain.csv")).First());
        (code, _, stderr) = CliRunner.Run(ScoreArgs("gpt2_tiny", temp.File("plain.json")));
        Assert.True(code == 0, stderr);
        Assert.DoesNotContain("\"logit_variance\"", File.ReadAllText(temp.File("plain.json")));

        (code, _, stderr) = CliRunner.Run([.. ScoreArgs("gpt2_tiny", temp.File("sampled.csv")), "--samples", "8"]);
        Assert.True(code == 0, stderr);
        string[] lines = File.ReadAllLines(temp.File("sampled.csv"));
        Assert.Equal(ScoreReport.CsvHeader + ScoreReport.LastLayerCsvColumn + ",logit_variance,p_low,p_high", lines[0]);
        Assert.All(lines.Skip(1), line => Assert.Equal(10, line.Split(',').Length));
        // Same seed, same figures; another seed, other figures.
        (code, _, _) = CliRunner.Run([.. ScoreArgs("gpt2_tiny", temp.File("again.csv")), "--samples", "8"]);
        Assert.Equal(0, code);
        Assert.Equal(lines, File.ReadAllLines(temp.File("again.csv")));
        (code, _, _) = CliRunner.Run([.. ScoreArgs("gpt2_tiny", temp.File("other.csv")), "--samples", "8", "--seed", "3"]);
        Assert.Equal(0, code);
        Assert.NotEqual(lines, File.ReadAllLines(temp.File("other.csv")));
    }

    [Fact]
    public void BadSamplingOptionsAreRefused()
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run([.. ScoreArgs("gpt2_tiny", output), "--samples", "0"]);
        Assert.NotEqual(0, code);
        Assert.Contains("--samples", stderr);
        (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                          "--method", "isotropic", "--samples", "4", "--out", output);
        Assert.NotEqual(0, code);
        Assert.Contains("--samples", stderr);
        Assert.Contains("kfac", stderr);
        Assert.False(File.Exists(output));
    }
}

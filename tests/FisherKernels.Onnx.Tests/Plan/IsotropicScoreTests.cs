using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Plan;

/// <summary>Isotropic scores against the torch goldens (&lt;m&gt;.scores*.json, "isotropic").</summary>
public class IsotropicScoreTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));

    [Theory]
    [InlineData("gpt2_tiny", false)]
    [InlineData("gpt2_tiny", true)]
    [InlineData("llama_tiny", false)]
    [InlineData("bert_tiny", true)]
    [InlineData("llama_gqa_tiny", true)]
    public void MatchTorch(string model, bool givenTargets)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        NdArray? targets = givenTargets ? NpyFile.Read(Fixtures.Path(model + ".targets.npy")) : null;
        var parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        var report = PositionScorer.Score(lm, Context, tokens, targets, parameters, "isotropic", 1.0, EpistemicMetric.SquaredGradientNorm);
        using var golden = JsonDocument.Parse(File.ReadAllText(Fixtures.Path(model + (givenTargets ? ".scores_targets.json" : ".scores.json"))));
        var expected = golden.RootElement.GetProperty("isotropic");
        var sequences = expected.GetProperty("sequences").EnumerateArray().ToList();
        Assert.Equal(sequences.Count, report.Sequences.Count);
        for (int s = 0; s < sequences.Count; s++)
        {
            var e = sequences[s];
            var got = report.Sequences[s];
            Assert.Equal(e.GetProperty("mean_p").GetDouble(), got.MeanP, 1e-4);
            Assert.Equal(e.GetProperty("aleatoric").GetDouble(), got.Aleatoric, 1e-4);
            Relative(e.GetProperty("epistemic").GetDouble(), got.Epistemic);
            var tokensExpected = e.GetProperty("tokens").EnumerateArray().ToList();
            Assert.Equal(tokensExpected.Count, got.Tokens.Count);
            for (int t = 0; t < tokensExpected.Count; t++)
            {
                Assert.Equal(tokensExpected[t].GetProperty("position").GetInt32(), got.Tokens[t].Position);
                Assert.Equal(tokensExpected[t].GetProperty("target").GetInt64(), got.Tokens[t].Target);
                Assert.Equal(tokensExpected[t].GetProperty("p").GetDouble(), got.Tokens[t].P, 1e-4);
                Assert.Equal(tokensExpected[t].GetProperty("aleatoric").GetDouble(), got.Tokens[t].Aleatoric, 1e-4);
                Relative(tokensExpected[t].GetProperty("epistemic").GetDouble(), got.Tokens[t].Epistemic);
            }
        }
        // The JSON round-trips in the SPEC §6 shape.
        using var written = JsonDocument.Parse(report.ToJson());
        Assert.Equal("isotropic", written.RootElement.GetProperty("method").GetString());
        Assert.Equal(report.Sequences.Sum(s => s.Tokens.Count) + 1, report.ToCsv().Trim().Split('\n').Length);
    }

    [Fact]
    public void TargetsOfTheWrongShapeOrOutsideTheVocabulary()
    {
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var tokens = NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        var wrongShape = new NdArray<long>(2, 5);
        Assert.Contains("shape", Assert.Throws<FisherKernelsException>(() => PositionScorer.Score(lm, Context, tokens, wrongShape, parameters, "isotropic", 1, EpistemicMetric.SquaredGradientNorm)).Message);
        var outside = new NdArray<long>(tokens.Shape);
        outside.Data[3] = 64;
        Assert.Contains("target 64", Assert.Throws<FisherKernelsException>(() => PositionScorer.Score(lm, Context, tokens, outside, parameters, "isotropic", 1, EpistemicMetric.SquaredGradientNorm)).Message);
    }

    /// <summary>
    /// A causal model scores each position on the shortest of the prefixes ⌈k·seq/4⌉ that holds it (the scores above
    /// match torch that way); a bidirectional one fails the prefix check and scores every position on the whole sequence.
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny", true)]
    [InlineData("llama_tiny", true)]
    [InlineData("bert_tiny", false)]
    public void CausalModelsScoreOnPrefixes(string model, bool causal)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        int seq = tokens.Shape[1];
        var lengths = new List<int>();
        var report = PositionScorer.Score(lm, Context, tokens, null, LayerDiscovery.DefaultParameters(lm.Model.Layers), "isotropic", 1.0,
                                          EpistemicMetric.SquaredGradientNorm, lengths);
        var expected = report.Sequences.SelectMany(s => s.Tokens).Select(t => causal ? (t.Position / (seq / 4) + 1) * (seq / 4) : seq);
        Assert.Equal(expected, lengths);
    }

    /// <summary>SPEC §7: epistemic scores to relative error 1e-3.</summary>
    private static void Relative(double expected, double actual) =>
        Assert.True(Math.Abs(expected - actual) <= 1e-3 * Math.Abs(expected), $"{actual} vs {expected}");

    /// <summary>
    /// SPEC §4 --level: token alone gives the same per-token scores and no sequence epistemic, sequence alone the same
    /// sequence scores and no per-token epistemic (both compared with the full score, which MatchTorch checks against torch).
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("bert_tiny")]
    public void LevelsComputeOnlyTheirOwnEpistemicScores(string model)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(model + ".tokens.npy"));
        var parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        ScoreReport Score(ScoreLevel level) => PositionScorer.Score(lm, Context, tokens, null, parameters, "isotropic", 1.0, EpistemicMetric.SquaredGradientNorm, level);
        var both = Score(ScoreLevel.Both);
        var token = Score(ScoreLevel.Token);
        var sequence = Score(ScoreLevel.Sequence);
        for (int s = 0; s < both.Sequences.Count; s++)
        {
            Assert.True(double.IsNaN(token.Sequences[s].Epistemic));
            Assert.Equal(both.Sequences[s].Epistemic, sequence.Sequences[s].Epistemic);
            Assert.Equal(both.Sequences[s].MeanP, sequence.Sequences[s].MeanP);
            for (int t = 0; t < both.Sequences[s].Tokens.Count; t++)
            {
                Assert.Equal(both.Sequences[s].Tokens[t].Epistemic, token.Sequences[s].Tokens[t].Epistemic);
                Assert.True(double.IsNaN(sequence.Sequences[s].Tokens[t].Epistemic));
                Assert.Equal(both.Sequences[s].Tokens[t].P, sequence.Sequences[s].Tokens[t].P);
            }
        }
        using var tokenJson = JsonDocument.Parse(token.ToJson());
        var first = tokenJson.RootElement.GetProperty("sequences")[0];
        Assert.Equal(JsonValueKind.Null, first.GetProperty("epistemic").ValueKind);
        Assert.Equal(JsonValueKind.Number, first.GetProperty("tokens")[0].GetProperty("epistemic").ValueKind);
        using var sequenceJson = JsonDocument.Parse(sequence.ToJson());
        first = sequenceJson.RootElement.GetProperty("sequences")[0];
        Assert.Equal(JsonValueKind.Number, first.GetProperty("epistemic").ValueKind);
        Assert.Equal(JsonValueKind.Null, first.GetProperty("tokens")[0].GetProperty("epistemic").ValueKind);
        string row = sequence.ToCsv().Split('\n')[1];
        Assert.Equal("", row.Split(',')[4]); // the epistemic column is empty
    }
}

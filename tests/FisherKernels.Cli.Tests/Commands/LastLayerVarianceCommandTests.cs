using System.Globalization;
using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Proto;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;
using Google.Protobuf;

namespace FisherKernels.Tests.Commands;

/// <summary><c>score --method kfac</c>'s <c>last_layer_logit_variance</c>: the closed-form variance of the target logit from the output layer.</summary>
public class LastLayerVarianceCommandTests
{
    static string[] ScoreArgs(string model, string output) =>
        ["score", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
         "--method", "kfac", "--curvature", Fixtures.Path(model + ".kfac.safetensors"), "--out", output];

    /// <summary>(sequence, position, target, last_layer_logit_variance) of every token of a score JSON.</summary>
    static List<(int Sequence, int Position, long Target, double Variance)> Read(string path)
    {
        using var json = JsonDocument.Parse(File.ReadAllText(path));
        var result = new List<(int, int, long, double)>();
        foreach (JsonElement sequence in json.RootElement.GetProperty("sequences").EnumerateArray())
            foreach (JsonElement token in sequence.GetProperty("tokens").EnumerateArray())
                result.Add((sequence.GetProperty("index").GetInt32(), token.GetProperty("position").GetInt32(), token.GetProperty("target").GetInt64(),
                            token.GetProperty("last_layer_logit_variance").GetDouble()));
        return result;
    }

    /// <summary>The output layer's input ã at every position of one sequence (the forward pass is checked against ONNX Runtime elsewhere).</summary>
    static float[] LayerInputs(LanguageModel lm, OpContext context, NdArray<long> tokens, int sequence, LayerApplication application)
    {
        int seq = tokens.Shape[1];
        var row = new NdArray<long>([1, seq], tokens.Data[(sequence * seq)..((sequence + 1) * seq)]);
        var (plan, _, _) = Derivatives.Prepare(lm, context, row, LayerDiscovery.DefaultParameters(lm.Model.Layers));
        return ((NdArray<float>)plan.Get(application.InputValue)).Data;
    }

    /// <summary>
    /// Float64 reference: <c>vec(X)ᵀ (M·A⊗G + τI)⁻¹ vec(X)</c> for <c>X = e_y ãᵀ</c>, by conjugate gradients on the operator
    /// <c>X ↦ M·G X A + τX</c> (no eigendecomposition, no Woodbury), iterated to a residual of 1e-13.
    /// </summary>
    static double Reference(KroneckerBlock block, double tau, ReadOnlySpan<float> input, long target)
    {
        int a = block.ADim, g = block.GDim;
        double[] fa = block.A.Data.Select(v => (double)v).ToArray(), fg = block.G.Data.Select(v => (double)v).ToArray();
        var x = new double[g * a];
        for (int j = 0; j < input.Length; j++) x[target * a + j] = input[j];
        if (block.HasBias) x[target * a + a - 1] = 1;
        double[] Apply(double[] v)
        {
            var gv = new double[g * a];
            for (int i = 0; i < g; i++)
                for (int k = 0; k < g; k++)
                    for (int j = 0; j < a; j++) gv[i * a + j] += fg[i * g + k] * v[k * a + j];
            var result = new double[g * a];
            for (int i = 0; i < g; i++)
                for (int l = 0; l < a; l++)
                    for (int j = 0; j < a; j++) result[i * a + j] += gv[i * a + l] * fa[l * a + j]; // G V A (A symmetric)
            for (int i = 0; i < result.Length; i++) result[i] = block.Positions * result[i] + tau * v[i];
            return result;
        }
        static double Dot(double[] u, double[] v)
        {
            double sum = 0;
            for (int i = 0; i < u.Length; i++) sum += u[i] * v[i];
            return sum;
        }
        var solution = new double[g * a];
        var residual = (double[])x.Clone();
        var direction = (double[])x.Clone();
        double rr = Dot(residual, residual), start = rr;
        for (int iteration = 0; iteration < 4 * g * a && rr > 1e-26 * start; iteration++)
        {
            double[] ad = Apply(direction);
            double alpha = rr / Dot(direction, ad);
            for (int i = 0; i < solution.Length; i++) { solution[i] += alpha * direction[i]; residual[i] -= alpha * ad[i]; }
            double next = Dot(residual, residual);
            for (int i = 0; i < direction.Length; i++) direction[i] = residual[i] + next / rr * direction[i];
            rr = next;
        }
        Assert.True(rr <= 1e-26 * start, "conjugate gradients did not converge");
        return Dot(x, solution);
    }

    /// <summary>
    /// Against the float64 reference from the fixture's curvature and the layer input, in the dense form and in the low-rank
    /// form with r = 32 (the vocabulary is 64, G has rank ≤ 24 = the fitted positions: the Woodbury form is then exact).
    /// </summary>
    [Theory]
    [InlineData("gpt2_tiny", 1.0, false)]
    [InlineData("gpt2_tiny", 0.1, true)]
    [InlineData("llama_tiny", 1.0, true)]
    [InlineData("bert_tiny", 0.5, false)] // a Gemm on [batch·seq, hidden] whose output is reshaped into the logits
    public void ClosedFormMatchesTheFloat64Reference(string model, double prior, bool lowRank)
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        string[] lowRankArgs = lowRank ? ["--memory-budget", "20K", "--rank", "32"] : [];
        var (code, _, stderr) = CliRunner.Run([.. ScoreArgs(model, output), "--prior-precision", prior.ToString("R", CultureInfo.InvariantCulture), .. lowRankArgs]);
        Assert.True(code == 0, stderr);

        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var context = new OpContext(new CpuBackend(threads: 1));
        var options = new PosteriorOptions { PriorPrecision = prior, MemoryBudgetBytes = lowRank ? 20 << 10 : 1L << 30, Rank = lowRank ? 32 : 64 };
        var (curvature, posterior) = KfacScoring.LoadPosterior(lm, Fixtures.Path(model + ".kfac.safetensors"), options, context.Backend, TextWriter.Null);
        var (layer, application) = LastLayerVariance.OutputLayer(lm, out string reason) ?? throw new InvalidOperationException(reason);
        Assert.Equal(lowRank, posterior[layer.Id].IsLowRank);
        KroneckerBlock block = curvature.Layers.Single(b => b.Layer == layer.Id);
        var tokens = NpyFile.ReadInt64(Fixtures.Path(model + ".tokens.npy"));
        var scores = Read(output);
        Assert.NotEmpty(scores);
        double diff = 0, norm = 0;
        foreach (var group in scores.GroupBy(s => s.Sequence))
        {
            float[] inputs = LayerInputs(lm, context, tokens, group.Key, application);
            foreach (var (_, position, target, variance) in group)
            {
                double expected = Reference(block, prior, inputs.AsSpan(position * layer.In, layer.In), target);
                Assert.True(Math.Abs(variance - expected) <= 1e-3 * expected, $"sequence {group.Key} position {position}: closed form {variance}, reference {expected}");
                diff += (variance - expected) * (variance - expected);
                norm += expected * expected;
            }
        }
        Assert.True(Math.Sqrt(diff / norm) <= 1e-3, $"relative error {Math.Sqrt(diff / norm)}");
    }

    /// <summary>
    /// Against linearized sampling restricted to the output layer: the logit moves by <c>(δ ã)_y</c> for a perturbation δ of that
    /// layer (it is linear in it), δ ~ N(0, Σ) drawn by the posterior's sampler (its own code path: a Woodbury solve of a draw
    /// with covariance P). Low rank 8 of 64 (an approximation, the same for both). K = 2000: relative standard error √(2/K) ≈ 3%.
    /// </summary>
    [Fact]
    public void ClosedFormMatchesSamplingTheLastLayer()
    {
        using var temp = new TempFolder();
        string output = temp.File("s.json");
        var (code, _, stderr) = CliRunner.Run([.. ScoreArgs("gpt2_tiny", output), "--prior-precision", "0.01", "--memory-budget", "20K", "--rank", "8"]);
        Assert.True(code == 0, stderr);
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var context = new OpContext(new CpuBackend(threads: 1));
        var options = new PosteriorOptions { PriorPrecision = 0.01, MemoryBudgetBytes = 20 << 10, Rank = 8 };
        var (_, posterior) = KfacScoring.LoadPosterior(lm, Fixtures.Path("gpt2_tiny.kfac.safetensors"), options, context.Backend, TextWriter.Null);
        var (layer, application) = LastLayerVariance.OutputLayer(lm, out string reason) ?? throw new InvalidOperationException(reason);
        LayerPosterior head = posterior[layer.Id];
        Assert.True(head.IsLowRank);
        Assert.False(head.HasBias);

        const int Samples = 2000;
        var deltas = new float[Samples][];
        for (int s = 0; s < Samples; s++) head.SamplePerturbation(seed: 3, s, deltas[s] = new float[head.GDim * head.ADim]);
        var tokens = NpyFile.ReadInt64(Fixtures.Path("gpt2_tiny.tokens.npy"));
        double diff = 0, norm = 0;
        foreach (var group in Read(output).GroupBy(s => s.Sequence))
        {
            float[] inputs = LayerInputs(lm, context, tokens, group.Key, application);
            foreach (var (_, position, target, variance) in group)
            {
                double sum = 0;
                foreach (float[] delta in deltas)
                {
                    double shift = 0;
                    for (int k = 0; k < layer.In; k++) shift += (double)delta[target * head.ADim + k] * inputs[position * layer.In + k];
                    sum += shift * shift;
                }
                double sampled = sum / Samples;
                Assert.True(Math.Abs(variance - sampled) <= 0.15 * variance, $"position {position}: closed form {variance}, sampled {sampled}");
                diff += (variance - sampled) * (variance - sampled);
                norm += variance * variance;
            }
        }
        Assert.True(Math.Sqrt(diff / norm) <= 0.06, $"relative difference {Math.Sqrt(diff / norm)}");
    }

    [Fact]
    public void FieldAppearsOnlyWithKfacAndTheCsvColumnFollowsAleatoric()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = CliRunner.Run(ScoreArgs("gpt2_tiny", temp.File("k.csv")));
        Assert.True(code == 0, stderr);
        string[] lines = File.ReadAllLines(temp.File("k.csv"));
        Assert.Equal(ScoreReport.CsvHeader + ",last_layer_logit_variance", lines[0]);
        Assert.All(lines.Skip(1), line => Assert.True(double.Parse(line.Split(',')[6], CultureInfo.InvariantCulture) > 0, line));

        (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                          "--method", "isotropic", "--out", temp.File("i.json"));
        Assert.True(code == 0, stderr);
        Assert.DoesNotContain("last_layer_logit_variance", File.ReadAllText(temp.File("i.json")));
    }

    /// <summary>Logits that are a function of the output layer's output (here a softcap-like scale) are not linear in it: no figure, and a line saying why.</summary>
    [Fact]
    public void ScaledLogitsGetNoFigureAndAReason()
    {
        using var temp = new TempFolder();
        var proto = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Fixtures.Path("gpt2_tiny.onnx")));
        NodeProto head = proto.Graph.Node.Single(n => n.Output.Contains("logits"));
        head.Output[0] = "raw_logits";
        var scale = new TensorProto { Name = "logit_scale", DataType = 1, FloatData = { 0.5f } };
        proto.Graph.Initializer.Add(scale);
        proto.Graph.Node.Add(new NodeProto { Name = "softcap", OpType = "Mul", Input = { "raw_logits", "logit_scale" }, Output = { "logits" } });
        string path = temp.File("scaled.onnx");
        File.WriteAllBytes(path, proto.ToByteArray());

        var lm = LanguageModel.Load(path);
        Assert.Null(LastLayerVariance.OutputLayer(lm, out string reason));
        Assert.Contains("Mul node 'softcap'", reason);

        var original = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var context = new OpContext(new CpuBackend(threads: 1));
        var (_, posterior) = KfacScoring.LoadPosterior(original, Fixtures.Path("gpt2_tiny.kfac.safetensors"), new PosteriorOptions(), context.Backend, TextWriter.Null);
        var tokens = NpyFile.Read(Fixtures.Path("gpt2_tiny.tokens.npy"));
        var report = new ScoreReport("scaled.onnx", "kfac", 1, [new SequenceScore(0, [new TokenScore(1, 3, 0.5, 0.1)], 0.1)]);
        var log = new StringWriter();
        ScoreReport same = LastLayerVariance.Add(report, lm, context, posterior, tokens, log);
        Assert.Same(report, same);
        Assert.Contains("no last_layer_logit_variance", log.ToString());
        Assert.Contains("softcap", log.ToString());
    }
}

using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.ControlFlow;

/// <summary>
/// A layer applied inside a Loop body (make_onnx_tests.py: flow_loop_layer.onnx, h ← tanh(h·W + b) three times, then
/// logits = h·U; flow_loop_if_layer.onnx, the same layer in the then-branch of an If in the body, taken in iterations 0
/// and 1, h ← tanh(h) in iteration 2), against the float64 references computed beside the models by hand: W is found as
/// a layer with its bias, its K-FAC factors count every application's rows (SPEC §3's expand convention) and its taps
/// give the isotropic scores.
/// </summary>
public sealed class LoopLayerTests
{
    private static readonly Lazy<Dictionary<string, NdArray>> References =
        new(() => Fixtures.ReadNpz(Path.Combine(Fixtures.ProjectFile("ControlFlow"), "onnx_tests.npz")));

    private static string Model(string name) => Path.Combine(Fixtures.ProjectFile("ControlFlow"), name + ".onnx");

    private static double[] Reference(string model, string name) => Fixtures.Doubles(References.Value[$"{model}/{name}"]);

    [Theory]
    [InlineData("flow_loop_layer", 3)]
    [InlineData("flow_loop_if_layer", 2)]
    public void TheLayerInsideTheLoopIsFoundWithItsBias(string model, int applied)
    {
        var lm = LanguageModel.Load(Model(model));
        var w = Assert.Single(lm.Model.Layers, l => l.Id == "W");
        Assert.Equal(("b", 4, 4), (w.Bias, w.In, w.Out));
        Assert.True(Assert.Single(w.Applications).InSubgraph);
        Assert.Equal(["U", "W"], lm.Model.Layers.Select(l => l.Id).Order(StringComparer.Ordinal));

        var tokens = (NdArray<long>)References.Value[$"{model}/tokens"];
        var inputs = lm.Inputs(tokens);
        var plan = lm.Model.GetPlan(inputs, keepAll: true);
        plan.Run(new OpContext(new CpuBackend(1)), inputs);
        // One application an iteration that runs the layer, each reading tanh of the one before.
        var applications = plan.ApplicationsOf(w);
        Assert.Equal(applied, applications.Count);
        for (int k = 1; k < applications.Count; k++)
        {
            var before = (NdArray<float>)plan.Get(applications[k - 1].OutputValue);
            var input = (NdArray<float>)plan.Get(applications[k].InputValue);
            Assert.Equal(before.Data.Select(MathF.Tanh), input.Data, (x, y) => Math.Abs(x - y) <= 1e-6f);
        }
    }

    [Theory]
    [InlineData("flow_loop_layer", 3)]
    [InlineData("flow_loop_if_layer", 2)]
    public void KfacFactorsSumTheRowsOfEveryIteration(string model, int applied)
    {
        using var temp = new TempFolder();
        string tokens = temp.File("tokens.npy"), output = temp.File("curvature.safetensors");
        NpyFile.Write(tokens, References.Value[$"{model}/tokens"]);
        var fit = new FitService(new OpContext(new CpuBackend(1))).Run(new FitRequest
        {
            ModelPath = Model(model), TokensPath = tokens, OutPath = output, Options = new KfacFitOptions { Fisher = FisherType.Empirical },
        });
        var curvature = Assert.IsType<KfacCurvature>(fit.Curvature);
        foreach (var (layer, positions) in new[] { ("W", 10.0 * applied), ("U", 10.0) })
        {
            var block = Assert.Single(curvature.Layers, b => b.Layer == layer);
            Assert.Equal(positions, block.Positions); // 2 × 5 positions, times the applications for W
            AssertClose(Reference(model, $"A_{layer}"), block.A.Data, $"A of {layer}");
            AssertClose(Reference(model, $"G_{layer}"), block.G.Data, $"G of {layer}");
        }
    }

    [Theory]
    [InlineData("flow_loop_layer")]
    [InlineData("flow_loop_if_layer")]
    public void IsotropicScoresThroughTheTapsMatchTheReference(string model)
    {
        var lm = LanguageModel.Load(Model(model));
        var report = new ScoreService(lm, new OpContext(new CpuBackend(1))).Score(References.Value[$"{model}/tokens"], null, new ScoreOptions());
        double[] expected = Reference(model, "isotropic");
        int seq = References.Value[$"{model}/tokens"].Shape[1];
        int scored = 0;
        foreach (var sequence in report.Sequences)
            foreach (var token in sequence.Tokens)
            {
                double e = expected[sequence.Index * seq + token.Position];
                Assert.True(Math.Abs(token.Epistemic - e) <= 1e-4 * Math.Abs(e) + 1e-7, $"sequence {sequence.Index} position {token.Position}: {token.Epistemic}, expected {e}");
                scored++;
            }
        Assert.Equal(8, scored);
    }

    private static void AssertClose(double[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-5 * scale, $"{what}[{i}]: {actual[i]}, expected {expected[i]}");
    }
}

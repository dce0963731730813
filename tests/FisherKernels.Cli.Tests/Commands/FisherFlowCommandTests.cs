using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;

namespace FisherKernels.Tests.Commands;

/// <summary>Fisher Flow verbs (SPEC §4, §6) as a user runs them, against float64 references built from the fixtures.</summary>
public class FisherFlowCommandTests
{
    [Fact]
    public void NatgradSolvesTheDampedKroneckerSystemForTheTorchGradient()
    {
        // Reference: the torch float64 gradient of L (gpt2_tiny.grads.safetensors) and the fixture's factors; per layer the
        // dense float64 precision P = M·(G ⊗ A) + τI on vec([W | b]) (row-major [out × in(+1)]): d must satisfy P d = g,
        // checked by the residual on every layer and by a Cholesky solve on the layers of at most 1100 parameters.
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), curvature = Fixtures.Path("gpt2_tiny.kfac.safetensors");
        const double tau = 0.5;
        var (code, stdout, stderr) = CliRunner.Run("natgrad", "--model", model, "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"), "--curvature", curvature,
                                                   "--prior-precision", "0.5", "--out", temp.File("d.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Contains("natural gradient", stdout);
        SafetensorsFile direction = SafetensorsFile.Read(temp.File("d.safetensors")), grads = SafetensorsFile.Read(Fixtures.Path("gpt2_tiny.grads.safetensors"));
        SafetensorsFile factors = SafetensorsFile.Read(curvature);
        double positions = double.Parse(factors.Metadata["positions"], System.Globalization.CultureInfo.InvariantCulture);
        var lm = LanguageModel.Load(model);
        int dense = 0;
        foreach (Layer layer in lm.Model.Layers)
        {
            int a = layer.In + (layer.Bias is null ? 0 : 1), g = layer.Out, n = a * g;
            float[] OutIn(SafetensorsFile file)
            {
                var x = new float[n];
                LayerLayout.ToOutIn(layer, file.GetFloat32(layer.Id).Data, layer.Bias is null ? default : file.GetFloat32(layer.Bias).Data, x);
                return x;
            }
            Assert.Equal(lm.Model.Graph.Initializers[layer.Id].Shape, direction.GetFloat32(layer.Id).Shape);
            float[] d = OutIn(direction), x = OutIn(grads);
            float[] fa = factors.GetFloat32(layer.Id + ".A").Data, fg = factors.GetFloat32(layer.Id + ".G").Data;
            // Residual: M·G D A + τD − X, all in float64.
            double residual = 0, norm = 0;
            for (int o = 0; o < g; o++)
                for (int k = 0; k < a; k++)
                {
                    double sum = tau * d[o * a + k];
                    for (int p = 0; p < g; p++)
                    {
                        double gd = 0;
                        for (int q = 0; q < a; q++) gd += (double)d[p * a + q] * fa[q * a + k];
                        sum += positions * fg[o * g + p] * gd;
                    }
                    residual += Math.Pow(sum - x[o * a + k], 2);
                    norm += (double)x[o * a + k] * x[o * a + k];
                }
            Assert.True(Math.Sqrt(residual / norm) < 1e-3, $"{layer.Id}: relative residual {Math.Sqrt(residual / norm)}");
            if (n > 1100) continue;
            dense++;
            var precision = new double[(long)n * n];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    precision[(long)i * n + j] = positions * fg[(i / a) * g + j / a] * fa[(i % a) * a + j % a] + (i == j ? tau : 0);
            double[] solved = Reference.CholeskySolve(precision, n, x.Select(v => (double)v).ToArray(), 1);
            double diff = 0, size = 0;
            for (int i = 0; i < n; i++) { diff += Math.Pow(d[i] - solved[i], 2); size += solved[i] * solved[i]; }
            Assert.True(Math.Sqrt(diff / size) < 1e-3, $"{layer.Id}: relative error {Math.Sqrt(diff / size)} against the dense float64 solve");
        }
        Assert.True(dense >= 2, $"{dense} layers solved densely");

        // Bad input: a curvature of another model: one line, nothing written.
        (code, _, stderr) = CliRunner.Run("natgrad", "--model", model, "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                          "--curvature", Fixtures.Path("llama_tiny.kfac.safetensors"), "--out", temp.File("bad.safetensors"));
        Assert.NotEqual(0, code);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(File.Exists(temp.File("bad.safetensors")));
    }

    [Fact]
    public void EwcIsHalfTheCurvatureQuadraticOfTheWeightChange()
    {
        // Reference: ½ Σ_layers vec(Δ)ᵀ (M·G ⊗ A) vec(Δ) by explicit float64 sums over the fixture's factors, for a candidate
        // whose weights and biases were moved by random Δ in memory (the same ONNX file loaded twice).
        string model = Fixtures.Path("gpt2_tiny.onnx"), curvature = Fixtures.Path("gpt2_tiny.kfac.safetensors");
        LanguageModel baseModel = LanguageModel.Load(model), candidate = LanguageModel.Load(model);
        var rng = new Random(22);
        foreach (Layer layer in candidate.Model.Layers)
            foreach (string name in new[] { layer.Id, layer.Bias }.OfType<string>())
            {
                float[] values = ((NdArray<float>)candidate.Model.Graph.Initializers[name]).Data;
                for (int i = 0; i < values.Length; i++) values[i] += (float)(0.01 * (rng.NextDouble() - 0.5));
            }
        Onnx.Jobs.EwcPenalty penalty = Onnx.Jobs.EwcService.Penalty(baseModel, candidate, curvature, new Backends.Cpu.CpuBackend(threads: 1));

        SafetensorsFile factors = SafetensorsFile.Read(curvature);
        double positions = double.Parse(factors.Metadata["positions"], System.Globalization.CultureInfo.InvariantCulture);
        double total = 0;
        foreach (Layer layer in baseModel.Model.Layers)
        {
            int a = layer.In + (layer.Bias is null ? 0 : 1), g = layer.Out;
            float[] OutIn(LanguageModel lm)
            {
                var x = new float[a * g];
                var init = lm.Model.Graph.Initializers;
                LayerLayout.ToOutIn(layer, ((NdArray<float>)init[layer.Id]).Data, layer.Bias is null ? default : ((NdArray<float>)init[layer.Bias]).Data, x);
                return x;
            }
            float[] after = OutIn(candidate), before = OutIn(baseModel);
            double[] delta = after.Select((v, i) => (double)v - before[i]).ToArray();
            float[] fa = factors.GetFloat32(layer.Id + ".A").Data, fg = factors.GetFloat32(layer.Id + ".G").Data;
            double sum = 0;
            for (int o = 0; o < g; o++)
                for (int p = 0; p < g; p++)
                    for (int k = 0; k < a; k++)
                        for (int q = 0; q < a; q++) sum += delta[o * a + k] * fg[o * g + p] * fa[k * a + q] * delta[p * a + q];
            double reference = 0.5 * positions * sum;
            Assert.True(Math.Abs(penalty.Layers[layer.Id] - reference) <= 1e-3 * Math.Abs(reference), $"{layer.Id}: {penalty.Layers[layer.Id]} vs float64 {reference}");
            total += reference;
        }
        Assert.True(Math.Abs(penalty.Total - total) <= 1e-3 * total);
        Assert.True(total > 0);

        // The command: a model against itself is 0; models of different architectures are one line.
        var (code, stdout, stderr) = CliRunner.Run("ewc", "--model", model, "--candidate", model, "--curvature", curvature, "--json");
        Assert.True(code == 0, stderr);
        using var json = System.Text.Json.JsonDocument.Parse(stdout);
        Assert.Equal(0.0, json.RootElement.GetProperty("total").GetDouble());
        Assert.Equal(baseModel.Model.Layers.Count, json.RootElement.GetProperty("layers").EnumerateObject().Count());
        (code, _, stderr) = CliRunner.Run("ewc", "--model", model, "--candidate", Fixtures.Path("llama_tiny.onnx"), "--curvature", curvature);
        Assert.NotEqual(0, code);
        Assert.Contains("different architectures", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [Fact]
    public void ApplyWritesThetaPlusStepTimesNatgradAndRefusesBadInputInOneLine()
    {
        // Reference: θ + η·d computed here in float64 from the model's initializers and natgrad's file; the written model
        // holds exactly that (rounded to float32) for every tensor of the direction and its own values elsewhere.
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), d = temp.File("d.safetensors"), moved = temp.File("moved.onnx");
        var (code, _, stderr) = CliRunner.Run("natgrad", "--model", model, "--tokens", Fixtures.Path("gpt2_tiny.tokens.npy"),
                                              "--curvature", Fixtures.Path("gpt2_tiny.kfac.safetensors"), "--out", d);
        Assert.True(code == 0, stderr);
        string stdout;
        (code, stdout, stderr) = CliRunner.Run("apply", "--model", model, "--direction", d, "--step", "-0.01", "--out", moved);
        Assert.True(code == 0, stderr);
        Assert.Contains("initializers moved", stdout);
        var before = LanguageModel.Load(model).Model.Graph;
        var after = LanguageModel.Load(moved).Model.Graph;
        SafetensorsFile direction = SafetensorsFile.Read(d);
        foreach (string name in before.InitializerOrder)
        {
            if (before.Initializers[name] is not NdArray<float> theta) continue;
            float[] now = ((NdArray<float>)after.Initializers[name]).Data;
            float[] expected = direction.Tensors.ContainsKey(name)
                ? theta.Data.Zip(direction.GetFloat32(name).Data, (t, v) => (float)(t + -0.01 * v)).ToArray()
                : theta.Data;
            Assert.Equal(expected, now);
        }

        // Bad input: one line on stderr, non-zero exit, nothing written.
        void Refused(string expected, params string[] args)
        {
            string output = temp.File("bad.onnx");
            var (c, _, err) = CliRunner.Run(["apply", .. args, "--out", output]);
            Assert.NotEqual(0, c);
            Assert.Contains(expected, err);
            Assert.Single(err.Trim().Split('\n'));
            Assert.False(File.Exists(output));
        }
        Refused("--step", "--model", model, "--direction", d, "--step", "abc");
        Refused("another model", "--model", Fixtures.Path("gpt2_tiny_opset11.onnx"), "--direction", d, "--step", "0.1");
        Refused("not an initializer", "--model", Fixtures.Path("llama_tiny.onnx"), "--direction", Fixtures.Path("gpt2_tiny.direction.safetensors"), "--step", "0.1");
        Refused("non-finite", "--model", model, "--direction", d, "--step", "1e300");
    }
}

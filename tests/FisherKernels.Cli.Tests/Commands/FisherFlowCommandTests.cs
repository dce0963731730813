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
}

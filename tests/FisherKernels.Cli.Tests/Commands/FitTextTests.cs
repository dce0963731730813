using System.Globalization;
using System.Text;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Commands;

/// <summary>
/// fit --text over overlapping windows (SPEC §1 "accumulated once", §3): every position of a sequence enters A, G and M once,
/// from the window assigned to it (the first holding it); and an interrupted text fit resumes to the same bytes.
/// </summary>
public class FitTextTests
{
    static string DefaultModel => Path.Combine(AppContext.BaseDirectory, "models", "default");
    const string Line = "Overlapping windows: each position is fitted once, in its window.";

    /// <summary>
    /// Reference: each window run alone (empirical Fisher, its assigned positions' next bytes as targets), its layer inputs and
    /// output gradients at the assigned positions summed as x̃x̃ᵀ and ggᵀ in float64, over all windows, divided by the positions
    /// (the sequence's length: each position once). The old behaviour (every window row in A and M) would give M ≈ 1.6 n here.
    /// </summary>
    [Fact]
    public void OverlappingWindowsAccumulateEachPositionOnceInAAndG()
    {
        using var temp = new TempFolder();
        string text = temp.File("in.txt"), output = temp.File("c.safetensors");
        File.WriteAllText(text, Line + "\n");
        var (code, _, stderr) = CliRunner.Run("fit", "--model", DefaultModel, "--text", text, "--context", "16", "--stride", "6", "--fisher", "empirical", "--out", output);
        Assert.True(code == 0, stderr);

        byte[] bytes = Encoding.UTF8.GetBytes(Line);
        int n = bytes.Length;
        var starts = new List<int>();
        for (int s = 0; s + 16 < n; s += 6) starts.Add(s);
        starts.Add(n - 16);
        var lm = LanguageModel.Load(Path.Combine(DefaultModel, "model.onnx"));
        var context = new OpContext(new CpuBackend(1));
        var layers = lm.Model.Layers;
        var sums = layers.ToDictionary(l => l.Id, l => (A: new double[(l.In + (l.Bias is null ? 0 : 1)) * (l.In + (l.Bias is null ? 0 : 1))], G: new double[l.Out * l.Out], M: 0.0));
        for (int w = 0; w < starts.Count; w++)
        {
            int s = starts[w], from = w == 0 ? 0 : starts[w - 1] + 16;
            var tokens = new NdArray<long>([1, 16], bytes[s..(s + 16)].Select(b => (long)b).ToArray());
            var targets = new NdArray<long>(1, 16);
            for (int k = 0; k < 16; k++) targets.Data[k] = s + k >= from && s + k + 1 < n ? bytes[s + k + 1] : -100;
            var (plan, backward, logits) = Derivatives.Prepare(lm, context, tokens, LayerDiscovery.DefaultParameters(layers), layerOutputsOnly: true);
            backward.Clear();
            Derivatives.LossCotangent(logits, targets, backward.Gradient(lm.LogitsOutput));
            backward.Run(context);
            foreach (Layer layer in layers)
            {
                var (a, g, m) = sums[layer.Id];
                int da = layer.In + (layer.Bias is null ? 0 : 1);
                foreach (var application in layer.Applications)
                {
                    float[] x = ((NdArray<float>)plan.Get(application.InputValue)).Data, dz = backward.Gradient(application.OutputValue).Data;
                    for (int k = 0; k < 16; k++)
                    {
                        if (s + k < from) continue; // held by an earlier window: accumulated there
                        m++;
                        double X(int i) => i < layer.In ? x[k * layer.In + i] : 1.0;
                        for (int i = 0; i < da; i++)
                            for (int j = 0; j < da; j++) a[i * da + j] += X(i) * X(j);
                        for (int i = 0; i < layer.Out; i++)
                            for (int j = 0; j < layer.Out; j++) g[i * layer.Out + j] += (double)dz[k * layer.Out + i] * dz[k * layer.Out + j];
                    }
                }
                sums[layer.Id] = (a, g, m);
            }
        }
        var fitted = SafetensorsFile.Read(output);
        Assert.Equal(n.ToString(CultureInfo.InvariantCulture), fitted.Metadata["positions"]);
        foreach (Layer layer in layers)
        {
            var (a, g, m) = sums[layer.Id];
            Assert.Equal(n * layer.Applications.Count, m);
            foreach (var (side, reference) in new[] { ("A", a), ("G", g) })
            {
                float[] actual = fitted.GetFloat32($"{layer.Id}.{side}").Data;
                double diff = 0, norm = 0;
                for (int i = 0; i < actual.Length; i++) { diff += Math.Pow(actual[i] - reference[i] / m, 2); norm += Math.Pow(reference[i] / m, 2); }
                Assert.True(Math.Sqrt(diff / norm) < 1e-5, $"{layer.Id}.{side}: relative error {Math.Sqrt(diff / norm)} against the float64 sum over assigned positions");
            }
        }
    }

    /// <summary>A text fit stopped after its first batch resumes from its checkpoint to the bytes of the uninterrupted fit.</summary>
    [Fact]
    public void InterruptedTextFitResumesToTheSameFile()
    {
        using var temp = new TempFolder();
        string text = temp.File("in.txt");
        File.WriteAllText(text, Line + "\nA second, shorter line.\n");
        string[] Args(string output) => ["fit", "--model", DefaultModel, "--text", text, "--context", "16", "--stride", "6", "--batch-size", "2",
                                         "--samples", "2", "--seed", "3", "--sample-positions", "0.8", "--out", output];
        string resumed = KfacCommandTests.AssertResumesToTheSameBytes(temp, Args);
        // The checkpoint belongs to its text: another text (same shapes) is refused, naming the checkpoint.
        File.Delete(resumed);
        File.WriteAllText(text, Line.Replace('e', 'a') + "\nA second, shorter line.\n");
        var (code, _, stderr) = CliRunner.Run(Args(resumed));
        Assert.NotEqual(0, code);
        Assert.Contains(resumed + ".checkpoint", stderr);
        Assert.False(File.Exists(resumed));
    }
}

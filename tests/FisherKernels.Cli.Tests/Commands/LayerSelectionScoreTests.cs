using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Commands;

/// <summary>
/// Scoring with a curvature fitted on a layer selection (SPEC §2): the epistemic part sums over the selected layers only.
/// The reference is float64 and independent of the scorer's taps and eigenbases: the engine's full backward pass gives each
/// ∇p_t of the selected weight and bias (checked against torch elsewhere), and <c>vec(X)ᵀ (M·A⊗G + τI)⁻¹ vec(X)</c> is
/// solved with the Kronecker precision built densely (Cholesky) or, for the 2048-wide head, through float64 Jacobi
/// eigenbases of A and G.
/// </summary>
public class LayerSelectionScoreTests
{
    static readonly string Model = Fixtures.Path("gpt2_tiny.onnx"), Tokens = Fixtures.Path("gpt2_tiny.tokens.npy");
    const string Projection = "transformer.h.1.attn.c_proj.weight", Head = "transformer.wte.weight";

    static string Fit(TempFolder temp, string name, params string[] selection)
    {
        string output = temp.File(name);
        var (code, _, stderr) = CliRunner.Run(["fit", "--model", Model, "--tokens", Tokens, "--fisher", "empirical", "--out", output, .. selection]);
        Assert.True(code == 0, stderr);
        return output;
    }

    static (double[] Tokens, double[] Sequences, JsonDocument Json) Score(TempFolder temp, string name, params string[] extra)
    {
        string output = temp.File(name);
        var (code, _, stderr) = CliRunner.Run(["score", "--model", Model, "--tokens", Tokens, "--out", output, .. extra]);
        Assert.True(code == 0, stderr);
        var json = JsonDocument.Parse(File.ReadAllText(output));
        var sequences = json.RootElement.GetProperty("sequences").EnumerateArray().ToArray();
        return (sequences.SelectMany(s => s.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("epistemic").GetDouble())).ToArray(),
                sequences.Select(s => s.GetProperty("epistemic").GetDouble()).ToArray(), json);
    }

    /// <summary>
    /// [∇W | ∇b] of p_t at every targeted position (next token) and of p̄ per sequence, in the [out × in(+1)] layout, from the
    /// engine's whole backward pass (every use of the weight, the tied head's Gather included).
    /// </summary>
    static (List<float[]> Tokens, List<float[]> Sequences) Gradients(string layerId)
    {
        var lm = LanguageModel.Load(Model);
        Layer layer = lm.Model.Layers.Single(l => l.Id == layerId);
        var context = new OpContext(new CpuBackend(1));
        var tokens = NpyFile.ReadInt64(Tokens);
        int batch = tokens.Shape[0], seq = tokens.Shape[1];
        IReadOnlyList<string> parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        var (perToken, perSequence) = (new List<float[]>(), new List<float[]>());
        for (int b = 0; b < batch; b++)
        {
            var row = new NdArray<long>([1, seq], tokens.Data[(b * seq)..((b + 1) * seq)]);
            var (_, backward, logits) = Derivatives.Prepare(lm, context, row, parameters);
            int vocab = logits.Shape[2];
            float[] Gradient(Func<int, double> weight)
            {
                backward.Clear();
                var seed = backward.Gradient(lm.LogitsOutput).Data;
                for (int t = 0; t < seq - 1; t++)
                {
                    double w = weight(t);
                    if (w == 0) continue;
                    double[] p = Reference.Softmax(logits.Data.AsSpan(t * vocab, vocab));
                    long y = row.Data[t + 1];
                    for (int k = 0; k < vocab; k++) seed[t * vocab + k] = (float)(w * p[y] * ((k == y ? 1 : 0) - p[k]));
                }
                backward.Run(context);
                var x = new float[LayerLayout.Size(layer)];
                LayerLayout.ToOutIn(layer, backward.Gradient(layer.Id).Data, layer.Bias is null ? default : backward.Gradient(layer.Bias).Data, x);
                return x;
            }
            for (int t = 0; t < seq - 1; t++) perToken.Add(Gradient(s => s == t ? 1 : 0));
            perSequence.Add(Gradient(_ => 1.0 / (seq - 1)));
        }
        return (perToken, perSequence);
    }

    /// <summary>vec(X)ᵀ (M·A⊗G + τI)⁻¹ vec(X) for every X, the precision built explicitly and factored once (float64 Cholesky).</summary>
    static double[] DenseQuadratics(string curvature, string layer, double tau, IReadOnlyList<float[]> xs)
    {
        var file = SafetensorsFile.Read(curvature);
        float[] aFactor = file.GetFloat32(layer + ".A").Data, gFactor = file.GetFloat32(layer + ".G").Data;
        double m = double.Parse(file.Metadata["positions"], System.Globalization.CultureInfo.InvariantCulture);
        int a = (int)Math.Round(Math.Sqrt(aFactor.Length)), g = (int)Math.Round(Math.Sqrt(gFactor.Length)), n = a * g, k = xs.Count;
        double[] precision = Reference.KronPrecision(aFactor, a, gFactor, g, m, tau);
        var vecs = new double[n * k]; // column c is vec(X_c), X[j, col] at col·g + j
        for (int c = 0; c < k; c++)
            for (int j = 0; j < g; j++)
                for (int col = 0; col < a; col++) vecs[(col * g + j) * k + c] = xs[c][j * a + col];
        double[] solved = Reference.CholeskySolve(precision, n, vecs, k);
        var result = new double[k];
        for (int i = 0; i < n; i++)
            for (int c = 0; c < k; c++) result[c] += vecs[i * k + c] * solved[i * k + c];
        return result;
    }

    /// <summary>Σ_ij (Q_Gᵀ X Q_A)_ij² / (M λ_G,i λ_A,j + τ) with float64 Jacobi eigenbases (SPEC §4's formula).</summary>
    static double[] EigenQuadratics(string curvature, string layer, double tau, IReadOnlyList<float[]> xs)
    {
        var file = SafetensorsFile.Read(curvature);
        float[] aFactor = file.GetFloat32(layer + ".A").Data, gFactor = file.GetFloat32(layer + ".G").Data;
        double m = double.Parse(file.Metadata["positions"], System.Globalization.CultureInfo.InvariantCulture);
        int a = (int)Math.Round(Math.Sqrt(aFactor.Length)), g = (int)Math.Round(Math.Sqrt(gFactor.Length));
        var (la, qa, lg, qg) = (new double[a], new double[a * a], new double[g], new double[g * g]);
        Reference.JacobiEigen(aFactor.Select(v => (double)v).ToArray(), a, la, qa);
        Reference.JacobiEigen(gFactor.Select(v => (double)v).ToArray(), g, lg, qg);
        return xs.Select(x =>
        {
            var left = new double[g * a]; // Q_Gᵀ X
            for (int i = 0; i < g; i++)
                for (int r = 0; r < g; r++)
                    for (int j = 0; j < a; j++) left[i * a + j] += qg[r * g + i] * x[r * a + j];
            double sum = 0;
            for (int i = 0; i < g; i++)
                for (int j = 0; j < a; j++)
                {
                    double rotated = 0; // (Q_Gᵀ X Q_A)_ij
                    for (int c = 0; c < a; c++) rotated += left[i * a + c] * qa[c * a + j];
                    sum += rotated * rotated / (m * Math.Max(lg[i], 0) * Math.Max(la[j], 0) + tau);
                }
            return sum;
        }).ToArray();
    }

    static void AssertClose(double[] reference, double[] actual, string what)
    {
        Assert.Equal(reference.Length, actual.Length);
        double error = Math.Sqrt(reference.Select((r, i) => (actual[i] - r) * (actual[i] - r)).Sum() / reference.Sum(r => r * r));
        Assert.True(error <= 1e-3, $"{what}: relative error {error:G3} (SPEC §7: 1e-3)");
    }

    [Fact]
    public void ALayerSelectedCurvatureScoresItsLayersOnly()
    {
        using var temp = new TempFolder();
        string curvature = Fit(temp, "c.safetensors", "--layers", @"h\.1\.attn\.c_proj");
        var (tokens, sequences, json) = Score(temp, "s.json", "--method", "kfac", "--curvature", curvature, "--prior-precision", "0.5");
        var (tokenGradients, sequenceGradients) = Gradients(Projection);
        AssertClose(DenseQuadratics(curvature, Projection, 0.5, tokenGradients), tokens, "per-token epistemic");
        AssertClose(DenseQuadratics(curvature, Projection, 0.5, sequenceGradients), sequences, "per-sequence epistemic");
        // The output layer is not in the selection: no last-layer variance (and the log says why).
        Assert.False(json.RootElement.GetProperty("sequences")[0].GetProperty("tokens")[0].TryGetProperty("last_layer_logit_variance", out var v) && v.ValueKind != JsonValueKind.Null);

        // Giving the same selection again is accepted and changes nothing; the isotropic score takes it as its parameter set.
        var (again, _, _) = Score(temp, "again.json", "--method", "kfac", "--curvature", curvature, "--prior-precision", "0.5", "--layers", @"h\.1\.attn\.c_proj");
        Assert.Equal(tokens, again);
        var (isotropic, _, _) = Score(temp, "iso.json", "--method", "isotropic", "--layers", @"h\.1\.attn\.c_proj");
        AssertClose(tokenGradients.Select(x => x.Sum(v => (double)v * v)).ToArray(), isotropic, "isotropic per-token epistemic");
    }

    [Fact]
    public void ALastLayerCurvatureScoresTheHeadOverAllItsUses()
    {
        using var temp = new TempFolder();
        string curvature = Fit(temp, "c.safetensors", "--last-layer");
        var (tokens, sequences, json) = Score(temp, "s.json", "--curvature", curvature);
        var (tokenGradients, sequenceGradients) = Gradients(Head);
        AssertClose(EigenQuadratics(curvature, Head, 1.0, tokenGradients), tokens, "per-token epistemic");
        AssertClose(EigenQuadratics(curvature, Head, 1.0, sequenceGradients), sequences, "per-sequence epistemic");
        Assert.True(json.RootElement.GetProperty("sequences")[0].GetProperty("tokens")[0].GetProperty("last_layer_logit_variance").GetDouble() > 0);
    }

    [Fact]
    public void ASelectionOtherThanTheCurvaturesIsOneLineAndWritesNothing()
    {
        using var temp = new TempFolder();
        string curvature = Fit(temp, "c.safetensors", "--last-layer");
        foreach (string verb in new[] { "score", "calibrate", "natgrad" })
        {
            string output = temp.File(verb + (verb == "score" ? ".json" : ".safetensors"));
            var (code, _, stderr) = CliRunner.Run(verb, "--model", Model, "--tokens", Tokens, "--curvature", curvature, "--layers", "c_fc", "--out", output);
            Assert.NotEqual(0, code);
            Assert.Equal($"fisherkernels: curvature '{curvature}' was fitted with --last-layer, not --layers 'c_fc': give the same selection, or none to use the curvature's", stderr.Trim());
            Assert.False(File.Exists(output));
        }
        // A pattern that matches nothing or does not parse: one line naming the option, before any work.
        foreach (var (pattern, message) in new[] { ("nothing_matches", "--layers 'nothing_matches' matches no layer"), ("(", "--layers '(' is not a valid .NET regular expression") })
        {
            string output = temp.File("bad.json");
            var (code, _, stderr) = CliRunner.Run("score", "--model", Model, "--tokens", Tokens, "--method", "isotropic", "--layers", pattern, "--out", output);
            Assert.NotEqual(0, code);
            Assert.StartsWith("fisherkernels: " + message, stderr.Trim());
            Assert.DoesNotContain('\n', stderr.Trim());
            Assert.False(File.Exists(output));
        }
    }

    [Fact]
    public void NatgradAndEwcCoverTheSelectedLayersOnly()
    {
        using var temp = new TempFolder();
        string curvature = Fit(temp, "c.safetensors", "--layers", @"h\.1\.attn\.c_proj");
        string direction = temp.File("d.safetensors");
        var (code, _, stderr) = CliRunner.Run("natgrad", "--model", Model, "--tokens", Tokens, "--curvature", curvature, "--out", direction);
        Assert.True(code == 0, stderr);
        Assert.Equal(["transformer.h.1.attn.c_proj.bias", Projection], SafetensorsFile.Read(direction).Names.Order());
        (code, string stdout, stderr) = CliRunner.Run("ewc", "--model", Model, "--candidate", Model, "--curvature", curvature, "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal([Projection], json.RootElement.GetProperty("layers").EnumerateObject().Select(p => p.Name));
    }
}

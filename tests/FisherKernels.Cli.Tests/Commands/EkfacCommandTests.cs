using System.Globalization;
using System.Text.Json;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;

namespace FisherKernels.Tests.Commands;

/// <summary>
/// EK-FAC (SPEC §3 <c>fit --ekfac</c>, §4) as a user runs it, against the torch float64 goldens <c>&lt;m&gt;.ekfac.safetensors</c>
/// (E from each position's own rows in the float64 factors' eigenbases) and <c>&lt;m&gt;.scores_ekfac.json</c> (per-position
/// gradients through <c>Σ (Q_Gᵀ X Q_A)² / (M E + τ)</c>), written by tests/fixtures/generate.py.
/// </summary>
public class EkfacCommandTests
{
    static (int Code, string Out, string Err) FitEkfac(string model, string output, params string[] extra) =>
        CliRunner.Run(["fit", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
                       "--fisher", "empirical", "--ekfac", "--out", output, .. extra]);

    /// <summary>A, G and E of the fit within 1e-3 of the golden's, per tensor; its scores (token and sequence) as well, reported as <c>ekfac</c>.</summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    public void FitAndScoreMatchTheTorchGoldens(string model)
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = FitEkfac(model, temp.File("c.safetensors"));
        Assert.True(code == 0, stderr);
        KfacCommandTests.AssertFactorsMatch(Fixtures.Path(model + ".ekfac.safetensors"), temp.File("c.safetensors"), 1e-3);
        (code, _, stderr) = CliRunner.Run("score", "--model", Fixtures.Path(model + ".onnx"), "--tokens", Fixtures.Path(model + ".tokens.npy"),
                                          "--method", "kfac", "--curvature", temp.File("c.safetensors"), "--prior-precision", "1", "--out", temp.File("s.json"));
        Assert.True(code == 0, stderr);
        Assert.Contains("EK-FAC, dense eigenbasis", stderr);
        KfacCommandTests.AssertKfacScoresMatchTheGolden(Fixtures.Path(model + ".scores_ekfac.json"), temp.File("s.json"), "ekfac");
    }

    /// <summary>
    /// One position (M = 1): A = ããᵀ and G = ggᵀ have rank 1, so in their eigenbases the only non-zero squares are |ã|² and |g|²,
    /// and E must be K-FAC's eigenvalue products λ_G λ_Aᵀ (from a float64 decomposition of the file's own factors).
    /// </summary>
    [Fact]
    public void OnePositionGivesTheEigenvalueProducts()
    {
        using var temp = new TempFolder();
        NpyFile.Write(temp.File("t.npy"), new NdArray<long>([1, 1], [5L]));
        NpyFile.Write(temp.File("y.npy"), new NdArray<long>([1, 1], [6L]));
        var (code, _, stderr) = CliRunner.Run("fit", "--model", Fixtures.Path("gpt2_tiny.onnx"), "--tokens", temp.File("t.npy"), "--targets", temp.File("y.npy"),
                                              "--fisher", "empirical", "--ekfac", "--out", temp.File("c.safetensors"));
        Assert.True(code == 0, stderr);
        KfacCurvature c = KfacCurvature.Load(temp.File("c.safetensors"));
        var backend = new Backends.Cpu.CpuBackend(threads: 1);
        Assert.Equal(9, c.Layers.Count);
        foreach (KroneckerBlock b in c.Layers)
        {
            Assert.Equal(1.0, b.Positions);
            var basis = KronEigenbasis.Create(backend, b.A.Data, b.ADim, b.G.Data, b.GDim, 1, 1);
            float[] e = b.E!.Data;
            double largest = 0, error = 0;
            for (int i = 0; i < b.GDim; i++)
                for (int j = 0; j < b.ADim; j++)
                {
                    double product = basis.LambdaG[i] * basis.LambdaA[j];
                    largest = Math.Max(largest, product);
                    error = Math.Max(error, Math.Abs(e[i * b.ADim + j] - product));
                }
            Assert.True(largest > 0, b.Layer);
            Assert.True(error <= 1e-5 * largest, $"{b.Layer}: |E − λ_G λ_Aᵀ| {error}, largest {largest}");
        }
    }

    /// <summary>
    /// calibrate --prior-precision auto on an EK-FAC curvature: τ maximizes SPEC §4's evidence with <c>log det = Σ log(M E_ij + τ)</c>.
    /// Reference: a float64 golden-section search of that objective over the torch golden's E (not ours) and the model's weights.
    /// </summary>
    [Fact]
    public void CalibrateAutoMaximizesTheEvidenceOfE()
    {
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), tokens = Fixtures.Path("gpt2_tiny.tokens.npy");
        var (code, _, stderr) = FitEkfac("gpt2_tiny", temp.File("c.safetensors"));
        Assert.True(code == 0, stderr);
        (code, _, stderr) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokens, "--curvature", temp.File("c.safetensors"),
                                          "--prior-precision", "auto", "--out", temp.File("auto.safetensors"));
        Assert.True(code == 0, stderr);
        double tau = double.Parse(SafetensorsFile.Read(temp.File("auto.safetensors")).Metadata["prior_precision"], CultureInfo.InvariantCulture);

        SafetensorsFile golden = SafetensorsFile.Read(Fixtures.Path("gpt2_tiny.ekfac.safetensors"));
        double positions = double.Parse(golden.Metadata["positions"], CultureInfo.InvariantCulture);
        var lm = Onnx.LanguageModel.Load(model);
        var terms = lm.Model.Layers.Select(l =>
        {
            double norm = new[] { l.Id, l.Bias }.Where(n => n is not null).Sum(n => ((NdArray<float>)lm.Model.Graph.Initializers[n!]).Data.Sum(v => (double)v * v));
            return (E: ((NdArray<double>)golden.Tensors[l.Id + ".E"]).Data, Norm: norm);
        }).ToArray();
        Assert.Equal(9, terms.Length);
        double Evidence(double t) => terms.Sum(l => -0.5 * t * l.Norm - 0.5 * l.E.Sum(e => Math.Log(positions * e + t)) + 0.5 * l.E.Length * Math.Log(t));
        double lo = Math.Log(1e-6), hi = Math.Log(1e6), r = (Math.Sqrt(5) - 1) / 2;
        while (hi - lo > 1e-9)
        {
            double x1 = hi - r * (hi - lo), x2 = lo + r * (hi - lo);
            if (Evidence(Math.Exp(x1)) < Evidence(Math.Exp(x2))) lo = x1; else hi = x2;
        }
        double reference = Math.Exp((lo + hi) / 2);
        Assert.True(Math.Abs(tau / reference - 1) < 1e-3, $"τ {tau}, golden section over the torch E {reference}");

        // The K-FAC τ of the same factors differs (E is not the eigenvalue products), so the test tells the two apart.
        (code, _, stderr) = CliRunner.Run("calibrate", "--model", model, "--tokens", tokens, "--curvature", Fixtures.Path("gpt2_tiny.kfac.safetensors"),
                                          "--prior-precision", "auto", "--out", temp.File("kfac.safetensors"));
        Assert.True(code == 0, stderr);
        double kfacTau = double.Parse(SafetensorsFile.Read(temp.File("kfac.safetensors")).Metadata["prior_precision"], CultureInfo.InvariantCulture);
        Assert.True(Math.Abs(kfacTau / reference - 1) > 1e-2, $"K-FAC τ {kfacTau}, EK-FAC τ {reference}");

        // score uses the stored τ and reports ekfac.
        (code, _, stderr) = CliRunner.Run("score", "--model", model, "--tokens", tokens, "--curvature", temp.File("auto.safetensors"), "--out", temp.File("s.json"));
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(File.ReadAllText(temp.File("s.json")));
        Assert.Equal("ekfac", json.RootElement.GetProperty("method").GetString());
        Assert.Equal(tau, json.RootElement.GetProperty("prior_precision").GetDouble());
    }

    /// <summary>merge drops E and says so; --init, --cluster and text of several window lengths refuse --ekfac in one line, writing nothing.</summary>
    [Fact]
    public void MergeDropsEAndMergingFitsRefuseIt()
    {
        using var temp = new TempFolder();
        var (code, _, stderr) = FitEkfac("gpt2_tiny", temp.File("c.safetensors"));
        Assert.True(code == 0, stderr);
        (code, string stdout, stderr) = CliRunner.Run("merge", temp.File("c.safetensors"), temp.File("c.safetensors"), "--out", temp.File("m.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Contains("E was dropped", stdout);
        Assert.False(KfacCurvature.Load(temp.File("m.safetensors")).IsEkfac);
        Assert.DoesNotContain(SafetensorsFile.Read(temp.File("m.safetensors")).Names, n => n.EndsWith(".E", StringComparison.Ordinal));

        (code, _, stderr) = FitEkfac("gpt2_tiny", temp.File("i.safetensors"), "--init", temp.File("m.safetensors"));
        Assert.NotEqual(0, code);
        Assert.Contains("--ekfac cannot be combined with --init", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(File.Exists(temp.File("i.safetensors")));

        (code, _, stderr) = FitEkfac("gpt2_tiny", temp.File("k.safetensors"), "--cluster", "x");
        Assert.NotEqual(0, code);
        Assert.Contains("--ekfac cannot run on a cluster", stderr);
        Assert.False(File.Exists(temp.File("k.safetensors")));
    }
}

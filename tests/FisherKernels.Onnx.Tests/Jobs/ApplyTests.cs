using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using FisherKernels.Tests.Plan;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Jobs;

/// <summary><c>apply --step η</c> (SPEC §4): the written model's logits move along the JVP of η·d, to first order in η.</summary>
public class ApplyTests
{
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    public void LogitsMoveAlongTheJvpToFirstOrder(string name)
    {
        // d: natgrad's direction on the fixture's tokens and curvature. Reference: z(θ + η d) − z(θ) − η J·d, with J·d from the
        // engine's JVP (itself checked against torch), is O(η²): halving η divides it by about 4. ONNX Runtime runs each
        // written model to the logits our engine computes for it.
        using var temp = new TempFolder();
        string model = Fixtures.Path(name + ".onnx");
        var lm = LanguageModel.Load(model);
        var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(1));
        var tokens = NpyFile.ReadInt64(Fixtures.Path(name + ".tokens.npy"));
        var direction = new NatgradService(lm, context).Direction(tokens, null, Fixtures.Path(name + ".kfac.safetensors"), new PosteriorOptions { PriorPrecision = 1.0 });
        string directionPath = temp.File("d.safetensors");
        DirectionFile.Write(directionPath, direction, model, "test");

        float[] z0 = lm.Forward(context, tokens).Data;
        float[] jd = Derivatives.Jvp(lm, context, tokens, direction).Data;
        double jdMax = jd.Max(Math.Abs);
        double eta = -0.2 / jdMax; // a descent step: negative η
        var errors = new List<double>();
        foreach (double step in new[] { eta, eta / 2 })
        {
            string output = temp.File($"moved{errors.Count}.onnx");
            ApplyResult result = ApplyService.Apply(lm, directionPath, step, output);
            Assert.Equal(direction.Count, result.Tensors);
            var moved = LanguageModel.Load(output);
            float[] z = moved.Forward(context, tokens).Data;
            var ort = OnnxRuntimeReference.Run(output, moved.Inputs(tokens))[moved.LogitsOutput].Data;
            double scale = z.Max(Math.Abs);
            for (int i = 0; i < z.Length; i++) Assert.True(Math.Abs(z[i] - ort[i]) <= 1e-4 * scale, $"η {step}: logit {i} ours {z[i]}, ONNX Runtime {ort[i]}");
            double error = 0;
            for (int i = 0; i < z.Length; i++) error = Math.Max(error, Math.Abs(z[i] - z0[i] - step * jd[i]));
            errors.Add(error);
        }
        double first = Math.Abs(eta) * jdMax; // the size of the first-order change, 0.2
        Assert.True(errors[0] < 0.1 * first, $"remainder {errors[0]} against a first-order change of {first}");
        double ratio = errors[0] / errors[1];
        Assert.True(ratio is > 3.0 and < 5.5, $"halving η divided the remainder by {ratio} ({errors[0]} → {errors[1]}), not about 4");
    }

    [Fact]
    public void BadDirectionsAndStepsAreOneErrorAndNothingIsWritten()
    {
        using var temp = new TempFolder();
        string model = Fixtures.Path("gpt2_tiny.onnx"), output = temp.File("out.onnx");
        var lm = LanguageModel.Load(model);
        var weight = lm.Model.Layers[0];
        var shape = lm.Model.Graph.Initializers[weight.Id].Shape;
        NdArray<float> Ones(int[] s) { var a = new NdArray<float>(s); Array.Fill(a.Data, 1f); return a; }
        void Refused(Action write, string expected)
        {
            string path = temp.File("d.safetensors");
            write();
            var e = Assert.Throws<FisherKernelsException>(() => ApplyService.Apply(lm, path, 0.1, output));
            Assert.Contains(expected, e.Message);
            Assert.False(File.Exists(output));
            Assert.DoesNotContain(Directory.GetFiles(temp.Path), f => f.EndsWith(".tmp", StringComparison.Ordinal));
        }
        string d = temp.File("d.safetensors");
        // Misshaped.
        Refused(() => SafetensorsFile.Write(d, [new(weight.Id, Ones([shape[1], shape[0] + 1]))]), "shape");
        // A direction of another model: a tensor the model does not have, or natgrad's file made for another model.
        Refused(() => SafetensorsFile.Write(d, [new("model.layers.0.mlp.up_proj.weight", Ones([2, 2]))]), "not an initializer");
        Refused(() => DirectionFile.Write(d, new Dictionary<string, NdArray<float>> { [weight.Id] = Ones(shape) }, Fixtures.Path("llama_tiny.onnx"), "test"), "another model");
        // Missing: natgrad's file lists its tensors; one was removed.
        Refused(() => SafetensorsFile.Write(d, [new(weight.Id, Ones(shape))], new Dictionary<string, string>
        {
            ["format"] = DirectionFile.FormatName, ["tensors"] = $"[\"{weight.Id}\", \"{weight.Bias}\"]",
        }), $"missing tensor '{weight.Bias}'");
        // A step that makes a weight non-finite.
        SafetensorsFile.Write(d, [new(weight.Id, Ones(shape))]);
        var e = Assert.Throws<FisherKernelsException>(() => ApplyService.Apply(lm, d, 1e39, output));
        Assert.Contains("non-finite", e.Message);
        Assert.False(File.Exists(output));
    }
}

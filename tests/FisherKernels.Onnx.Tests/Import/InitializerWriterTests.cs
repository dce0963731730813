using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Operators;
using FisherKernels.Tests.Plan;

namespace FisherKernels.Tests.Import;

/// <summary>
/// The ONNX initializer writer (SPEC §5): the named initializers get the new values in their own element type, every other
/// byte of the file stays as it was, and ONNX Runtime runs the written model to the logits our engine computes for it.
/// </summary>
public class InitializerWriterTests
{
    [Theory]
    [InlineData("gpt2_tiny.onnx")]           // float32 raw_data
    [InlineData("llama_tiny_fp16.onnx")]     // float16 behind a Cast
    [InlineData("llama_tiny_bf16.onnx")]     // bfloat16
    [InlineData("gpt2_tiny_external.onnx")]  // every tensor in an external data file
    public void RewritesTheNamedInitializersAndNothingElse(string fixture)
    {
        using var temp = new TempFolder();
        string source = Fixtures.Path(fixture), output = temp.File("moved.onnx");
        var before = LanguageModel.Load(source);
        var rng = new Random(7);
        var values = new Dictionary<string, float[]>();
        foreach (var layer in before.Model.Layers.Take(3))
        {
            float[] theta = ((NdArray<float>)before.Model.Graph.Initializers[layer.Id]).Data;
            values[layer.Id] = theta.Select(v => v + (float)(0.05 * (rng.NextDouble() - 0.5))).ToArray();
        }
        InitializerWriter.Write(source, output, values);

        var after = LanguageModel.Load(output);
        bool halfPrecision = fixture.Contains("fp16") || fixture.Contains("bf16");
        foreach (string name in before.Model.Graph.InitializerOrder)
        {
            float[] old = Data(before, name), now = Data(after, name);
            if (!values.TryGetValue(name, out float[]? expected)) { Assert.Equal(old, now); continue; }
            // float16/bfloat16 keep their type: the stored value is the new one rounded (bf16: 8 bits of mantissa).
            for (int i = 0; i < now.Length; i++)
                Assert.True(halfPrecision ? Math.Abs(now[i] - expected[i]) <= 4e-3 * Math.Abs(expected[i]) + 1e-7 : now[i] == expected[i], $"{name}[{i}]: {now[i]} for {expected[i]}");
        }
        if (fixture == "gpt2_tiny.onnx")
        {
            // Byte for byte: the same length, and only the rewritten tensors' data bytes differ (each float in place).
            byte[] x = File.ReadAllBytes(source), y = File.ReadAllBytes(output);
            Assert.Equal(x.Length, y.Length);
            long changed = x.Zip(y).Count(p => p.First != p.Second);
            Assert.InRange(changed, 1, values.Values.Sum(v => 4L * v.Length));
        }
        if (fixture == "gpt2_tiny_external.onnx")
            Assert.True(File.Exists(output + ".data"), "the external tensors go to one file beside the output");

        // ONNX Runtime runs the written model, to the logits our engine gives it; and they moved.
        var tokens = NpyFile.Read(Fixtures.Path(fixture.StartsWith("gpt2", StringComparison.Ordinal) ? "gpt2_tiny.tokens.npy" : "llama_tiny.tokens.npy"));
        var context = new OpContext(new FisherKernels.Backends.Cpu.CpuBackend(1));
        var ours = after.Forward(context, tokens);
        var ort = OnnxRuntimeReference.Run(output, after.Inputs(tokens))[after.LogitsOutput];
        double scale = ours.Data.Max(Math.Abs);
        for (int i = 0; i < ours.Data.Length; i++) Assert.True(Math.Abs(ours.Data[i] - ort.Data[i]) <= 1e-4 * scale, $"logit {i}: ours {ours.Data[i]}, ONNX Runtime {ort.Data[i]}");
        var logitsBefore = before.Forward(context, tokens);
        Assert.True(logitsBefore.Data.Zip(ours.Data).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, "the logits moved");
    }

    static float[] Data(LanguageModel lm, string name) => lm.Model.Graph.Initializers[name] switch
    {
        NdArray<float> f => f.Data,
        NdArray<long> l => l.Data.Select(v => (float)v).ToArray(),
        NdArray<int> i => i.Data.Select(v => (float)v).ToArray(),
        NdArray<bool> b => b.Data.Select(v => v ? 1f : 0f).ToArray(),
        var other => throw new InvalidOperationException(other.ElementType.ToString()),
    };

    [Fact]
    public void BadValuesAreRefusedAndNothingIsWritten()
    {
        using var temp = new TempFolder();
        string source = Fixtures.Path("gpt2_tiny.onnx"), output = temp.File("bad.onnx");
        var lm = LanguageModel.Load(source);
        string weight = lm.Model.Layers[0].Id;
        int count = lm.Model.Graph.Initializers[weight].Shape.Aggregate(1, (a, b) => a * b);
        void Refused(Dictionary<string, float[]> values, string expected)
        {
            var e = Assert.Throws<FisherKernelsException>(() => InitializerWriter.Write(source, output, values));
            Assert.Contains(expected, e.Message);
            Assert.Empty(Directory.GetFiles(temp.Path));
        }
        Refused(new() { ["no.such.tensor"] = [1f] }, "no.such.tensor");
        Refused(new() { [weight] = new float[count - 1] }, weight);
        var infinite = new float[count];
        infinite[3] = float.PositiveInfinity;
        Refused(new() { [weight] = infinite }, "not finite");
        // float16: a value beyond its range is not finite there.
        var half = LanguageModel.Load(Fixtures.Path("llama_tiny_fp16.onnx"));
        string halfWeight = half.Model.Layers[0].Id;
        var big = new float[half.Model.Graph.Initializers[halfWeight].Shape.Aggregate(1, (a, b) => a * b)];
        big[0] = 1e6f;
        var e = Assert.Throws<FisherKernelsException>(() => InitializerWriter.Write(Fixtures.Path("llama_tiny_fp16.onnx"), output, new Dictionary<string, float[]> { [halfWeight] = big }));
        Assert.Contains("Float16", e.Message);
        Assert.Empty(Directory.GetFiles(temp.Path));
    }
}

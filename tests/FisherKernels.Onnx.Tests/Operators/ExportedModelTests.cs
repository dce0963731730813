using FisherKernels.IO;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// Every operator of the three fixture transformers (GPT-2, LLaMA and BERT exports, tests/fixtures) run node by
/// node through the operator contract alone — no plan, no fusion — against the torch float64 goldens: logits
/// (SPEC §7: max|Δ| ≤ 1e-4·max|ref|), the gradient of the next-token loss for every float initializer by
/// chaining the VJPs, and J·V for the fixture direction by chaining the JVPs (relative error ≤ 1e-3 per tensor).
/// </summary>
public sealed class ExportedModelTests
{
    private static readonly string Fixtures = Path.Combine(FindRoot(), "tests", "fixtures");

    private sealed record Step(Operator Op, string[] Inputs, string[] Outputs);

    private sealed class Run
    {
        public readonly Dictionary<string, NdArray> Values = new();
        public readonly List<Step> Steps = new();
        public required OnnxGraph Graph { get; init; }
    }

    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    public void LogitsGradientsAndJvpMatchTorch(string model)
    {
        var run = Forward(model);
        var logits = (NdArray<float>)run.Values[run.Graph.Outputs[0].Name];
        var expected = (NdArray<double>)NpyFile.Read(Path.Combine(Fixtures, $"{model}.logits.npy"));
        Assert.Equal(expected.Shape, logits.Shape);
        double scale = expected.Data.Max(Math.Abs), worst = 0;
        for (int i = 0; i < expected.Data.Length; i++) worst = Math.Max(worst, Math.Abs(logits.Data[i] - expected.Data[i]));
        Assert.True(worst <= 1e-4 * scale, $"{model} logits: max|Δ| {worst:g3} > 1e-4·{scale:g3}");

        var grads = Backward(run, LossCotangent(run, logits));
        var goldenGrads = SafetensorsFile.Read(Path.Combine(Fixtures, $"{model}.grads_all.safetensors"));
        double largest = goldenGrads.Names.Max(n => Norm(((NdArray<double>)goldenGrads.Tensors[n]).Data));
        foreach (var name in goldenGrads.Names)
        {
            Assert.True(grads.TryGetValue(name, out var g), $"{model}: no gradient reached initializer '{name}'");
            var reference = (NdArray<double>)goldenGrads.Tensors[name];
            // A key bias cannot change the attention (softmax is shift-invariant): its gradient is exactly 0,
            // and float32 leaves rounding noise there; that noise must stay negligible against the other gradients.
            if (Norm(reference.Data) < 1e-9 * largest)
                Assert.True(Norm(Array.ConvertAll(g!.Data, v => (double)v)) < 1e-5 * largest, $"{model} gradient of '{name}' should vanish");
            else AssertClose(reference, g!, $"{model} gradient of '{name}'");
        }

        var direction = SafetensorsFile.Read(Path.Combine(Fixtures, $"{model}.direction.safetensors"));
        var jv = Tangent(run, direction.Names.ToDictionary(n => n, n => direction.GetFloat32(n)));
        AssertClose((NdArray<double>)NpyFile.Read(Path.Combine(Fixtures, $"{model}.jvp.npy")), jv, $"{model} J·V");
    }

    private static Run Forward(string model)
    {
        var graph = OnnxImporter.Load(Path.Combine(Fixtures, $"{model}.onnx"));
        var run = new Run { Graph = graph };
        foreach (var (name, value) in graph.Initializers) run.Values[name] = value;
        var tokens = (NdArray<long>)NpyFile.Read(Path.Combine(Fixtures, $"{model}.tokens.npy"));
        foreach (var input in graph.Inputs.Where(i => !graph.Initializers.ContainsKey(i.Name)))
        {
            // SPEC §1 defaults for the inputs other than the tokens.
            var shape = tokens.Shape;
            run.Values[input.Name] = input.Name switch
            {
                "input_ids" => tokens,
                "attention_mask" => new NdArray<long>(shape, Enumerable.Repeat(1L, tokens.Data.Length).ToArray()),
                "token_type_ids" => new NdArray<long>(shape),
                "position_ids" => new NdArray<long>(shape, Enumerable.Range(0, tokens.Data.Length).Select(i => (long)(i % shape[1])).ToArray()),
                _ => throw new InvalidOperationException($"{model}: unexpected input {input.Name}"),
            };
        }
        foreach (var node in graph.Nodes)
        {
            int opset = (int)graph.Opsets[node.Domain.Length == 0 ? "" : node.Domain];
            var op = OperatorRegistry.Create(new OperatorNode(node.Name, node.OpType, node.Domain, opset, node.Attributes, node.Inputs.Length, node.Outputs.Length));
            var inputs = node.Inputs.Select(n => n.Length == 0 ? null : run.Values[n]).ToArray();
            var outputs = OpRunner.Allocate(op, inputs);
            op.Forward(OpRunner.Context, inputs, outputs);
            for (int j = 0; j < outputs.Length; j++) if (node.Outputs[j].Length > 0) run.Values[node.Outputs[j]] = outputs[j];
            run.Steps.Add(new Step(op, node.Inputs, node.Outputs));
        }
        return run;
    }

    /// <summary>∂L/∂z for L = Σ −log softmax(z_t)[y_t] over next-token targets: softmax − onehot at targeted positions.</summary>
    private static NdArray<float> LossCotangent(Run run, NdArray<float> logits)
    {
        var tokens = (NdArray<long>)run.Values["input_ids"];
        int batch = logits.Shape[0], seq = logits.Shape[1], vocab = logits.Shape[2];
        var g = new NdArray<float>(logits.Shape);
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < seq - 1; t++)
            {
                int row = (b * seq + t) * vocab;
                double max = double.NegativeInfinity, sum = 0;
                for (int v = 0; v < vocab; v++) max = Math.Max(max, logits.Data[row + v]);
                for (int v = 0; v < vocab; v++) sum += Math.Exp(logits.Data[row + v] - max);
                for (int v = 0; v < vocab; v++) g.Data[row + v] = (float)(Math.Exp(logits.Data[row + v] - max) / sum);
                g.Data[row + (int)tokens.Data[b * seq + t + 1]] -= 1;
            }
        return g;
    }

    private static Dictionary<string, NdArray<float>> Backward(Run run, NdArray<float> seed)
    {
        var grads = new Dictionary<string, NdArray<float>> { [run.Graph.Outputs[0].Name] = seed };
        for (int s = run.Steps.Count - 1; s >= 0; s--)
        {
            var step = run.Steps[s];
            var outputGrads = step.Outputs.Select(n => grads.GetValueOrDefault(n)).ToArray();
            if (outputGrads.All(g => g is null)) continue;
            var inputGrads = new NdArray<float>?[step.Inputs.Length];
            for (int i = 0; i < step.Inputs.Length; i++)
            {
                string name = step.Inputs[i];
                if (name.Length == 0 || !step.Op.IsDifferentiable(i) || run.Values[name] is not NdArray<float> value) continue;
                if (!grads.TryGetValue(name, out var g)) grads[name] = g = new NdArray<float>(value.Shape);
                inputGrads[i] = g;
            }
            var inputs = step.Inputs.Select(n => n.Length == 0 ? null : run.Values[n]).ToArray();
            var outputs = step.Outputs.Select(n => run.Values[n]).ToArray();
            step.Op.Vjp(OpRunner.Context, inputs, outputs, outputGrads, inputGrads);
        }
        return grads;
    }

    private static NdArray<float> Tangent(Run run, Dictionary<string, NdArray<float>> direction)
    {
        var tangents = new Dictionary<string, NdArray<float>>(direction);
        foreach (var step in run.Steps)
        {
            var inputTangents = step.Inputs.Select((n, i) => n.Length > 0 && step.Op.IsDifferentiable(i) ? tangents.GetValueOrDefault(n) : null).ToArray();
            if (inputTangents.All(t => t is null)) continue;
            var inputs = step.Inputs.Select(n => n.Length == 0 ? null : run.Values[n]).ToArray();
            var outputs = step.Outputs.Select(n => run.Values[n]).ToArray();
            var outputTangents = outputs.Select(o => o is NdArray<float> ? new NdArray<float>(o.Shape) : null).ToArray();
            step.Op.Jvp(OpRunner.Context, inputs, outputs, inputTangents, outputTangents);
            for (int j = 0; j < outputs.Length; j++) if (outputTangents[j] is { } t) tangents[step.Outputs[j]] = t;
        }
        return tangents[run.Graph.Outputs[0].Name];
    }

    private static void AssertClose(NdArray<double> expected, NdArray<float> actual, string what)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Data.Length; i++)
        {
            diff += Math.Pow(actual.Data[i] - expected.Data[i], 2);
            norm += expected.Data[i] * expected.Data[i];
        }
        Assert.True(Math.Sqrt(diff) <= 1e-3 * Math.Sqrt(norm), $"{what}: relative error {Math.Sqrt(diff / norm):g3} > 1e-3");
    }

    private static double Norm(double[] values) => Math.Sqrt(values.Sum(v => v * v));

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FisherKernels.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("FisherKernels.sln not found above the test binaries");
    }
}

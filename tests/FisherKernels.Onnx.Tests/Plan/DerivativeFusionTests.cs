using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;
using static FisherKernels.Tests.Plan.FusionTests;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// Fusions in derivative plans (variables, values kept): the fixtures' normalizations and GELUs fuse (not the
/// packed MatMuls or attention, which have no derivatives), every layer tap survives, and a variable constant
/// inside a chain keeps that chain decomposed. Gradients and tangents of a hand-built layer, fused or not,
/// against a float64 implementation of it differentiated by central differences. (The fixtures' fused
/// derivatives are checked against the torch goldens by DerivativeTests and the scoring tests.)
/// </summary>
public class DerivativeFusionTests
{
    private static readonly OpContext Context = new(new CpuBackend(1));
    private static readonly OpContext TwoThreads = new(new CpuBackend(2));

    public static TheoryData<string, string[], string[]> FixtureFusions() => new()
    {
        { "gpt2_tiny", ["LayerNormalization", "Gelu"], ["Tanh", "Pow", "Sqrt"] },
        { "llama_tiny", ["SimplifiedLayerNormalization"], ["Pow", "Sqrt"] },
        // bert's LayerNormalization nodes are already fused in the file.
        { "bert_tiny", ["Gelu"], ["Erf"] },
        // llama with grouped-query attention: its Loops are unrolled before fusion, so the same RMSNorms fuse.
        { "llama_gqa_tiny", ["SimplifiedLayerNormalization"], ["Pow", "Sqrt"] },
    };

    [Theory]
    [MemberData(nameof(FixtureFusions))]
    public void FixtureDerivativePlansFuseNormalizationsAndGelus(string model, string[] present, string[] absent)
    {
        var lm = LanguageModel.Load(Fixtures.Path(model + ".onnx"));
        var shapes = lm.Inputs(NpyFile.Read(Fixtures.Path(ForwardTests.TokensOf(model)))).ToDictionary(kv => kv.Key, kv => kv.Value.Shape);
        var all = LayerDiscovery.AllParameters(lm.Model.Graph).ToHashSet();
        foreach (var variables in new[] { LayerDiscovery.DefaultParameters(lm.Model.Layers).ToHashSet(), all })
        {
            var plan = ExecutionPlan.Build(lm.Model, shapes, variables, keepAll: true);
            foreach (var type in present) Assert.Contains(plan.Steps, s => Kind(s.Op) == type);
            foreach (var type in absent) Assert.DoesNotContain(plan.Steps, s => Kind(s.Op) == type);
            Assert.DoesNotContain(plan.Steps, s => s.Op is PackedMatMul or FusedAttention);
            // The K-FAC and score taps are chain inputs and outputs: each keeps its storage.
            foreach (var application in lm.Model.Layers.SelectMany(l => l.Applications))
            {
                Assert.NotNull(plan.Get(application.InputValue));
                Assert.NotNull(plan.Get(application.OutputValue));
            }
        }
        // Under --params all the decomposed normalizations' scales and biases are the fused operators' inputs.
        var full = ExecutionPlan.Build(lm.Model, shapes, all, keepAll: true);
        foreach (var step in full.Steps.Where(s => s.Op is Normalization && s.Op.Node.Name.EndsWith("(fused)", StringComparison.Ordinal)))
            Assert.All(step.Node.Inputs.Skip(1), input => Assert.Contains(input, all));
    }

    /// <summary>Initializers read inside each chain (not its scale or bias).</summary>
    private static readonly Dictionary<string, string[]> ChainConstants = new()
    {
        ["tanh"] = ["half", "three", "c", "k", "one"],
        ["erf"] = ["half", "root2", "one"],
        ["layer"] = ["two", "eps"],
        ["rms"] = ["two", "eps"],
    };

    [Theory]
    [InlineData("tanh", "layer", "")]
    [InlineData("erf", "rms", "")]
    [InlineData("tanh", "rms", "eps")]
    [InlineData("erf", "layer", "eps")]
    [InlineData("tanh", "layer", "c")]
    [InlineData("tanh", "layer", "k")]
    [InlineData("tanh", "rms", "half")]
    [InlineData("tanh", "rms", "one")]
    [InlineData("erf", "layer", "root2")]
    [InlineData("erf", "rms", "one")]
    public void FusedLayerDerivativesMatchFloat64(string gelu, string norm, string variableConstant)
    {
        using var temp = new TempFolder();
        string path = temp.File("layer.onnx");
        var proto = LayerModel(gelu, norm);
        File.WriteAllBytes(path, proto.ToByteArray());
        var model = OnnxModel.Load(path);
        var variables = new List<string> { "w", "b", "gamma" };
        if (norm == "layer") variables.Add("beta");
        if (variableConstant.Length > 0) variables.Add(variableConstant);
        var random = new Random(17);
        var x = OpRandom(random, 2, 5, 8);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        var plan = ExecutionPlan.Build(model, new Dictionary<string, int[]> { ["x"] = x.Shape }, variables.ToHashSet(), keepAll: true);

        bool geluFused = !ChainConstants[gelu].Contains(variableConstant), normFused = !ChainConstants[norm].Contains(variableConstant);
        Assert.Equal(geluFused, plan.Steps.Any(s => Kind(s.Op) == "Gelu"));
        Assert.Equal(normFused, plan.Steps.Any(s => Kind(s.Op) == (norm == "layer" ? "LayerNormalization" : "SimplifiedLayerNormalization")));
        Assert.Equal(geluFused, !plan.Steps.Any(s => Kind(s.Op) is "Tanh" or "Erf"));
        Assert.Equal(normFused, !plan.Steps.Any(s => Kind(s.Op) == "Sqrt"));

        var parameters = proto.Graph.Initializer.ToDictionary(t => t.Name, t => t.FloatData.Select(v => (double)v).ToArray());
        var xs = Array.ConvertAll(x.Data, v => (double)v);
        var u = Enumerable.Range(0, 2 * 5 * 12).Select(_ => random.NextDouble() * 2 - 1).ToArray();
        var direction = variables.ToDictionary(n => n, n => parameters[n].Select(_ => random.NextDouble() * 2 - 1).ToArray());

        foreach (var context in new[] { Context, TwoThreads })
        {
            plan.Run(context, inputs);
            var y = (NdArray<float>)plan.Get("y");
            AssertClose(Forward(gelu, norm, parameters, xs), Array.ConvertAll(y.Data, v => (double)v), 1e-5, "y");

            // Reverse mode: the gradient of ⟨u, y⟩ for every variable, against central differences of the float64 layer.
            var backward = new Backward(plan, ["y"]);
            backward.Clear();
            Array.Copy(Array.ConvertAll(u, v => (float)v), backward.Gradient("y").Data, u.Length);
            backward.Run(context);
            foreach (var name in variables)
            {
                var expected = new double[parameters[name].Length];
                for (int i = 0; i < expected.Length; i++)
                {
                    var e = new double[expected.Length];
                    e[i] = 1;
                    expected[i] = Dot(u, CentralDifference(gelu, norm, parameters, xs, name, e));
                }
                AssertClose(expected, Array.ConvertAll(backward.Gradient(name).Data, v => (double)v), 1e-4, $"gradient of {name}");
            }

            // Forward mode: the tangent of y along a direction over every variable (normalization scale and bias included).
            var tangent = new Tangent(plan);
            foreach (var name in variables) Array.Copy(Array.ConvertAll(direction[name], v => (float)v), tangent.Direction(name).Data, direction[name].Length);
            tangent.Run(context);
            var jvp = new double[u.Length];
            foreach (var name in variables)
            {
                var partial = CentralDifference(gelu, norm, parameters, xs, name, direction[name]);
                for (int i = 0; i < jvp.Length; i++) jvp[i] += partial[i];
            }
            AssertClose(jvp, Array.ConvertAll(tangent.Get("y").Data, v => (double)v), 1e-4, "tangent of y");
        }
    }

    [Fact]
    public void GeluDerivativeFastPathsMatchFloat64()
    {
        // 16-wide, Vector<float>-wide and scalar parts, and arguments where exp saturates.
        var x = Enumerable.Range(0, 16 * 8 + 8 + 5).Select(i => (float)(i * 0.11 - 7.5)).Concat([-40f, 40f, -100f, 100f, 0f]).ToArray();
        var d = new float[x.Length];
        FastMath.GeluTanhDerivative(x, d);
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i], t = Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v));
            double expected = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * v * v);
            Assert.True(Math.Abs(d[i] - expected) <= 2e-6, $"tanh GELU' at {v}: {d[i]} vs {expected}");
        }
        FastMath.GeluErfDerivative(x, d);
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i], expected = 0.5 * (1 + Erf(v / Math.Sqrt(2))) + v * Math.Exp(-0.5 * v * v) / Math.Sqrt(2 * Math.PI);
            Assert.True(Math.Abs(d[i] - expected) <= 2e-6, $"erf GELU' at {v}: {d[i]} vs {expected}");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GeluWithSlopeMatchesFloat64OnTheThreads(bool tanh)
    {
        // Long enough to split across two threads; the input gradient both fresh (written over garbage) and accumulated.
        var random = new Random(3);
        var x = OpRandom(random, 1, 64, 1024);
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] *= 4;
        var gy = OpRandom(random, 1, 64, 1024);
        var op = new GeluWithSlope(new OperatorNode("gelu", "Gelu", "fisherkernels", 1, OperatorAttributes.Empty, 1, 2), tanh);
        double[] expectedY = new double[x.Length], slope = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double v = x.Data[i];
            if (tanh)
            {
                double t = Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v));
                expectedY[i] = 0.5 * v * (1 + t);
                slope[i] = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * v * v);
            }
            else
            {
                double cdf = 0.5 * (1 + Erf(v / Math.Sqrt(2)));
                expectedY[i] = v * cdf;
                slope[i] = cdf + v * Math.Exp(-0.5 * v * v) / Math.Sqrt(2 * Math.PI);
            }
        }
        foreach (var context in new[] { Context, TwoThreads })
        {
            var y = new NdArray<float>(x.Shape);
            var kept = new NdArray<float>(x.Shape);
            op.Forward(context, [x], [y, kept]);
            var fresh = new NdArray<float>(x.Shape);
            Array.Fill(fresh.Data, float.NaN);
            context.FreshGradients = 1;
            try { op.Vjp(context, [x], [y, kept], [gy, null], [fresh]); }
            finally { context.FreshGradients = 0; }
            var accumulated = new NdArray<float>(x.Shape);
            Array.Fill(accumulated.Data, 1f);
            op.Vjp(context, [x], [y, kept], [gy, null], [accumulated]);
            var ty = new NdArray<float>(x.Shape);
            op.Jvp(context, [x], [y, kept], [gy], [ty, null]);
            for (int i = 0; i < x.Length; i++)
            {
                Assert.Equal(expectedY[i], y.Data[i], 1e-5 * (1 + Math.Abs(expectedY[i])));
                Assert.Equal(gy.Data[i] * slope[i], fresh.Data[i], 4e-6);
                Assert.Equal(1 + gy.Data[i] * slope[i], accumulated.Data[i], 4e-6);
                Assert.Equal(gy.Data[i] * slope[i], ty.Data[i], 4e-6);
            }
        }
    }

    // ---- the layer: x [2, 5, 8] → MatMul w [8, 12] → Add b → GELU (tanh or erf, as exporters decompose it) → LayerNorm or RMSNorm → y

    private static ModelProto LayerModel(string gelu, string norm)
    {
        var random = new Random(5);
        var graph = new GraphProto
        {
            Name = "layer",
            Initializer =
            {
                Floats(random, "w", 8, 12), Floats(random, "b", 12), Floats(random, "gamma", 12),
                Scalar("half", 0.5f), Scalar("one", 1), Scalar("two", 2), Scalar("eps", 1e-5f),
            },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(2, 5, 8) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(2, 5, 12) } },
        };
        graph.Node.Add(Node("MatMul", ["x", "w"], "xw"));
        graph.Node.Add(Node("Add", ["xw", "b"], "h"));
        if (gelu == "tanh")
        {
            graph.Initializer.Add([Scalar("three", 3), Scalar("c", 0.044715f), Scalar("k", 0.7978845608f)]);
            AddTanhGelu(graph);
        }
        else
        {
            graph.Initializer.Add(Scalar("root2", MathF.Sqrt(2)));
            graph.Node.Add(Node("Div", ["h", "root2"], "scaledH"));
            graph.Node.Add(Node("Erf", ["scaledH"], "e"));
            graph.Node.Add(Node("Add", ["e", "one"], "onePlusE"));
            graph.Node.Add(Node("Mul", ["h", "onePlusE"], "hTimes"));
            graph.Node.Add(Node("Mul", ["hTimes", "half"], "g"));
        }
        string centered = "g";
        if (norm == "layer")
        {
            graph.Initializer.Add(Floats(random, "beta", 12));
            graph.Node.Add(MeanOverLastAxis("g", "mean"));
            graph.Node.Add(Node("Sub", ["g", "mean"], "d"));
            centered = "d";
        }
        graph.Node.Add(Node("Pow", [centered, "two"], "squares"));
        graph.Node.Add(MeanOverLastAxis("squares", "var"));
        graph.Node.Add(Node("Add", ["var", "eps"], "varEps"));
        graph.Node.Add(Node("Sqrt", ["varEps"], "std"));
        graph.Node.Add(Node("Div", [centered, "std"], "normalized"));
        graph.Node.Add(Node("Mul", ["normalized", "gamma"], norm == "layer" ? "scaled" : "y"));
        if (norm == "layer") graph.Node.Add(Node("Add", ["scaled", "beta"], "y"));
        return new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph };
    }

    private static NodeProto MeanOverLastAxis(string input, string output)
    {
        var node = Node("ReduceMean", [input], output);
        node.Attribute.Add(new AttributeProto { Name = "axes", Type = AttributeProto.Types.AttributeType.Ints, Ints = { -1 } });
        return node;
    }

    /// <summary>The layer in float64, every initializer (constants included) read from <paramref name="p"/>.</summary>
    private static double[] Forward(string gelu, string norm, Dictionary<string, double[]> p, double[] x)
    {
        const int rows = 10, n = 8, m = 12;
        var y = new double[rows * m];
        var g = new double[m];
        double S(string name) => p[name][0];
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < m; j++)
            {
                double h = p["b"][j];
                for (int i = 0; i < n; i++) h += x[r * n + i] * p["w"][i * m + j];
                g[j] = gelu == "tanh"
                    ? h * S("half") * (Math.Tanh((h + Math.Pow(h, S("three")) * S("c")) * S("k")) + S("one"))
                    : h * (Erf(h / S("root2")) + S("one")) * S("half");
            }
            double mean = norm == "layer" ? g.Average() : 0;
            double variance = g.Average(v => Math.Pow(v - mean, S("two")));
            double std = Math.Sqrt(variance + S("eps"));
            for (int j = 0; j < m; j++)
                y[r * m + j] = (g[j] - mean) / std * p["gamma"][j] + (norm == "layer" ? p["beta"][j] : 0);
        }
        return y;
    }

    /// <summary>d y / d θ along <paramref name="direction"/> over one initializer, by a float64 central difference.</summary>
    private static double[] CentralDifference(string gelu, string norm, Dictionary<string, double[]> p, double[] x, string name, double[] direction)
    {
        const double step = 1e-5;
        var original = p[name];
        double[] At(double sign)
        {
            p[name] = original.Select((v, i) => v + sign * step * direction[i]).ToArray();
            try { return Forward(gelu, norm, p, x); }
            finally { p[name] = original; }
        }
        var plus = At(1);
        var minus = At(-1);
        return plus.Select((v, i) => (v - minus[i]) / (2 * step)).ToArray();
    }

    /// <summary>erf in float64: its Maclaurin series below 4.5 (terms stay below 1e8, so ~1e-8 rounding), ±1 beyond (erfc(4.5) ≈ 2e-10).</summary>
    private static double Erf(double z)
    {
        if (Math.Abs(z) >= 4.5) return Math.Sign(z);
        double sum = 0, term = z;
        for (int k = 0; Math.Abs(term) > 1e-17 * Math.Max(1, Math.Abs(sum)) || k < 3; k++)
        {
            sum += term / (2 * k + 1);
            term *= -z * z / (k + 1);
        }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }

    private static double Dot(double[] a, double[] b) => a.Zip(b, (p, q) => p * q).Sum();

    /// <summary>
    /// Norm-wise relative error ‖actual − expected‖ / max(‖expected‖, 0.01) within <paramref name="tolerance"/>: the floor is for
    /// the gradient of ½ in the GELU, zero up to ε because a normalization is blind to the scale of its input.
    /// </summary>
    private static void AssertClose(double[] expected, double[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double error = Math.Sqrt(expected.Zip(actual, (e, a) => (e - a) * (e - a)).Sum()), norm = Math.Max(0.01, Math.Sqrt(expected.Sum(e => e * e)));
        Assert.True(error <= tolerance * norm, $"{what}: relative error {error / norm:G3} (tolerance {tolerance:G3})");
    }
}

using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;
using Google.Protobuf;
using static FisherKernels.Tests.Plan.FusionTests;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// A backward pass over a block of cotangents (<see cref="Backward.Cotangents"/>) against one pass per cotangent: every
/// gradient bit for bit, through the packed products' block form (a weight, and attention-shaped products of two
/// activations) and the operators run once a cotangent; the one-cotangent pass itself against a central difference.
/// </summary>
public class CotangentBlockTests
{
    /// <summary>
    /// x [1, 64, 128] · w [128 × 256] → Tanh → Reshape [1, 2, 64, 128] = r; p = r·rᵀ [1, 2, 64, 64]; y = p·r.
    /// Each product is large enough for the packed kernel (2·M·K·N ≥ 2²⁰), so the block form runs.
    /// </summary>
    private static OnnxModel Model(TempFolder temp, Random random)
    {
        var w = new TensorProto { Name = "w", DataType = 1, Dims = { 128, 256 } };
        for (int i = 0; i < 128 * 256; i++) w.FloatData.Add((float)(random.NextDouble() * 2 - 1));
        var shape = new TensorProto { Name = "heads", DataType = 7, Dims = { 4 }, Int64Data = { 1, 2, 64, 128 } };
        var graph = new GraphProto
        {
            Name = "block",
            Initializer = { w, shape },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(1, 64, 128) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(1, 2, 64, 128) } },
        };
        graph.Node.Add(Node("MatMul", ["x", "w"], "m"));
        graph.Node.Add(Node("Tanh", ["m"], "t"));
        graph.Node.Add(Node("Reshape", ["t", "heads"], "r"));
        var transpose = Node("Transpose", ["r"], "rt");
        transpose.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 0, 1, 3, 2 } });
        graph.Node.Add(transpose);
        graph.Node.Add(Node("MatMul", ["r", "rt"], "p"));
        graph.Node.Add(Node("MatMul", ["p", "r"], "y"));
        File.WriteAllBytes(temp.File("m.onnx"), new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph }.ToByteArray());
        return OnnxModel.Load(temp.File("m.onnx"));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void EachCotangentOfABlockEqualsItsOwnPass(int threads)
    {
        var context = new OpContext(new CpuBackend(threads));
        var random = new Random(11);
        using var temp = new TempFolder();
        var model = Model(temp, random);
        var x = new NdArray<float>(1, 64, 128);
        // |m| about 0.4 (tanh not saturated) and the check's step (1e-2 in w's units) small beside w, so that the central difference is near.
        for (int i = 0; i < x.Data.Length; i++) x.Data[i] = (float)((random.NextDouble() * 2 - 1) * 0.1);
        var inputs = new Dictionary<string, NdArray> { ["x"] = x };
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [1, 64, 128] }, new HashSet<string> { "w" }, keepAll: true);
        // The reference pass is itself checked: reverse against forward mode and a central difference.
        PlanDerivativeCheck.ForwardReverseAndCentralDifferenceAgree(model, plan, context, inputs, ["w"], "y", random);

        var single = new Backward(plan, ["y"]);
        var block = new Backward(plan, ["y"], cotangents: 4);
        Assert.Equal(4, block.Cotangents);
        plan.Run(context, inputs);
        string[] names = ["w", "m", "t", "r", "p"];
        int length = (int)plan.Get("y").Length;
        // Full blocks, then a part block (the buffers of the cotangents left out still hold the last run's).
        foreach (int count in new[] { 4, 2 })
        {
            var seeds = new float[count][];
            block.Clear();
            for (int c = 0; c < count; c++)
            {
                // Rows (positions) after a random one are zero, as in a score pass: the kernels skip them.
                int last = random.Next(64);
                seeds[c] = new float[length];
                for (int i = 0; i < length; i++)
                    if (i / 128 % 64 <= last) seeds[c][i] = (float)(random.NextDouble() * 2 - 1);
                seeds[c].CopyTo(block.Gradient("y", c).Data, 0);
            }
            block.Run(context, count: count);
            for (int c = 0; c < count; c++)
            {
                single.Clear();
                seeds[c].CopyTo(single.Gradient("y").Data, 0);
                single.Run(context);
                foreach (string name in names)
                {
                    Assert.Contains(single.Gradient(name).Data, v => v != 0);
                    Assert.Equal(single.Gradient(name).Data, block.Gradient(name, c).Data);
                }
            }
        }
    }

    [Fact]
    public void AMemoryBudgetBelowTheBlockGivesFewerCotangents()
    {
        using var temp = new TempFolder();
        var model = Model(temp, new Random(3));
        var plan = model.GetPlan(new Dictionary<string, int[]> { ["x"] = [1, 64, 128] }, new HashSet<string> { "w" }, keepAll: true);
        long one = new Backward(plan, ["y"], cotangents: 1).Cotangents;
        Assert.Equal(1, one);
        // The gradients of w, m, t (r shares it), rt, p and y take about 425 KB a cotangent.
        Assert.Equal(1, new Backward(plan, ["y"], cotangents: 8, memoryBudget: 128 * 256 * 4).Cotangents);
        Assert.Equal(8, new Backward(plan, ["y"], cotangents: 8, memoryBudget: 1L << 30).Cotangents);
        Assert.Throws<ArgumentOutOfRangeException>(() => new Backward(plan, ["y"], cotangents: 0));
    }

    /// <summary>Scores with the positions in blocks of 8 and of 3 (part blocks at each prefix's end) equal one position a pass, bit for bit.</summary>
    [Theory]
    [InlineData("gpt2_tiny")]
    [InlineData("llama_tiny")]
    [InlineData("bert_tiny")]
    public void BlockedScoresEqualOnePositionAPass(string name)
    {
        var context = new OpContext(new CpuBackend(1));
        var lm = LanguageModel.Load(Fixtures.Path(name + ".onnx"));
        var tokens = NpyFile.Read(Fixtures.Path(name + ".tokens.npy"));
        var parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        ScoreReport Score(int cotangents) => PositionScorer.Score(lm, context, tokens, null, parameters, "isotropic", 1.0,
            EpistemicMetric.SquaredGradientNorm, passLengths: null, cotangents: cotangents);
        var one = Score(1);
        foreach (int cotangents in new[] { 3, 8 })
        {
            var blocked = Score(cotangents);
            Assert.Equal(one.Sequences.Count, blocked.Sequences.Count);
            for (int s = 0; s < one.Sequences.Count; s++)
            {
                Assert.Equal(one.Sequences[s].Epistemic, blocked.Sequences[s].Epistemic);
                Assert.Equal(one.Sequences[s].Tokens.Select(t => t.Epistemic), blocked.Sequences[s].Tokens.Select(t => t.Epistemic));
            }
        }
    }
}

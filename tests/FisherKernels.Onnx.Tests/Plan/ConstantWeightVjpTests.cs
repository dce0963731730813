using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;
using static FisherKernels.Tests.Plan.FusionTests;

namespace FisherKernels.Tests.Plan;

/// <summary>
/// The packed input gradient gA = gY·Bᵀ of a product whose B is an initializer keeps Bᵀ's packing from run to run, and
/// the tiles of gY that are zero throughout (the rows after a score's position) clear their rows of gA once, whole.
/// Checked against a float64 reference of the whole VJP, against the same graph with B as an input (packed on every
/// call), bit for bit, and with the buffers holding a dense seed's gradients from the run before.
/// </summary>
public class ConstantWeightVjpTests
{
    private const int Rows = 64, In = 96, Hidden = 128, Out = 160;

    /// <summary>y = tanh(x·w1)·w2, x [1, 64, 96], w1 [96 × 128], w2 [128 × 160]: both products large enough for the packed kernel.</summary>
    private static OnnxModel Model(TempFolder temp, float[] w1, float[] w2, bool w2Initializer)
    {
        static TensorProto Tensor(string name, float[] data, params long[] dims)
        {
            var t = new TensorProto { Name = name, DataType = 1 };
            t.Dims.AddRange(dims);
            t.FloatData.AddRange(data);
            return t;
        }
        var graph = new GraphProto
        {
            Name = "constant_weight",
            Initializer = { Tensor("w1", w1, In, Hidden) },
            Input = { new ValueInfoProto { Name = "x", Type = FloatType(1, Rows, In) } },
            Output = { new ValueInfoProto { Name = "y", Type = FloatType(1, Rows, Out) } },
        };
        if (w2Initializer) graph.Initializer.Add(Tensor("w2", w2, Hidden, Out));
        else graph.Input.Add(new ValueInfoProto { Name = "w2", Type = FloatType(Hidden, Out) });
        graph.Node.Add(Node("MatMul", ["x", "w1"], "m"));
        graph.Node.Add(Node("Tanh", ["m"], "t"));
        graph.Node.Add(Node("MatMul", ["t", "w2"], "y"));
        string path = temp.File(w2Initializer ? "constant.onnx" : "input.onnx");
        File.WriteAllBytes(path, new ModelProto { IrVersion = 8, OpsetImport = { new OperatorSetIdProto { Version = 17 } }, Graph = graph }.ToByteArray());
        return OnnxModel.Load(path);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void PackedTransposedWeightAndZeroRowsMatchTheReference(int threads)
    {
        var context = new OpContext(new CpuBackend(threads));
        var random = new Random(5);
        float[] R(int n, double scale) => Enumerable.Range(0, n).Select(_ => (float)((random.NextDouble() * 2 - 1) * scale)).ToArray();
        float[] w1 = R(In * Hidden, 0.2), w2 = R(Hidden * Out, 1), xData = R(Rows * In, 0.5);
        using var temp = new TempFolder();
        var constant = Model(temp, w1, w2, w2Initializer: true);
        var asInput = Model(temp, w1, w2, w2Initializer: false);
        var x = new NdArray<float>([1, Rows, In], xData);
        var w2Array = new NdArray<float>([Hidden, Out], (float[])w2.Clone());
        var constantInputs = new Dictionary<string, NdArray> { ["x"] = x };
        var inputInputs = new Dictionary<string, NdArray> { ["x"] = x, ["w2"] = w2Array };
        var variables = new HashSet<string> { "w1" };
        var constantPlan = constant.GetPlan(new Dictionary<string, int[]> { ["x"] = [1, Rows, In] }, variables, keepAll: true);
        var inputPlan = asInput.GetPlan(new Dictionary<string, int[]> { ["x"] = [1, Rows, In], ["w2"] = [Hidden, Out] }, variables, keepAll: true);
        constantPlan.Run(context, constantInputs);
        inputPlan.Run(context, inputInputs);
        var kept = new Backward(constantPlan, ["y"], cotangents: 3);
        var packedEachCall = new Backward(inputPlan, ["y"], cotangents: 3);

        // float64: m = x·w1, t = tanh m, gT = gY·w2ᵀ, gM = gT·(1 − t²), gW1 = xᵀ·gM.
        var t = new double[Rows * Hidden];
        for (int r = 0; r < Rows; r++)
            for (int h = 0; h < Hidden; h++)
            {
                double s = 0;
                for (int i = 0; i < In; i++) s += (double)xData[r * In + i] * w1[i * Hidden + h];
                t[r * Hidden + h] = Math.Tanh(s);
            }
        (double[] GT, double[] GW1) Reference(float[] gy)
        {
            var gt = new double[Rows * Hidden];
            var gw1 = new double[In * Hidden];
            for (int r = 0; r < Rows; r++)
                for (int h = 0; h < Hidden; h++)
                {
                    double s = 0;
                    for (int o = 0; o < Out; o++) s += (double)gy[r * Out + o] * w2[h * Out + o];
                    gt[r * Hidden + h] = s;
                    double gm = s * (1 - t[r * Hidden + h] * t[r * Hidden + h]);
                    for (int i = 0; i < In; i++) gw1[i * Hidden + h] += xData[r * In + i] * gm;
                }
            return (gt, gw1);
        }
        static void Near(double[] expected, float[] actual, string what)
        {
            double difference = 0, norm = 0;
            for (int i = 0; i < expected.Length; i++) { difference += Math.Pow(actual[i] - expected[i], 2); norm += expected[i] * expected[i]; }
            Assert.True(Math.Sqrt(difference) <= 1e-5 * Math.Sqrt(norm), $"{what}: relative error {Math.Sqrt(difference / norm)}");
        }

        // A dense seed first (the buffers then hold non-zero gradients in every row), then seeds zero after a random row:
        // the rows after it must come out exactly zero, not the run before's.
        foreach (bool dense in new[] { true, false, false })
        {
            var seeds = new float[3][];
            var lasts = new int[3];
            kept.Clear();
            packedEachCall.Clear();
            for (int c = 0; c < 3; c++)
            {
                lasts[c] = dense ? Rows - 1 : random.Next(Rows - 8);
                seeds[c] = new float[Rows * Out];
                for (int i = 0; i < (lasts[c] + 1) * Out; i++) seeds[c][i] = (float)(random.NextDouble() * 2 - 1);
                seeds[c].CopyTo(kept.Gradient("y", c).Data, 0);
                seeds[c].CopyTo(packedEachCall.Gradient("y", c).Data, 0);
            }
            kept.Run(context);
            packedEachCall.Run(context);
            for (int c = 0; c < 3; c++)
            {
                var (gt, gw1) = Reference(seeds[c]);
                Near(gt, kept.Gradient("t", c).Data, $"t (cotangent {c})");
                Near(gw1, kept.Gradient("w1", c).Data, $"w1 (cotangent {c})");
                Assert.All(kept.Gradient("t", c).Data[((lasts[c] + 1) * Hidden)..], v => Assert.Equal(0f, v));
                foreach (string name in new[] { "t", "m", "w1" })
                    Assert.Equal(packedEachCall.Gradient(name, c).Data, kept.Gradient(name, c).Data);
            }
        }
    }
}

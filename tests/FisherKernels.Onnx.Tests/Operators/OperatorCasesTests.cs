using System.Text.Json;
using FisherKernels.IO;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// Forward outputs against float64 references computed from the ONNX specification by make_cases.py
/// (numpy, beside this file): cases.json names each case's op and attributes, cases.npz holds inputs and outputs.
/// </summary>
public sealed class OperatorCasesTests
{
    private static readonly string Folder = FindFolder();
    private static readonly Lazy<Dictionary<string, NdArray>> Arrays = new(LoadArrays);
    private static readonly Lazy<Dictionary<string, JsonElement>> Cases = new(() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "cases.json"))).RootElement.EnumerateArray()
            .ToDictionary(c => c.GetProperty("name").GetString()!));

    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (var name in Cases.Value.Keys) data.Add(name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void ForwardMatchesReference(string name)
    {
        var c = Cases.Value[name];
        var attributes = new OperatorAttributes();
        foreach (var attr in c.GetProperty("attributes").EnumerateObject())
        {
            var kind = attr.Value[0].GetString();
            var v = attr.Value[1];
            switch (kind)
            {
                case "int": attributes.Set(attr.Name, v.GetInt64()); break;
                case "float": attributes.Set(attr.Name, v.GetSingle()); break;
                case "string": attributes.Set(attr.Name, v.GetString()!); break;
                case "ints": attributes.Set(attr.Name, v.EnumerateArray().Select(e => e.GetInt64()).ToArray()); break;
                case "floats": attributes.Set(attr.Name, v.EnumerateArray().Select(e => e.GetSingle()).ToArray()); break;
                case "tensor": attributes.Set(attr.Name, Engine(Arrays.Value[$"{name}/attr_{attr.Name}"])); break;
                default: throw new InvalidOperationException(kind);
            }
        }
        var present = c.GetProperty("inputs").EnumerateArray().Select(e => e.GetBoolean()).ToArray();
        var inputs = present.Select((p, i) => p ? Engine(Arrays.Value[$"{name}/in{i}"]) : null).ToArray();
        int outputCount = c.GetProperty("outputs").GetInt32();
        var op = OpRunner.Create(c.GetProperty("op").GetString()!, inputs.Length, outputCount, attributes,
                                 c.GetProperty("opset").GetInt32(), c.GetProperty("domain").GetString()!);
        var outputs = OpRunner.Forward(op, inputs);
        double tolerance = c.GetProperty("tolerance").GetDouble();
        for (int i = 0; i < outputCount; i++)
        {
            var expected = Arrays.Value[$"{name}/out{i}"];
            Assert.Equal(expected.Shape, outputs[i].Shape);
            switch (expected, outputs[i])
            {
                case (NdArray<double> e, NdArray<float> a):
                    double scale = Math.Max(1e-30, e.Data.Select(Math.Abs).DefaultIfEmpty(0).Max());
                    for (int j = 0; j < e.Data.Length; j++)
                    {
                        double error = Math.Abs(a.Data[j] - e.Data[j]);
                        // Tolerance 0 (the rounding casts) is exact: one float16 subnormal step (6e-8) is below the 1e-7 floor.
                        bool close = tolerance == 0 ? a.Data[j] == e.Data[j] : error <= tolerance * scale + 1e-7;
                        Assert.True(close || (double.IsNaN(e.Data[j]) && float.IsNaN(a.Data[j])),
                                    $"{name} output {i}[{j}]: got {a.Data[j]}, expected {e.Data[j]} (|Δ| {error:g3} > {tolerance:g3}·{scale:g3})");
                    }
                    break;
                case (NdArray<long> e, NdArray<long> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<int> e, NdArray<int> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<bool> e, NdArray<bool> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<sbyte> e, NdArray<sbyte> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<byte> e, NdArray<byte> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<short> e, NdArray<short> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<ushort> e, NdArray<ushort> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<uint> e, NdArray<uint> a): Assert.Equal(e.Data, a.Data); break;
                case (NdArray<ulong> e, NdArray<ulong> a): Assert.Equal(e.Data, a.Data); break;
                default: Assert.Fail($"{name} output {i}: expected {expected.ElementType}, got {outputs[i].ElementType}"); break;
            }
        }
        if (c.TryGetProperty("ort", out var ort) && ort.GetBoolean()) MatchesOnnxRuntime(name, c, inputs, outputs, tolerance);
    }

    /// <summary>The same outputs from ONNX Runtime (cases marked "ort" in make_cases.py), within the case's tolerance (at least 1e-5) of the scale.</summary>
    private static void MatchesOnnxRuntime(string name, JsonElement c, NdArray?[] inputs, NdArray[] outputs, double tolerance)
    {
        var reference = OnnxRuntimeNode.Run(c, inputs, outputs.Length);
        for (int i = 0; i < outputs.Length; i++)
        {
            Assert.Equal(reference[i].Shape, outputs[i].Shape);
            double[] ours = Fixtures.Doubles(outputs[i]);
            double scale = Math.Max(1e-30, reference[i].Data.Select(Math.Abs).DefaultIfEmpty(0).Max()), allowed = Math.Max(tolerance, 1e-5) * scale + 1e-7;
            for (int j = 0; j < ours.Length; j++)
                Assert.True(Math.Abs(ours[j] - reference[i].Data[j]) <= allowed,
                            $"{name} output {i}[{j}]: ours {ours[j]}, ONNX Runtime {reference[i].Data[j]} (allowed |Δ| {allowed:g3})");
        }
    }

    private static NdArray Engine(NdArray a) => Fixtures.Engine(a);

    private static Dictionary<string, NdArray> LoadArrays() => Fixtures.ReadNpz(Path.Combine(Folder, "cases.npz"));

    private static string FindFolder()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FisherKernels.sln")))
                return Path.Combine(dir.FullName, "tests", "FisherKernels.Onnx.Tests", "Operators");
        throw new DirectoryNotFoundException("FisherKernels.sln not found above the test binaries");
    }
}

using System.Text.Json;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// Cast to and from string against numpy (cast_strings.json, written by make_cases.py): each float32's text as numpy's
/// str gives it, and numpy's float32 and int64 values of texts (plain, scientific, the INF/NaN words in any case).
/// </summary>
public sealed class CastStringTests
{
    private static readonly JsonElement Cases =
        JsonDocument.Parse(File.ReadAllText(Fixtures.ProjectFile("Operators", "cast_strings.json"))).RootElement;

    private static NdArray Cast(NdArray x, long to) =>
        OpRunner.Forward(OpRunner.Create("Cast", 1, 1, new OperatorAttributes().Set("to", to), 13), x)[0];

    [Fact]
    public void FloatsAreWrittenAsNumpyWritesThem()
    {
        var c = Cases.GetProperty("format");
        float[] values = c.GetProperty("bits").EnumerateArray().Select(b => BitConverter.UInt32BitsToSingle(b.GetUInt32())).ToArray();
        string[] expected = c.GetProperty("text").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var text = Assert.IsType<StringArray>(Cast(new NdArray<float>([values.Length], values), 8));
        Assert.Equal(expected, text.Data);
    }

    [Fact]
    public void TextIsReadAsNumpyReadsIt()
    {
        var c = Cases.GetProperty("parse_float");
        string[] texts = c.GetProperty("text").EnumerateArray().Select(t => t.GetString()!).ToArray();
        uint[] expected = c.GetProperty("bits").EnumerateArray().Select(b => b.GetUInt32()).ToArray();
        var values = Assert.IsType<NdArray<float>>(Cast(new StringArray([texts.Length], texts), 1));
        // NaN by kind (its payload is not the specification's), every other value bit for bit.
        for (int i = 0; i < texts.Length; i++)
            Assert.True(BitConverter.SingleToUInt32Bits(values.Data[i]) == expected[i] || float.IsNaN(values.Data[i]) && float.IsNaN(BitConverter.UInt32BitsToSingle(expected[i])),
                        $"'{texts[i]}': {values.Data[i]}, expected {BitConverter.UInt32BitsToSingle(expected[i])}");

        var integers = Cases.GetProperty("parse_int64");
        texts = integers.GetProperty("text").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var parsed = Assert.IsType<NdArray<long>>(Cast(new StringArray([texts.Length], texts), 7));
        Assert.Equal(integers.GetProperty("values").EnumerateArray().Select(v => v.GetInt64()), parsed.Data);
    }

    [Fact]
    public void TextThatIsNotANumberIsNamed()
    {
        var e = Assert.Throws<FisherKernelsException>(() => Cast(new StringArray([2], ["1.5", "Hello"]), 1));
        Assert.Contains("element 1 of the input, 'Hello', is not a number", e.Message);
    }
}

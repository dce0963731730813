using System.Buffers.Binary;
using System.Text;
using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

public class SafetensorsFileTests
{
    [Fact]
    public void RandomTensorSetsRoundTrip()
    {
        var rng = new Random(99);
        for (int trial = 0; trial < 150; trial++)
        {
            int count = rng.Next(0, 6);
            var tensors = new List<KeyValuePair<string, NdArray>>();
            for (int i = 0; i < count; i++)
                tensors.Add(new($"t{i}.{rng.Next(1000)}", TestArrays.Random(rng, TestArrays.StorableTypes[rng.Next(TestArrays.StorableTypes.Length)])));
            var metadata = new Dictionary<string, string>();
            if (rng.Next(2) == 0) { metadata["format"] = "x/1"; metadata["unicode ключ"] = "välue \"quoted\"\n"; }

            using var stream = new MemoryStream();
            SafetensorsFile.Write(stream, tensors, metadata);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(stream.GetBuffer());
            Assert.Equal(0UL, headerLength % 8);
            stream.Position = 0;
            SafetensorsFile file = SafetensorsFile.Read(stream, "t.safetensors");

            Assert.Equal(tensors.OrderByDescending(t => ElementTypes.SizeOf(t.Value.ElementType)).Select(t => t.Key), file.Names);
            // Every tensor starts aligned to its element size (the header is padded to 8).
            foreach (string name in file.Names)
                Assert.Equal(0, DataOffset(stream.ToArray(), name) % ElementTypes.SizeOf(file.Tensors[name].ElementType));
            foreach (var (name, array) in tensors) TestArrays.AssertIdentical(array, file.Tensors[name], $"trial {trial} {name}");
            Assert.Equal(metadata.OrderBy(k => k.Key), file.Metadata.OrderBy(k => k.Key));
        }
    }

    [Fact]
    public void GetFloat32ConvertsFloatTypesAndNamesProblems()
    {
        using var stream = new MemoryStream();
        SafetensorsFile.Write(stream, new Dictionary<string, NdArray>
        {
            ["h"] = new NdArray<Half>([2], [(Half)0.5, (Half)(-3)]),
            ["d"] = new NdArray<double>([1, 2], [1.25, 1e-10]),
            ["i"] = new NdArray<int>([1], [3]),
        });
        stream.Position = 0;
        var file = SafetensorsFile.Read(stream, "dir.safetensors");
        Assert.Equal([0.5f, -3f], file.GetFloat32("h").Data);
        Assert.Equal([1.25f, 1e-10f], file.GetFloat32("d").Data);
        Assert.Equal([1, 2], file.GetFloat32("d").Shape);
        var e = Assert.Throws<FisherKernelsException>(() => file.GetFloat32("i"));
        Assert.Contains("'i'", e.Message);
        Assert.Contains("dir.safetensors", e.Message);
        e = Assert.Throws<FisherKernelsException>(() => file.GetFloat32("missing"));
        Assert.Contains("'missing'", e.Message);
    }

    static long DataOffset(byte[] file, string name)
    {
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(file);
        using var doc = System.Text.Json.JsonDocument.Parse(file.AsMemory(8, n));
        return doc.RootElement.GetProperty(name).GetProperty("data_offsets")[0].GetInt64();
    }

    /// <summary>A file with the given JSON header (padded to 8) and data bytes.</summary>
    internal static byte[] Build(string json, byte[] data)
    {
        byte[] header = Encoding.UTF8.GetBytes(json);
        var s = new MemoryStream();
        s.Write(BitConverter.GetBytes((ulong)header.Length));
        s.Write(header);
        s.Write(data);
        return s.ToArray();
    }

    [Fact]
    public void ReadsBFloat16AsExactFloat32()
    {
        float[] values = [1f, -2.5f, 3.140625f, float.NegativeInfinity, 0f, 1e-30f];
        var data = new byte[2 * values.Length];
        for (int i = 0; i < values.Length; i++)
            BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(values[i]) >> 16));
        byte[] file = Build("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", data);
        var read = SafetensorsFile.Read(new MemoryStream(file)).GetFloat32("w");
        Assert.Equal([2, 3], read.Shape);
        for (int i = 0; i < values.Length; i++)
            Assert.Equal(BitConverter.SingleToUInt32Bits(values[i]) & 0xFFFF0000u, BitConverter.SingleToUInt32Bits(read.Data[i]));
    }

    static FisherKernelsException Refuse(byte[] file)
    {
        using var stream = new MemoryStream(file);
        return Assert.Throws<FisherKernelsException>(() => SafetensorsFile.Read(stream, "bad.safetensors"));
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "not valid JSON")]
    [InlineData("[1,2]", 0, "JSON object")]
    [InlineData("{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype 'Q7'")]
    [InlineData("{\"a\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "U16 is not supported")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12 bytes")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "data section has 12 bytes")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 8, "gap")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlaps")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "runs past the end")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, "end before they begin")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "appears twice")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "appears twice")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "'shape' entries")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "'shape' entries")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483648],\"data_offsets\":[0,8]}}", 8, "'shape' entries")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483647,2147483647,2147483647],\"data_offsets\":[0,8]}}", 8, "too large")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, "data_offsets")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "two entries")]
    [InlineData("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "needs 'dtype'")]
    [InlineData("{\"a\":3}", 0, "must be an object")]
    [InlineData("{\"__metadata__\":{\"k\":1}}", 0, "must be a string")]
    [InlineData("{\"__metadata__\":[\"k\"]}", 0, "object of strings")]
    [InlineData("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "twice")]
    public void RefusesBadHeaders(string json, int dataBytes, string messagePart)
    {
        var e = Refuse(Build(json, new byte[dataBytes]));
        Assert.True(e.Kind is ErrorKind.Format or ErrorKind.Unsupported, e.Kind.ToString());
        Assert.Contains(messagePart, e.Message);
        Assert.Contains("bad.safetensors", e.Message);
    }

    [Fact]
    public void RefusesHugeOrShortHeaderLengths()
    {
        foreach (ulong claimed in new[] { ulong.MaxValue, 1UL << 63, (ulong)SafetensorsFile.MaxHeaderLength + 1, 1000UL })
        {
            byte[] file = Build("{}      ", []);
            BinaryPrimitives.WriteUInt64LittleEndian(file, claimed);
            Assert.Contains("header length", Refuse(file).Message);
        }
        Assert.Contains("only 3 bytes", Refuse([1, 2, 3]).Message);
    }

    [Fact]
    public void EmptyFileWithNoTensorsIsValid()
    {
        var file = SafetensorsFile.Read(new MemoryStream(Build("{}", [])));
        Assert.Empty(file.Tensors);
        Assert.Empty(file.Metadata);
    }

    [Fact]
    public void WriterRefusesDuplicateAndReservedNames()
    {
        var a = new NdArray<float>(1);
        Assert.Throws<FisherKernelsException>(() => SafetensorsFile.Write(new MemoryStream(), [new("x", a), new("x", a)]));
        Assert.Throws<FisherKernelsException>(() => SafetensorsFile.Write(new MemoryStream(), [new("__metadata__", a)]));
    }
}

using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Proto;
using Google.Protobuf;

namespace FisherKernels.Tests.Import;

public class OnnxImporterTests
{
    [Theory]
    [InlineData("gpt2_tiny.onnx", 14)]
    [InlineData("llama_tiny.onnx", 17)]
    [InlineData("bert_tiny.onnx", 17)]
    public void LoadsFixtureModels(string file, int opset)
    {
        var graph = OnnxImporter.Load(Fixtures.Path(file));
        Assert.Equal(opset, graph.DefaultOpset);
        Assert.NotEmpty(graph.Nodes);
        Assert.DoesNotContain(graph.Nodes, n => n.OpType == "Constant");
        Assert.Equal("input_ids", graph.Inputs[0].Name);
        Assert.Equal(ElementType.Int64, graph.Inputs[0].ElementType);
        Assert.Equal(3, graph.Outputs[0].Shape!.Length);
    }

    [Fact]
    public void ExternalDataGivesTheSameInitializers()
    {
        var inline = OnnxImporter.Load(Fixtures.Path("gpt2_tiny.onnx"));
        var external = OnnxImporter.Load(Fixtures.Path("gpt2_tiny_external.onnx"));
        Assert.Equal(inline.InitializerOrder.Where(n => !inline.ConstantNodeValues.Contains(n)),
                     external.InitializerOrder.Where(n => !external.ConstantNodeValues.Contains(n)));
        foreach (string name in inline.InitializerOrder)
        {
            var a = (NdArray<float>)inline.Initializers[name];
            var b = (NdArray<float>)external.Initializers[name];
            Assert.Equal(a.Shape, b.Shape);
            Assert.Equal(a.Data, b.Data);
        }
    }

    [Theory]
    [InlineData("llama_tiny_fp16.onnx", 1e-3)]
    [InlineData("llama_tiny_bf16.onnx", 8e-3)]
    public void HalfPrecisionInitializersBecomeFloat32(string file, double relative)
    {
        var full = OnnxImporter.Load(Fixtures.Path("llama_tiny.onnx"));
        var half = OnnxImporter.Load(Fixtures.Path(file));
        int compared = 0;
        foreach (var (name, value) in half.Initializers)
        {
            if (half.ConstantNodeValues.Contains(name)) continue;
            var h = Assert.IsType<NdArray<float>>(value);
            var f = (NdArray<float>)full.Initializers[name];
            for (int i = 0; i < h.Data.Length; i++)
                Assert.True(Math.Abs(h.Data[i] - f.Data[i]) <= relative * Math.Abs(f.Data[i]) + 1e-7, $"{name}[{i}]: {h.Data[i]} vs {f.Data[i]}");
            compared++;
        }
        Assert.Equal(21, compared);
        // Rounded, not the float32 values themselves: at least one weight differs.
        Assert.Contains(half.Initializers, kv => !half.ConstantNodeValues.Contains(kv.Key) && !((NdArray<float>)kv.Value).Data.SequenceEqual(((NdArray<float>)full.Initializers[kv.Key]).Data));
    }

    [Fact]
    public void TruncatedModelIsAFormatError()
    {
        using var temp = new TempFolder();
        byte[] bytes = File.ReadAllBytes(Fixtures.Path("gpt2_tiny.onnx"));
        foreach (int length in new[] { 0, 7, bytes.Length / 3, bytes.Length / 2, bytes.Length - 5 })
        {
            string path = temp.File($"cut{length}.onnx");
            File.WriteAllBytes(path, bytes[..length]);
            var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(path));
            Assert.Equal(ErrorKind.Format, e.Kind);
            Assert.Contains(path, e.Message);
        }
    }

    [Fact]
    public void GarbageIsAFormatError()
    {
        using var temp = new TempFolder();
        var random = new Random(5);
        for (int trial = 0; trial < 20; trial++)
        {
            byte[] garbage = new byte[1000 + trial * 37];
            random.NextBytes(garbage);
            string path = temp.File("garbage.onnx");
            File.WriteAllBytes(path, garbage);
            var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(path));
            Assert.Contains("garbage.onnx", e.Message);
        }
        File.WriteAllText(temp.File("text.onnx"), "this is not a model\n");
        Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(temp.File("text.onnx")));
    }

    [Fact]
    public void MissingModelIsAnIoError()
    {
        var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load("/nonexistent/model.onnx"));
        Assert.Equal(ErrorKind.Io, e.Kind);
        Assert.Contains("/nonexistent/model.onnx", e.Message);
    }

    [Fact]
    public void MissingExternalDataFileIsNamed()
    {
        using var temp = new TempFolder();
        File.Copy(Fixtures.Path("gpt2_tiny_external.onnx"), temp.File("m.onnx"));
        var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(temp.File("m.onnx")));
        Assert.Equal(ErrorKind.Io, e.Kind);
        Assert.Contains("gpt2_tiny_external.onnx.data", e.Message);
    }

    [Fact]
    public void TruncatedExternalDataIsAFormatError()
    {
        using var temp = new TempFolder();
        File.Copy(Fixtures.Path("gpt2_tiny_external.onnx"), temp.File("m.onnx"));
        byte[] data = File.ReadAllBytes(Fixtures.Path("gpt2_tiny_external.onnx.data"));
        File.WriteAllBytes(temp.File("gpt2_tiny_external.onnx.data"), data[..(data.Length / 2)]);
        var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(temp.File("m.onnx")));
        Assert.Equal(ErrorKind.Format, e.Kind);
        Assert.Contains("gpt2_tiny_external.onnx.data", e.Message);
    }

    [Theory]
    [InlineData("../outside.data")]
    [InlineData("sub/../../outside.data")]
    [InlineData("/etc/passwd")]
    public void ExternalDataMayNotEscapeTheModelFolder(string location)
    {
        using var temp = new TempFolder();
        Directory.CreateDirectory(temp.File("model"));
        File.WriteAllBytes(temp.File("outside.data"), new byte[64]);
        string path = Path.Combine(temp.File("model"), "m.onnx");
        WriteModel(path, ExternalTensor("w", location, 16));
        var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(path));
        Assert.Contains(location, e.Message);
        Assert.Contains("outside", e.Message);
    }

    [Fact]
    public void ExternalDataInsideTheFolderWithOffset()
    {
        using var temp = new TempFolder();
        var bytes = new byte[64];
        for (int i = 0; i < 4; i++) BitConverter.TryWriteBytes(bytes.AsSpan(16 + 4 * i), i + 0.5f);
        File.WriteAllBytes(temp.File("w.bin"), bytes);
        var tensor = ExternalTensor("w", "w.bin", 4);
        tensor.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = "16" });
        WriteModel(temp.File("m.onnx"), tensor);
        var graph = OnnxImporter.Load(temp.File("m.onnx"));
        Assert.Equal(new[] { 0.5f, 1.5f, 2.5f, 3.5f }, ((NdArray<float>)graph.Initializers["w"]).Data);
    }

    [Theory]
    [InlineData(10)]
    [InlineData(24)]
    public void OpsetsOutside11To23AreRefused(int opset)
    {
        using var temp = new TempFolder();
        WriteModel(temp.File("m.onnx"), new TensorProto { Name = "w", DataType = 1, Dims = { 1 }, FloatData = { 1f } }, opset: opset);
        var e = Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(temp.File("m.onnx")));
        Assert.Equal(ErrorKind.Unsupported, e.Kind);
        Assert.Contains($"opset {opset}", e.Message);
        Assert.Contains("11–23", e.Message);
    }

    [Fact]
    public void TypedFieldsAndConstantNodes()
    {
        using var temp = new TempFolder();
        var half = new TensorProto { Name = "h", DataType = 10, Dims = { 2 }, Int32Data = { BitConverter.HalfToUInt16Bits((Half)1.5f), BitConverter.HalfToUInt16Bits((Half)(-2f)) } };
        var model = Model(half, 17);
        model.Graph.Node.Insert(0, new NodeProto
        {
            OpType = "Constant", Output = { "c" },
            Attribute = { new AttributeProto { Name = "value_ints", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 3, 4 } } },
        });
        File.WriteAllBytes(temp.File("m.onnx"), model.ToByteArray());
        var graph = OnnxImporter.Load(temp.File("m.onnx"));
        Assert.Equal(new[] { 1.5f, -2f }, ((NdArray<float>)graph.Initializers["h"]).Data);
        Assert.Equal(new long[] { 3, 4 }, ((NdArray<long>)graph.Initializers["c"]).Data);
        Assert.Contains("c", graph.ConstantNodeValues);
    }

    [Fact]
    public void EightBitIntegerInitializersKeepTheirType()
    {
        using var temp = new TempFolder();
        // int8 in raw_data (two's complement bytes), uint8 in int32_data (the typed field ONNX uses for 8-bit types).
        WriteModel(temp.File("i8.onnx"), new TensorProto { Name = "w", DataType = 3, Dims = { 3 }, RawData = ByteString.CopyFrom(0x80, 0xff, 0x7f) });
        Assert.Equal(new sbyte[] { -128, -1, 127 }, ((NdArray<sbyte>)OnnxImporter.Load(temp.File("i8.onnx")).Initializers["w"]).Data);
        WriteModel(temp.File("u8.onnx"), new TensorProto { Name = "w", DataType = 2, Dims = { 2 }, Int32Data = { 255, 7 } });
        Assert.Equal(new byte[] { 255, 7 }, ((NdArray<byte>)OnnxImporter.Load(temp.File("u8.onnx")).Initializers["w"]).Data);
        WriteModel(temp.File("short.onnx"), new TensorProto { Name = "w", DataType = 2, Dims = { 4 }, RawData = ByteString.CopyFrom(1, 2) });
        Assert.Contains("2 bytes of data", Assert.Throws<FisherKernelsException>(() => OnnxImporter.Load(temp.File("short.onnx"))).Message);
    }

    [Fact]
    public void SixteenBitAndUnsignedIntegerInitializersKeepTheirType()
    {
        using var temp = new TempFolder();
        // int16 in raw_data; uint64 and uint32 in uint64_data (their typed field), values beyond int64's and int32's range.
        WriteModel(temp.File("i16.onnx"), new TensorProto { Name = "w", DataType = 5, Dims = { 2 }, RawData = ByteString.CopyFrom(0x00, 0x80, 0xff, 0x7f) });
        Assert.Equal(new short[] { -32768, 32767 }, ((NdArray<short>)OnnxImporter.Load(temp.File("i16.onnx")).Initializers["w"]).Data);
        WriteModel(temp.File("u64.onnx"), new TensorProto { Name = "w", DataType = 13, Dims = { 2 }, Uint64Data = { ulong.MaxValue, 3 } });
        Assert.Equal(new ulong[] { ulong.MaxValue, 3 }, ((NdArray<ulong>)OnnxImporter.Load(temp.File("u64.onnx")).Initializers["w"]).Data);
        WriteModel(temp.File("u32.onnx"), new TensorProto { Name = "w", DataType = 12, Dims = { 1 }, Uint64Data = { uint.MaxValue } });
        Assert.Equal(new uint[] { uint.MaxValue }, ((NdArray<uint>)OnnxImporter.Load(temp.File("u32.onnx")).Initializers["w"]).Data);
        WriteModel(temp.File("u16.onnx"), new TensorProto { Name = "w", DataType = 4, Dims = { 1 }, Int32Data = { 65535 } });
        Assert.Equal(new ushort[] { 65535 }, ((NdArray<ushort>)OnnxImporter.Load(temp.File("u16.onnx")).Initializers["w"]).Data);
    }

    internal static TensorProto ExternalTensor(string name, string location, int floats) => new()
    {
        Name = name, DataType = 1, Dims = { floats / 4, 4 },
        DataLocation = TensorProto.Types.DataLocation.External,
        ExternalData = { new StringStringEntryProto { Key = "location", Value = location } },
    };

    internal static ModelProto Model(TensorProto initializer, int opset) => new()
    {
        IrVersion = 8,
        OpsetImport = { new OperatorSetIdProto { Domain = "", Version = opset } },
        Graph = new GraphProto
        {
            Name = "g",
            Initializer = { initializer },
            Node = { new NodeProto { Name = "id", OpType = "Identity", Input = { initializer.Name }, Output = { "y" } } },
            Output = { new ValueInfoProto { Name = "y" } },
        },
    };

    internal static void WriteModel(string path, TensorProto initializer, int opset = 17) =>
        File.WriteAllBytes(path, Model(initializer, opset).ToByteArray());
}

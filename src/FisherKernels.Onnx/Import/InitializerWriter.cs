using System.Buffers.Binary;
using System.Text;
using FisherKernels.IO;
using FisherKernels.Onnx.Proto;
using DataType = FisherKernels.Onnx.Proto.TensorProto.Types.DataType;

namespace FisherKernels.Onnx.Import;

/// <summary>
/// Writes a copy of an ONNX model with new values for some of its top-level initializers (SPEC §5: the models of
/// <c>apply</c> and <c>merge-models</c> are the input graph unchanged but for the initializers' values). The file is
/// rewritten at the protobuf wire level, not parsed and re-serialized: every byte outside the rewritten tensors' data
/// fields is copied as it was (only the length prefixes of the enclosing graph and initializer messages change, and
/// those only when an encoding's length does), so fields this project's proto subset does not know survive untouched.
/// A tensor keeps its element type (float32, float16, bfloat16, float64) and its encoding (raw_data, or the typed
/// float_data / int32_data / double_data). External data (SPEC §1) is written to one file beside the output,
/// <c>&lt;output file name&gt;.data</c>, holding every external tensor of the input (rewritten or copied) with its
/// location, offset and length rewritten. Everything is checked before anything is written; outputs are written to
/// temporary files and renamed into place.
/// </summary>
public static class InitializerWriter
{
    const int ModelGraph = 7, GraphInitializer = 5;
    const int TensorDims = 1, TensorDataType = 2, TensorFloatData = 4, TensorInt32Data = 5, TensorName = 8, TensorRawData = 9,
              TensorDoubleData = 10, TensorExternalData = 13, TensorDataLocation = 14;
    const int WireVarint = 0, WireFixed64 = 1, WireLength = 2, WireFixed32 = 5;

    /// <summary>
    /// Writes <paramref name="modelPath"/> to <paramref name="outPath"/> with each initializer named in
    /// <paramref name="values"/> set to its float32 values (row-major, the initializer's element count), converted to the
    /// initializer's own element type. A name that is not a top-level float initializer, a wrong count or a value that is
    /// not finite in the stored type is one error naming it, and nothing is written.
    /// </summary>
    public static void Write(string modelPath, string outPath, IReadOnlyDictionary<string, float[]> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        byte[] file;
        try { file = File.ReadAllBytes(modelPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw FisherKernelsException.Io($"cannot read model '{modelPath}': {(e is FileNotFoundException ? "file not found" : e.Message)}", e);
        }
        string dataName = Path.GetFileName(Path.GetFullPath(outPath)) + ".data";
        using var external = new ExternalData(modelPath);
        var plan = new Rewrite(file, modelPath, values, external, dataName);
        List<ReadOnlyMemory<byte>> model = plan.Model();
        foreach (string name in values.Keys)
            if (!plan.Found.Contains(name))
                throw FisherKernelsException.Argument($"model '{modelPath}' has no top-level initializer '{name}'");

        string? dataPath = plan.ExternalChunks.Count == 0 ? null : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(outPath))!, dataName);
        if (dataPath is not null) AtomicFile.Write(dataPath, stream => { foreach (var chunk in plan.ExternalChunks) stream.Write(chunk.Span); });
        try
        {
            AtomicFile.Write(outPath, stream => { foreach (var chunk in model) stream.Write(chunk.Span); });
        }
        catch when (dataPath is not null)
        {
            try { File.Delete(dataPath); } catch (IOException) { } // the model failed: its data file alone is of no use
            throw;
        }
    }

    /// <summary>The rewrite of one file: the output as a list of chunks (slices of the input and new bytes).</summary>
    sealed class Rewrite(byte[] file, string path, IReadOnlyDictionary<string, float[]> values, ExternalData external, string dataName)
    {
        public HashSet<string> Found { get; } = new(StringComparer.Ordinal);
        public List<ReadOnlyMemory<byte>> ExternalChunks { get; } = [];
        long externalOffset;

        public List<ReadOnlyMemory<byte>> Model()
        {
            var output = new List<ReadOnlyMemory<byte>>();
            foreach (Field f in Fields(0, file.Length))
            {
                if (f.Number == ModelGraph && f.Wire == WireLength) Nested(output, f, Graph(f));
                else output.Add(file.AsMemory(f.Start, f.End - f.Start));
            }
            return output;
        }

        List<ReadOnlyMemory<byte>> Graph(Field graph)
        {
            var output = new List<ReadOnlyMemory<byte>>();
            foreach (Field f in Fields(graph.ValueStart, graph.End))
            {
                if (f.Number == GraphInitializer && f.Wire == WireLength && Tensor(f) is { } tensor) Nested(output, f, tensor);
                else output.Add(file.AsMemory(f.Start, f.End - f.Start));
            }
            return output;
        }

        /// <summary>The new bytes of one initializer, or null when it keeps its own (neither rewritten nor external).</summary>
        List<ReadOnlyMemory<byte>>? Tensor(Field tensor)
        {
            string name = "";
            var type = DataType.Undefined;
            long count = 1;
            bool isExternal = false;
            var fields = Fields(tensor.ValueStart, tensor.End).ToList();
            foreach (Field f in fields)
            {
                switch (f.Number)
                {
                    case TensorName when f.Wire == WireLength: name = Encoding.UTF8.GetString(file, f.ValueStart, f.End - f.ValueStart); break;
                    case TensorDataType when f.Wire == WireVarint: type = (DataType)(int)VarintAt(f.ValueStart); break;
                    case TensorDataLocation when f.Wire == WireVarint: isExternal = VarintAt(f.ValueStart) == (ulong)TensorProto.Types.DataLocation.External; break;
                    case TensorDims when f.Wire == WireVarint: count *= (long)VarintAt(f.ValueStart); break;
                    case TensorDims when f.Wire == WireLength:
                        for (int p = f.ValueStart; p < f.End;) count *= (long)Varint(file, ref p);
                        break;
                }
            }
            string what = $"model '{path}', initializer '{name}'";
            float[]? replacement = values.TryGetValue(name, out float[]? v) ? v : null;
            if (replacement is null && !isExternal) return null;
            if (replacement is not null)
            {
                Found.Add(name);
                if (type is not (DataType.Float or DataType.Float16 or DataType.Bfloat16 or DataType.Double))
                    throw FisherKernelsException.Argument($"{what} is {type}, not a float tensor");
                if (replacement.LongLength != count)
                    throw FisherKernelsException.Argument($"{what} has {count} elements, the new values {replacement.LongLength}");
            }

            byte[]? raw = replacement is null ? null : Encode(replacement, type, what);
            var output = new List<ReadOnlyMemory<byte>>();
            bool dataWritten = false;
            foreach (Field f in fields)
            {
                bool isData = f.Number is TensorRawData or TensorFloatData or TensorInt32Data or TensorDoubleData or TensorExternalData;
                if (!isData) { output.Add(file.AsMemory(f.Start, f.End - f.Start)); continue; }
                if (isExternal && f.Number != TensorExternalData || !isExternal && f.Number == TensorExternalData) { output.Add(file.AsMemory(f.Start, f.End - f.Start)); continue; }
                if (dataWritten) continue; // a repeated scalar split over several unpacked or packed runs: written once, whole
                dataWritten = true;
                output.Add(isExternal ? ExternalEntries(tensor, raw, what, count, type) : Data(f.Number, raw!, type));
            }
            if (!dataWritten) output.Add(isExternal ? ExternalEntries(tensor, raw, what, count, type) : Data(TensorRawData, raw!, type));
            return output;
        }

        /// <summary>The tensor's data in the output's data file (its new values, or its old bytes copied), and the entries that say where.</summary>
        byte[] ExternalEntries(Field tensor, byte[]? raw, string what, long count, DataType type)
        {
            if (raw is null)
            {
                var proto = TensorProto.Parser.ParseFrom(file, tensor.ValueStart, tensor.End - tensor.ValueStart);
                raw = external.Read(proto, what, checked(count * ElementSize(type, what))).ToArray();
            }
            long offset = externalOffset;
            ExternalChunks.Add(raw);
            externalOffset += raw.Length;
            var entries = new MemoryStream();
            foreach (var (key, value) in new[] { ("location", dataName), ("offset", offset.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                                                 ("length", raw.Length.ToString(System.Globalization.CultureInfo.InvariantCulture)) })
            {
                var entry = new MemoryStream();
                WriteBytesField(entry, 1, Encoding.UTF8.GetBytes(key));
                WriteBytesField(entry, 2, Encoding.UTF8.GetBytes(value));
                WriteBytesField(entries, TensorExternalData, entry.ToArray());
            }
            return entries.ToArray();
        }

        /// <summary>One data field in the encoding the tensor had: raw_data, or the packed typed field of its element type.</summary>
        static byte[] Data(int field, byte[] raw, DataType type)
        {
            var output = new MemoryStream();
            if (field == TensorRawData || field == TensorFloatData || field == TensorDoubleData)
            {
                WriteBytesField(output, field, raw); // float_data and double_data packed are the raw little-endian bytes
                return output.ToArray();
            }
            // int32_data: float16 / bfloat16 bit patterns, one varint each.
            var packed = new MemoryStream();
            for (int i = 0; i < raw.Length; i += 2) WriteVarint(packed, BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(i)));
            WriteBytesField(output, field, packed.ToArray());
            return output.ToArray();
        }

        /// <summary>A length-delimited field with new content: its tag as it was, the new length, the content.</summary>
        void Nested(List<ReadOnlyMemory<byte>> output, Field f, List<ReadOnlyMemory<byte>> content)
        {
            long length = content.Sum(c => (long)c.Length);
            if (length > int.MaxValue) throw FisherKernelsException.Unsupported($"model '{path}': the rewritten graph exceeds protobuf's 2 GB limit");
            output.Add(file.AsMemory(f.Start, f.LengthStart - f.Start));
            var prefix = new MemoryStream();
            WriteVarint(prefix, (ulong)length);
            output.Add(prefix.ToArray());
            output.AddRange(content);
        }

        ulong VarintAt(int position) => Varint(file, ref position);

        IEnumerable<Field> Fields(int from, int to)
        {
            for (int p = from; p < to;)
            {
                int start = p;
                ulong tag = Varint(file, ref p);
                int number = (int)(tag >> 3), wire = (int)(tag & 7);
                int lengthStart = p, valueStart = p;
                switch (wire)
                {
                    case WireVarint: Varint(file, ref p); break;
                    case WireFixed64: p += 8; break;
                    case WireFixed32: p += 4; break;
                    case WireLength:
                        ulong length = Varint(file, ref p);
                        valueStart = p;
                        if (length > (ulong)(to - p)) throw Corrupt();
                        p += (int)length;
                        break;
                    default: throw FisherKernelsException.Unsupported($"model '{path}': protobuf wire type {wire} (groups) in field {number} is not supported");
                }
                if (p > to || number == 0) throw Corrupt();
                yield return new Field(number, wire, start, lengthStart, valueStart, p);
            }
        }

        FisherKernelsException Corrupt() => FisherKernelsException.Format($"'{path}' is not a valid ONNX model (truncated or corrupt protobuf)");

        ulong Varint(byte[] bytes, ref int p)
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (p >= bytes.Length) throw Corrupt();
                byte b = bytes[p++];
                result |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return result;
            }
            throw Corrupt();
        }
    }

    /// <summary>A field of a message: its number, wire type and byte range (tag at Start, length prefix at LengthStart, value from ValueStart to End).</summary>
    readonly record struct Field(int Number, int Wire, int Start, int LengthStart, int ValueStart, int End);

    /// <summary>float32 values as the little-endian bytes of <paramref name="type"/>; a value that is not finite there is an error.</summary>
    static byte[] Encode(float[] values, DataType type, string what)
    {
        int size = ElementSize(type, what);
        var bytes = new byte[(long)values.Length * size];
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            bool finite;
            switch (type)
            {
                case DataType.Float:
                    BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), v);
                    finite = float.IsFinite(v);
                    break;
                case DataType.Double:
                    BinaryPrimitives.WriteDoubleLittleEndian(bytes.AsSpan(i * 8), v);
                    finite = float.IsFinite(v);
                    break;
                case DataType.Float16:
                    Half h = (Half)v;
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), BitConverter.HalfToUInt16Bits(h));
                    finite = Half.IsFinite(h);
                    break;
                default: // bfloat16: round to nearest even
                    uint bits = BitConverter.SingleToUInt32Bits(v);
                    ushort b16 = (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), b16);
                    finite = float.IsFinite(BitConverter.Int32BitsToSingle(b16 << 16));
                    break;
            }
            if (!finite)
                throw FisherKernelsException.Argument($"{what}: new value {v.ToString("R", System.Globalization.CultureInfo.InvariantCulture)} at element {i} is not finite as {type}; nothing was written");
        }
        return bytes;
    }

    static int ElementSize(DataType type, string what) => type switch
    {
        DataType.Float => 4,
        DataType.Double => 8,
        DataType.Float16 or DataType.Bfloat16 => 2,
        _ => throw FisherKernelsException.Argument($"{what} is {type}, not a float tensor"),
    };

    static void WriteBytesField(Stream stream, int field, byte[] content)
    {
        WriteVarint(stream, (ulong)((field << 3) | WireLength));
        WriteVarint(stream, (ulong)content.Length);
        stream.Write(content);
    }

    static void WriteVarint(Stream stream, ulong value)
    {
        while (value >= 0x80)
        {
            stream.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }
        stream.WriteByte((byte)value);
    }
}

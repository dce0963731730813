using System.Buffers.Binary;
using System.Text.Json;

namespace FisherKernels.IO;

/// <summary>
/// A safetensors file (SPEC §5): an 8-byte little-endian header length, a JSON header mapping each
/// tensor name to <c>dtype</c>, <c>shape</c> and <c>data_offsets</c> (plus an optional
/// <c>__metadata__</c> string→string map), then the raw little-endian data.
/// Reading validates the header the way the reference implementation does (the tensors' byte ranges
/// must tile the data section exactly, without gaps or overlaps) before allocating anything.
/// Dtypes read: F32, F64, F16, I8, U8, I32, I64, BOOL in their own types, and BF16, which .NET has no
/// array type for, converted to float32 (exactly). Unknown fields inside a tensor entry are ignored, as
/// the reference implementation does.
/// </summary>
public sealed class SafetensorsFile
{
    /// <summary>The reference implementation's limit on the JSON header.</summary>
    public const int MaxHeaderLength = 100_000_000;

    const string MetadataKey = "__metadata__";

    SafetensorsFile(string source, IReadOnlyList<string> names, IReadOnlyDictionary<string, NdArray> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Source = source;
        Names = names;
        Tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>The file path (or stream name) the tensors came from; used in error messages.</summary>
    public string Source { get; }

    /// <summary>Tensor names in the order their data appears in the file.</summary>
    public IReadOnlyList<string> Names { get; }

    public IReadOnlyDictionary<string, NdArray> Tensors { get; }

    /// <summary>The <c>__metadata__</c> map; empty when the file has none.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensor <paramref name="name"/> as float32 (F16, BF16 and F64 converted); a missing or non-float tensor is a Format error naming it and the file.</summary>
    public NdArray<float> GetFloat32(string name)
    {
        if (!Tensors.TryGetValue(name, out NdArray? array))
            throw FisherKernelsException.Format($"{Source}: has no tensor '{name}'");
        return RawArrays.ToFloat32(array, $"{Source}: tensor '{name}'");
    }

    public static SafetensorsFile Read(string path)
    {
        using var stream = RawArrays.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>Reads from a seekable <paramref name="stream"/> that ends where the data ends; <paramref name="source"/> names it in errors.</summary>
    public static SafetensorsFile Read(Stream stream, string source = "safetensors stream")
    {
        RawArrays.EnsureLittleEndian();
        long remaining = RawArrays.Remaining(stream, source);
        if (remaining < 8) throw FisherKernelsException.Format($"{source}: not a safetensors file (only {remaining} bytes)");
        Span<byte> lengthField = stackalloc byte[8];
        RawArrays.ReadExactly(stream, lengthField, source, "header length");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthField);
        if (headerLength > MaxHeaderLength)
            throw FisherKernelsException.Format($"{source}: header length {headerLength} exceeds the limit of {MaxHeaderLength} bytes");
        if ((long)headerLength > remaining - 8)
            throw FisherKernelsException.Format($"{source}: header length {headerLength} exceeds the file ({remaining} bytes)");
        if (headerLength < 2) throw FisherKernelsException.Format($"{source}: header of {headerLength} bytes cannot hold a JSON object");

        byte[] header = new byte[headerLength];
        RawArrays.ReadExactly(stream, header, source, "header");
        long dataLength = remaining - 8 - (long)headerLength;
        var (entries, metadata) = ParseHeader(header, source);
        ValidateLayout(entries, dataLength, source);

        var tensors = new Dictionary<string, NdArray>(entries.Count, StringComparer.Ordinal);
        var names = new List<string>(entries.Count);
        long dataStart = stream.Position;
        foreach (Entry e in entries)
        {
            stream.Position = dataStart + e.Begin;
            tensors.Add(e.Name, ReadTensor(stream, e, source));
            names.Add(e.Name);
        }
        return new SafetensorsFile(source, names, tensors, metadata);
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (data ordered by element size, then as given), with an optional <c>__metadata__</c> map,
    /// atomically (temporary file renamed into place). The header is padded with spaces to a multiple of 8 bytes.
    /// </summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, NdArray>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = DataOrder(tensors);
        byte[] header = BuildHeader(list, metadata);
        AtomicFile.Write(path, stream => WriteBody(stream, header, list));
    }

    /// <summary>Writes to <paramref name="stream"/>; see <see cref="Write(string, IEnumerable{KeyValuePair{string, NdArray}}, IReadOnlyDictionary{string, string}?)"/>.</summary>
    public static void Write(Stream stream, IEnumerable<KeyValuePair<string, NdArray>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = DataOrder(tensors);
        WriteBody(stream, BuildHeader(list, metadata), list);
    }

    /// <summary>
    /// Larger elements first (stable otherwise), as Python's safetensors does: with the header padded to 8 bytes,
    /// every tensor then starts aligned to its element size, which zero-copy readers need.
    /// </summary>
    static List<KeyValuePair<string, NdArray>> DataOrder(IEnumerable<KeyValuePair<string, NdArray>> tensors)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        foreach (var (name, array) in list)
            if (array is null) throw FisherKernelsException.Argument($"safetensors: tensor '{name}' is null");
        return list.OrderByDescending(t => ElementTypes.SizeOf(t.Value.ElementType)).ToList();
    }

    static void WriteBody(Stream stream, byte[] header, List<KeyValuePair<string, NdArray>> tensors)
    {
        Span<byte> lengthField = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(lengthField, (ulong)header.Length);
        stream.Write(lengthField);
        stream.Write(header);
        foreach (var (_, array) in tensors) RawArrays.Write(stream, array);
    }

    static byte[] BuildHeader(List<KeyValuePair<string, NdArray>> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        RawArrays.EnsureLittleEndian();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, array) in tensors)
            {
                if (string.IsNullOrEmpty(name)) throw FisherKernelsException.Argument("safetensors: tensor names must be non-empty");
                if (name == MetadataKey) throw FisherKernelsException.Argument($"safetensors: '{MetadataKey}' is reserved and cannot name a tensor");
                if (!seen.Add(name)) throw FisherKernelsException.Argument($"safetensors: tensor '{name}' is given twice");
                long size = RawArrays.ByteLength(array);
                json.WriteStartObject(name);
                json.WriteString("dtype", DtypeName(array.ElementType, name));
                json.WriteStartArray("shape");
                foreach (int d in array.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + size);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += size;
            }
            json.WriteEndObject();
        }
        long unpadded = buffer.Length;
        while (buffer.Length % 8 != 0) buffer.WriteByte((byte)' ');
        if (unpadded > MaxHeaderLength) throw FisherKernelsException.Unsupported($"safetensors: header of {unpadded} bytes exceeds the limit of {MaxHeaderLength}");
        return buffer.ToArray();
    }

    static string DtypeName(ElementType type, string name) => type switch
    {
        ElementType.Float32 => "F32",
        ElementType.Float64 => "F64",
        ElementType.Float16 => "F16",
        ElementType.Int8 => "I8",
        ElementType.UInt8 => "U8",
        ElementType.Int32 => "I32",
        ElementType.Int64 => "I64",
        ElementType.Bool => "BOOL",
        _ => throw FisherKernelsException.Unsupported($"safetensors: tensor '{name}' has element type {type}, which cannot be written"),
    };

    sealed record Entry(string Name, string Dtype, int[] Shape, long Begin, long End);

    /// <summary>Element size in the file and the type it is read into; BF16 is widened to float32.</summary>
    static (int FileSize, ElementType Type)? ParseDtype(string dtype) => dtype switch
    {
        "F32" => (4, ElementType.Float32),
        "F64" => (8, ElementType.Float64),
        "F16" => (2, ElementType.Float16),
        "BF16" => (2, ElementType.Float32),
        "I8" => (1, ElementType.Int8),
        "U8" => (1, ElementType.UInt8),
        "I32" => (4, ElementType.Int32),
        "I64" => (8, ElementType.Int64),
        "BOOL" => (1, ElementType.Bool),
        _ => null,
    };

    static readonly HashSet<string> KnownUnsupportedDtypes = new(StringComparer.Ordinal)
        { "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64" };

    static (List<Entry> Entries, Dictionary<string, string> Metadata) ParseHeader(byte[] header, string source)
    {
        // JsonDocument checks UTF-8 inside strings only when they are decoded, so check it all first.
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw FisherKernelsException.Format($"{source}: header is not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 }); }
        catch (JsonException e) { throw new FisherKernelsException(ErrorKind.Format, $"{source}: header is not valid JSON: {e.Message}", e); }
        catch (ArgumentException e) { throw new FisherKernelsException(ErrorKind.Format, $"{source}: header is not valid JSON: {e.Message}", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw FisherKernelsException.Format($"{source}: header must be a JSON object");
            var entries = new List<Entry>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty p in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(p.Name)) throw FisherKernelsException.Format($"{source}: key '{p.Name}' appears twice in the header");
                if (p.Name == MetadataKey)
                {
                    ParseMetadata(p.Value, metadata, source);
                    continue;
                }
                entries.Add(ParseEntry(p.Name, p.Value, source));
            }
            return (entries, metadata);
        }
    }

    static void ParseMetadata(JsonElement value, Dictionary<string, string> metadata, string source)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw FisherKernelsException.Format($"{source}: '{MetadataKey}' must be an object of strings");
        foreach (JsonProperty m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw FisherKernelsException.Format($"{source}: metadata '{m.Name}' must be a string, found {m.Value.ValueKind}");
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw FisherKernelsException.Format($"{source}: metadata key '{m.Name}' appears twice");
        }
    }

    static Entry ParseEntry(string name, JsonElement value, string source)
    {
        string where = $"{source}: tensor '{name}'";
        if (value.ValueKind != JsonValueKind.Object) throw FisherKernelsException.Format($"{where}: entry must be an object");
        string? dtype = null;
        int[]? shape = null;
        long[]? offsets = null;
        var fields = new HashSet<string>(StringComparer.Ordinal);
        foreach (JsonProperty f in value.EnumerateObject())
        {
            if (!fields.Add(f.Name)) throw FisherKernelsException.Format($"{where}: field '{f.Name}' appears twice");
            switch (f.Name)
            {
                case "dtype":
                    if (f.Value.ValueKind != JsonValueKind.String) throw FisherKernelsException.Format($"{where}: 'dtype' must be a string");
                    dtype = f.Value.GetString()!;
                    break;
                case "shape":
                    shape = ParseIntegers(f.Value, where, "shape", int.MaxValue).Select(d => (int)d).ToArray();
                    break;
                case "data_offsets":
                    offsets = ParseIntegers(f.Value, where, "data_offsets", long.MaxValue);
                    if (offsets.Length != 2) throw FisherKernelsException.Format($"{where}: 'data_offsets' must have two entries, found {offsets.Length}");
                    break;
            }
        }
        if (dtype is null || shape is null || offsets is null)
            throw FisherKernelsException.Format($"{where}: entry needs 'dtype', 'shape' and 'data_offsets'");
        if (ParseDtype(dtype) is not var (size, _))
        {
            if (KnownUnsupportedDtypes.Contains(dtype)) throw FisherKernelsException.Unsupported($"{where}: dtype {dtype} is not supported");
            throw FisherKernelsException.Format($"{where}: unknown dtype '{dtype}'");
        }
        if (offsets[1] < offsets[0]) throw FisherKernelsException.Format($"{where}: data_offsets [{offsets[0]}, {offsets[1]}] end before they begin");
        long bytes;
        try { bytes = checked(ShapeUtil.Product(shape) * size); }
        catch (OverflowException) { throw FisherKernelsException.Format($"{where}: shape [{ShapeUtil.Format(shape)}] is too large"); }
        if (bytes != offsets[1] - offsets[0])
            throw FisherKernelsException.Format($"{where}: shape [{ShapeUtil.Format(shape)}] of {dtype} needs {bytes} bytes, data_offsets span {offsets[1] - offsets[0]}");
        return new Entry(name, dtype, shape, offsets[0], offsets[1]);
    }

    static long[] ParseIntegers(JsonElement value, string where, string field, long max)
    {
        if (value.ValueKind != JsonValueKind.Array) throw FisherKernelsException.Format($"{where}: '{field}' must be an array of integers");
        int count = value.GetArrayLength();
        if (count > 64) throw FisherKernelsException.Format($"{where}: '{field}' has {count} entries, more than 64");
        var result = new long[count];
        int i = 0;
        foreach (JsonElement e in value.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v) || v < 0 || v > max)
                throw FisherKernelsException.Format($"{where}: '{field}' entries must be integers in [0, {max}], found {e.GetRawText()}");
            result[i++] = v;
        }
        return result;
    }

    /// <summary>Sorts entries by position and checks that they tile the data section exactly, as the reference reader does.</summary>
    static void ValidateLayout(List<Entry> entries, long dataLength, string source)
    {
        entries.Sort((x, y) => x.Begin != y.Begin ? x.Begin.CompareTo(y.Begin) : x.End.CompareTo(y.End));
        long expected = 0;
        foreach (Entry e in entries)
        {
            if (e.Begin != expected)
                throw FisherKernelsException.Format(e.Begin < expected
                    ? $"{source}: tensor '{e.Name}' data [{e.Begin}, {e.End}] overlaps the previous tensor (which ends at {expected})"
                    : $"{source}: gap in the data section before tensor '{e.Name}' (bytes {expected} to {e.Begin})");
            if (e.End > dataLength)
                throw FisherKernelsException.Format($"{source}: tensor '{e.Name}' data [{e.Begin}, {e.End}] runs past the end of the file (data section has {dataLength} bytes)");
            expected = e.End;
        }
        if (expected != dataLength)
            throw FisherKernelsException.Format($"{source}: data section has {dataLength} bytes, the tensors cover {expected}");
    }

    static NdArray ReadTensor(Stream stream, Entry e, string source)
    {
        var (_, type) = ParseDtype(e.Dtype)!.Value;
        NdArray array = RawArrays.Allocate(type, e.Shape);
        string what = $"data of tensor '{e.Name}'";
        if (e.Dtype == "BF16") RawArrays.ReadBFloat16(stream, ((NdArray<float>)array).Span, source, what);
        else RawArrays.Read(stream, array, source, what);
        return array;
    }
}

using System.Globalization;
using System.Text;

namespace FisherKernels.IO;

/// <summary>
/// NumPy <c>.npy</c> files (SPEC §5): reads versions 1.0, 2.0 and 3.0, little-endian, C order, of
/// float16/32/64, int8/32/64, uint8 and bool; writes version 1.0. Every header field is checked,
/// and the data size the header claims is checked against the file size before anything is allocated.
/// </summary>
public static class NpyFile
{
    static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>numpy itself refuses headers above 10 000 bytes; we allow more but stay bounded.</summary>
    const int MaxHeaderLength = 1 << 20;

    /// <summary>Reads the array stored in <paramref name="path"/> in its own element type.</summary>
    public static NdArray Read(string path)
    {
        using var stream = RawArrays.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>Reads one array from a seekable <paramref name="stream"/>; it must end where the data ends. <paramref name="source"/> names it in errors.</summary>
    public static NdArray Read(Stream stream, string source = "npy stream")
    {
        var (type, shape) = ReadHeader(stream, source);
        NdArray array = RawArrays.Allocate(type, shape);
        RawArrays.Read(stream, array, source, "data");
        return array;
    }

    /// <summary>
    /// Opens <paramref name="path"/> to read blocks of rows (of its first dimension) as int64: a token or target file read one
    /// batch at a time, so memory does not grow with the file.
    /// </summary>
    public static NpyRows OpenRows(string path)
    {
        FileStream stream = RawArrays.OpenRead(path);
        try
        {
            var (type, shape) = ReadHeader(stream, path);
            if (type is not (ElementType.Int32 or ElementType.Int64))
                throw FisherKernelsException.Format($"{path}: expected an int32 or int64 array, found {type}");
            if (shape.Length == 0) throw FisherKernelsException.Format($"{path}: expected an array with rows, found a scalar");
            return new NpyRows(stream, path, type, shape);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>Reads and checks the header; leaves <paramref name="stream"/> at the data, whose size is checked against the file.</summary>
    static (ElementType Type, int[] Shape) ReadHeader(Stream stream, string source)
    {
        RawArrays.EnsureLittleEndian();
        long remaining = RawArrays.Remaining(stream, source);
        if (remaining < 10) throw FisherKernelsException.Format($"{source}: not an .npy file (only {remaining} bytes)");

        Span<byte> prefix = stackalloc byte[8];
        RawArrays.ReadExactly(stream, prefix, source, "header");
        if (!prefix[..6].SequenceEqual(Magic)) throw FisherKernelsException.Format($"{source}: not an .npy file (bad magic bytes)");
        byte major = prefix[6], minor = prefix[7];
        if (!(minor == 0 && major is 1 or 2 or 3))
            throw FisherKernelsException.Unsupported($"{source}: .npy version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)");

        int lengthBytes = major == 1 ? 2 : 4;
        Span<byte> lengthField = stackalloc byte[4];
        RawArrays.ReadExactly(stream, lengthField[..lengthBytes], source, "header length");
        long headerLength = major == 1
            ? System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(lengthField)
            : System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(lengthField);
        long prefixLength = 8 + lengthBytes;
        if (headerLength > MaxHeaderLength || headerLength > remaining - prefixLength)
            throw FisherKernelsException.Format($"{source}: header length {headerLength} exceeds the file ({remaining} bytes)");

        byte[] headerBytes = new byte[headerLength];
        RawArrays.ReadExactly(stream, headerBytes, source, "header");
        string header;
        try
        {
            header = major == 3
                ? new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(headerBytes)
                : Encoding.Latin1.GetString(headerBytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new FisherKernelsException(ErrorKind.Format, $"{source}: header is not valid UTF-8", e);
        }

        var (descr, fortranOrder, shape) = HeaderParser.Parse(header, source);
        // Column-major and row-major storage coincide when at most one dimension exceeds 1 (numpy may mark those either way).
        if (fortranOrder && shape.Count(d => d > 1) > 1 && !shape.Contains(0))
            throw FisherKernelsException.Unsupported($"{source}: Fortran-ordered arrays are not supported (save with C order, e.g. numpy.ascontiguousarray)");
        ElementType type = ParseDescr(descr, source);

        long dataBytes;
        try { dataBytes = checked(ShapeUtil.Product(shape) * ElementTypes.SizeOf(type)); }
        catch (OverflowException) { throw FisherKernelsException.Format($"{source}: shape ({ShapeUtil.Format(shape)}) is too large"); }
        long available = remaining - prefixLength - headerLength;
        if (dataBytes != available)
            throw FisherKernelsException.Format($"{source}: shape ({ShapeUtil.Format(shape)}) of {descr} needs {dataBytes} data bytes, the file has {available}");
        return (type, shape);
    }

    /// <summary>Reads a floating-point array as float32 (float16 and float64 are converted).</summary>
    public static NdArray<float> ReadFloat32(string path) => RawArrays.ToFloat32(Read(path), path);

    /// <summary>Reads an integer array as int64 (int32 is widened); token and target files (SPEC §1).</summary>
    public static NdArray<long> ReadInt64(string path) => RawArrays.ToInt64(Read(path), path);

    /// <summary>Writes <paramref name="array"/> as .npy version 1.0, atomically (temporary file renamed into place).</summary>
    public static void Write(string path, NdArray array)
    {
        ArgumentNullException.ThrowIfNull(array);
        byte[] header = BuildHeader(array);
        AtomicFile.Write(path, stream =>
        {
            stream.Write(header);
            RawArrays.Write(stream, array);
        });
    }

    /// <summary>Writes <paramref name="array"/> as .npy version 1.0 to <paramref name="stream"/>.</summary>
    public static void Write(Stream stream, NdArray array)
    {
        ArgumentNullException.ThrowIfNull(array);
        stream.Write(BuildHeader(array));
        RawArrays.Write(stream, array);
    }

    static byte[] BuildHeader(NdArray array)
    {
        RawArrays.EnsureLittleEndian();
        string shape = array.Rank switch
        {
            0 => "()",
            1 => $"({array.Shape[0].ToString(CultureInfo.InvariantCulture)},)",
            _ => $"({ShapeUtil.Format(array.Shape)})",
        };
        string dict = $"{{'descr': '{Descr(array.ElementType)}', 'fortran_order': False, 'shape': {shape}, }}";
        // numpy pads the header with spaces and a final newline so that the data starts 64-byte aligned.
        int unpadded = 10 + dict.Length + 1;
        int padding = (64 - unpadded % 64) % 64;
        string text = dict + new string(' ', padding) + "\n";
        if (text.Length > ushort.MaxValue) throw FisherKernelsException.Unsupported($"npy header for shape [{ShapeUtil.Format(array.Shape)}] is too long for version 1.0");
        var bytes = new byte[10 + text.Length];
        Magic.CopyTo(bytes);
        bytes[6] = 1;
        bytes[7] = 0;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(8), (ushort)text.Length);
        Encoding.ASCII.GetBytes(text, bytes.AsSpan(10));
        return bytes;
    }

    static string Descr(ElementType type) => type switch
    {
        ElementType.Float32 => "<f4",
        ElementType.Float64 => "<f8",
        ElementType.Float16 => "<f2",
        ElementType.Int32 => "<i4",
        ElementType.Int64 => "<i8",
        ElementType.Int8 => "|i1",
        ElementType.UInt8 => "|u1",
        ElementType.Int16 => "<i2",
        ElementType.UInt16 => "<u2",
        ElementType.UInt32 => "<u4",
        ElementType.UInt64 => "<u8",
        ElementType.Bool => "|b1",
        _ => throw FisherKernelsException.Unsupported($"npy cannot store {type} arrays"),
    };

    static ElementType ParseDescr(string descr, string source)
    {
        if (descr.Length >= 2 && descr[0] == '>' && descr[1..] is not ("i1" or "u1" or "b1"))
            throw FisherKernelsException.Unsupported($"{source}: big-endian dtype '{descr}' is not supported");
        if (descr.Length < 2 || descr[0] is not ('<' or '|' or '>'))
            throw FisherKernelsException.Unsupported($"{source}: dtype '{descr}' is not supported (need little-endian '<' or '|' with f2, f4, f8, i1, i2, i4, i8, u1, u2, u4, u8 or b1)");
        return descr[1..] switch
        {
            "f4" => ElementType.Float32,
            "f8" => ElementType.Float64,
            "f2" => ElementType.Float16,
            "i4" => ElementType.Int32,
            "i8" => ElementType.Int64,
            "i1" => ElementType.Int8,
            "u1" => ElementType.UInt8,
            "i2" => ElementType.Int16,
            "u2" => ElementType.UInt16,
            "u4" => ElementType.UInt32,
            "u8" => ElementType.UInt64,
            "b1" => ElementType.Bool,
            _ => throw FisherKernelsException.Unsupported($"{source}: dtype '{descr}' is not supported (float16/32/64, int8/16/32/64, uint8/16/32/64 and bool are)"),
        };
    }

    /// <summary>
    /// The header is a Python dict literal, e.g. <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (2, 3), }</c>.
    /// This parser accepts exactly the literal forms numpy writes (and old Python 2 'L' suffixes), nothing else.
    /// </summary>
    ref struct HeaderParser
    {
        readonly ReadOnlySpan<char> text;
        readonly string source;
        int pos;

        HeaderParser(string text, string source) { this.text = text; this.source = source; pos = 0; }

        public static (string Descr, bool FortranOrder, int[] Shape) Parse(string header, string source)
        {
            var p = new HeaderParser(header, source);
            string? descr = null;
            bool? fortran = null;
            int[]? shape = null;
            p.Expect('{');
            while (true)
            {
                if (p.TryConsume('}')) break;
                string key = p.ParseString();
                p.Expect(':');
                switch (key)
                {
                    case "descr" when descr is null:
                        p.SkipSpace();
                        if (p.Peek() != '\'' && p.Peek() != '"')
                            throw FisherKernelsException.Unsupported($"{source}: structured dtypes are not supported");
                        descr = p.ParseString();
                        break;
                    case "fortran_order" when fortran is null: fortran = p.ParseBool(); break;
                    case "shape" when shape is null: shape = p.ParseShape(); break;
                    case "descr" or "fortran_order" or "shape": throw p.Error($"key '{key}' appears twice");
                    default: throw p.Error($"unexpected key '{key}'");
                }
                if (p.TryConsume('}')) break;
                p.Expect(',');
            }
            p.SkipSpace();
            if (p.pos != p.text.Length) throw p.Error("unexpected text after the header dict");
            if (descr is null || fortran is null || shape is null)
                throw p.Error("header must contain 'descr', 'fortran_order' and 'shape'");
            return (descr, fortran.Value, shape);
        }

        readonly FisherKernelsException Error(string what) =>
            FisherKernelsException.Format($"{source}: invalid .npy header at character {pos}: {what}");

        void SkipSpace() { while (pos < text.Length && text[pos] is ' ' or '\t' or '\n' or '\r') pos++; }

        char Peek() => pos < text.Length ? text[pos] : '\0';

        bool TryConsume(char c)
        {
            SkipSpace();
            if (Peek() != c) return false;
            pos++;
            return true;
        }

        void Expect(char c)
        {
            if (!TryConsume(c)) throw Error($"expected '{c}'");
        }

        string ParseString()
        {
            SkipSpace();
            char quote = Peek();
            if (quote is not ('\'' or '"')) throw Error("expected a quoted string");
            int start = ++pos;
            while (pos < text.Length && text[pos] != quote)
            {
                if (text[pos] == '\\') throw Error("escape sequences are not supported in header strings");
                pos++;
            }
            if (pos >= text.Length) throw Error("unterminated string");
            string s = text[start..pos].ToString();
            pos++;
            return s;
        }

        bool ParseBool()
        {
            SkipSpace();
            if (text[pos..].StartsWith("True")) { pos += 4; return true; }
            if (text[pos..].StartsWith("False")) { pos += 5; return false; }
            throw Error("expected True or False");
        }

        int[] ParseShape()
        {
            Expect('(');
            var dims = new List<int>();
            while (true)
            {
                if (TryConsume(')')) break;
                SkipSpace();
                int start = pos;
                while (pos < text.Length && char.IsAsciiDigit(text[pos])) pos++;
                if (pos == start) throw Error("expected a non-negative integer dimension");
                if (!int.TryParse(text[start..pos], NumberStyles.None, CultureInfo.InvariantCulture, out int d))
                    throw Error($"dimension {text[start..pos].ToString()} is too large");
                if (pos < text.Length && text[pos] == 'L') pos++;
                if (dims.Count >= 64) throw Error("more than 64 dimensions");
                dims.Add(d);
                if (TryConsume(')'))
                {
                    if (dims.Count == 1) throw Error("a one-dimensional shape needs a trailing comma, e.g. (5,)");
                    break;
                }
                Expect(',');
            }
            return dims.ToArray();
        }
    }
}

/// <summary>An open .npy integer array read a block of rows at a time (<see cref="NpyFile.OpenRows"/>).</summary>
public sealed class NpyRows : IDisposable
{
    readonly FileStream stream;
    readonly string source;
    readonly long dataStart, rowValues;

    internal NpyRows(FileStream stream, string source, ElementType type, int[] shape)
    {
        (this.stream, this.source, ElementType, Shape) = (stream, source, type, shape);
        dataStart = stream.Position;
        rowValues = ShapeUtil.Product(shape.AsSpan(1));
    }

    public ElementType ElementType { get; }
    public int[] Shape { get; }
    public int Rows => Shape[0];

    /// <summary>Rows [<paramref name="first"/>, <paramref name="first"/> + <paramref name="count"/>) as int64 (int32 widened), shape [count, ...].</summary>
    public NdArray<long> ReadInt64(int first, int count)
    {
        if (first < 0 || count < 0 || first > Rows - count)
            throw FisherKernelsException.Argument($"{source}: rows {first}..{first + count - 1} are outside its {Rows} rows");
        int[] shape = [count, .. Shape.AsSpan(1)];
        NdArray block = RawArrays.Allocate(ElementType, shape);
        stream.Position = dataStart + first * rowValues * ElementTypes.SizeOf(ElementType);
        RawArrays.Read(stream, block, source, "data");
        return RawArrays.ToInt64(block, source);
    }

    public void Dispose() => stream.Dispose();
}

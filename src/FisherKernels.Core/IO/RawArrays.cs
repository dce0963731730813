using System.Runtime.InteropServices;

namespace FisherKernels.IO;

/// <summary>Byte-level access to <see cref="NdArray"/> storage and the widening conversions the readers offer.</summary>
internal static class RawArrays
{
    /// <summary>Allocates a zeroed array; callers have already checked the size against the file.</summary>
    public static NdArray Allocate(ElementType type, int[] shape)
    {
        long n = ShapeUtil.Product(shape);
        if (n > Array.MaxLength)
            throw FisherKernelsException.Unsupported($"array of shape [{ShapeUtil.Format(shape)}] has {n} elements, more than one array can hold ({Array.MaxLength})");
        return type switch
        {
            ElementType.Float32 => new NdArray<float>(shape),
            ElementType.Float64 => new NdArray<double>(shape),
            ElementType.Float16 => new NdArray<Half>(shape),
            ElementType.Int8 => new NdArray<sbyte>(shape),
            ElementType.UInt8 => new NdArray<byte>(shape),
            ElementType.Int16 => new NdArray<short>(shape),
            ElementType.UInt16 => new NdArray<ushort>(shape),
            ElementType.UInt32 => new NdArray<uint>(shape),
            ElementType.UInt64 => new NdArray<ulong>(shape),
            ElementType.Int32 => new NdArray<int>(shape),
            ElementType.Int64 => new NdArray<long>(shape),
            ElementType.Bool => new NdArray<bool>(shape),
            _ => throw FisherKernelsException.Unsupported($"element type {type} has no array type"),
        };
    }

    /// <summary>Bytes of storage, without the 2 GiB limit of a byte span.</summary>
    public static long ByteLength(NdArray array) => array.Length * ElementTypes.SizeOf(array.ElementType);

    /// <summary>Writes the storage of <paramref name="array"/> (little-endian, as the machine is) in chunks, so arrays over 2 GiB work.</summary>
    public static void Write(Stream stream, NdArray array, int chunkBytes = ChunkBytes)
    {
        switch (array)
        {
            case NdArray<float> a: WriteChunks<float>(stream, a.Span, chunkBytes); break;
            case NdArray<double> a: WriteChunks<double>(stream, a.Span, chunkBytes); break;
            case NdArray<Half> a: WriteChunks<Half>(stream, a.Span, chunkBytes); break;
            case NdArray<int> a: WriteChunks<int>(stream, a.Span, chunkBytes); break;
            case NdArray<long> a: WriteChunks<long>(stream, a.Span, chunkBytes); break;
            default: stream.Write(Bytes(array)); break;
        }
    }

    /// <summary>Fills the storage of <paramref name="array"/> from <paramref name="stream"/> in chunks; a short read is a truncated file.</summary>
    public static void Read(Stream stream, NdArray array, string source, string what, int chunkBytes = ChunkBytes)
    {
        switch (array)
        {
            case NdArray<float> a: ReadChunks<float>(stream, a.Span, source, what, chunkBytes); break;
            case NdArray<double> a: ReadChunks<double>(stream, a.Span, source, what, chunkBytes); break;
            case NdArray<Half> a: ReadChunks<Half>(stream, a.Span, source, what, chunkBytes); break;
            case NdArray<int> a: ReadChunks<int>(stream, a.Span, source, what, chunkBytes); break;
            case NdArray<long> a: ReadChunks<long>(stream, a.Span, source, what, chunkBytes); break;
            default: ReadExactly(stream, Bytes(array), source, what); NormalizeBools(array); break;
        }
    }

    /// <summary>Largest single read or write; callers (tests) may pass smaller chunks.</summary>
    public const int ChunkBytes = 1 << 26;

    static void WriteChunks<T>(Stream stream, ReadOnlySpan<T> span, int chunkBytes) where T : unmanaged
    {
        int chunk = Math.Max(1, chunkBytes / System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        for (int i = 0; i < span.Length; i += chunk)
            stream.Write(MemoryMarshal.AsBytes(span.Slice(i, Math.Min(chunk, span.Length - i))));
    }

    static void ReadChunks<T>(Stream stream, Span<T> span, string source, string what, int chunkBytes) where T : unmanaged
    {
        int chunk = Math.Max(1, chunkBytes / System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        for (int i = 0; i < span.Length; i += chunk)
            ReadExactly(stream, MemoryMarshal.AsBytes(span.Slice(i, Math.Min(chunk, span.Length - i))), source, what);
    }

    /// <summary>Reads <paramref name="target"/>.Length bfloat16 values and widens them (exactly) to float32.</summary>
    public static void ReadBFloat16(Stream stream, Span<float> target, string source, string what, int chunkBytes = ChunkBytes)
    {
        Span<byte> buffer = new byte[Math.Max(2, Math.Min(2L * target.Length, chunkBytes) & ~1L)];
        Span<uint> words = MemoryMarshal.Cast<float, uint>(target);
        for (int i = 0; i < target.Length; i += buffer.Length / 2)
        {
            int n = Math.Min(buffer.Length / 2, target.Length - i);
            ReadExactly(stream, buffer[..(2 * n)], source, what);
            for (int k = 0; k < n; k++)
                words[i + k] = (uint)System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(buffer.Slice(2 * k, 2)) << 16;
        }
    }

    /// <summary>The storage of <paramref name="array"/> as bytes; only for arrays under 2 GiB (1-byte types, tests).</summary>
    public static Span<byte> Bytes(NdArray array) => array switch
    {
        NdArray<float> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<double> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<Half> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<sbyte> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<byte> a => a.Span,
        NdArray<short> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<ushort> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<uint> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<ulong> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<int> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<long> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<bool> a => MemoryMarshal.AsBytes(a.Span),
        _ => throw FisherKernelsException.Unsupported($"arrays of {array.ElementType} cannot be stored"),
    };

    /// <summary>Bool storage read from a file may hold any byte; numpy treats nonzero as true.</summary>
    public static void NormalizeBools(NdArray array)
    {
        if (array is not NdArray<bool> b) return;
        Span<byte> bytes = MemoryMarshal.AsBytes(b.Span);
        for (int i = 0; i < bytes.Length; i++) bytes[i] = bytes[i] != 0 ? (byte)1 : (byte)0;
    }

    public static void EnsureLittleEndian()
    {
        if (!BitConverter.IsLittleEndian)
            throw FisherKernelsException.Unsupported("npy and safetensors I/O needs a little-endian machine");
    }

    /// <summary>Float32 view of a floating-point array (float16 and float64 converted); anything else is an error naming <paramref name="what"/>.</summary>
    public static NdArray<float> ToFloat32(NdArray array, string what)
    {
        switch (array)
        {
            case NdArray<float> f: return f;
            case NdArray<Half> h:
            {
                var r = new NdArray<float>((int[])h.Shape.Clone());
                for (int i = 0; i < h.Data.Length; i++) r.Data[i] = (float)h.Data[i];
                return r;
            }
            case NdArray<double> d:
            {
                var r = new NdArray<float>((int[])d.Shape.Clone());
                for (int i = 0; i < d.Data.Length; i++) r.Data[i] = (float)d.Data[i];
                return r;
            }
            default:
                throw FisherKernelsException.Format($"{what}: expected a floating-point array (float16, float32 or float64), found {array.ElementType}");
        }
    }

    /// <summary>Int64 view of an integer array (int32 widened); anything else is an error naming <paramref name="what"/>.</summary>
    public static NdArray<long> ToInt64(NdArray array, string what)
    {
        switch (array)
        {
            case NdArray<long> l: return l;
            case NdArray<int> i32:
            {
                var r = new NdArray<long>((int[])i32.Shape.Clone());
                for (int i = 0; i < i32.Data.Length; i++) r.Data[i] = i32.Data[i];
                return r;
            }
            default:
                throw FisherKernelsException.Format($"{what}: expected an int32 or int64 array, found {array.ElementType}");
        }
    }

    /// <summary>Opens <paramref name="path"/> for reading; missing or unreadable files become Io errors naming it.</summary>
    public static FileStream OpenRead(string path)
    {
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException or System.Security.SecurityException)
        {
            string why = e is FileNotFoundException or DirectoryNotFoundException ? "file not found" : e.Message;
            throw FisherKernelsException.Io($"cannot read '{path}': {why}", e);
        }
    }

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="stream"/>; a short read is a truncated file.</summary>
    public static void ReadExactly(Stream stream, Span<byte> buffer, string source, string what)
    {
        try { stream.ReadExactly(buffer); }
        catch (EndOfStreamException e) { throw new FisherKernelsException(ErrorKind.Format, $"{source}: file is truncated in the {what}", e); }
        catch (IOException e) { throw FisherKernelsException.Io($"{source}: read failed in the {what}: {e.Message}", e); }
    }

    /// <summary>Bytes left in a seekable stream; reading needs it to check header claims before allocating.</summary>
    public static long Remaining(Stream stream, string source)
    {
        if (!stream.CanSeek) throw FisherKernelsException.Argument($"{source}: reading needs a seekable stream");
        return stream.Length - stream.Position;
    }
}

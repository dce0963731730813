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
            ElementType.Int32 => new NdArray<int>(shape),
            ElementType.Int64 => new NdArray<long>(shape),
            ElementType.Bool => new NdArray<bool>(shape),
            _ => throw FisherKernelsException.Unsupported($"element type {type} has no array type"),
        };
    }

    /// <summary>The storage of <paramref name="array"/> as little-endian bytes (the machine is little-endian).</summary>
    public static Span<byte> Bytes(NdArray array) => array switch
    {
        NdArray<float> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<double> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<Half> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<sbyte> a => MemoryMarshal.AsBytes(a.Span),
        NdArray<byte> a => a.Span,
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

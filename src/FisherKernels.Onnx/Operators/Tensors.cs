namespace FisherKernels.Onnx.Operators;

/// <summary>Small helpers over <see cref="NdArray"/> shared by the operators.</summary>
internal static class Tensors
{
    /// <summary>The elements of an int64 or int32 array as int64s; null for other types.</summary>
    public static long[]? ToLongs(NdArray array) => array switch
    {
        NdArray<long> a => (long[])a.Data.Clone(),
        NdArray<int> a => Array.ConvertAll(a.Data, v => (long)v),
        _ => null,
    };

    public static NdArray<float> Float(NdArray? array, OperatorNode node, string name) =>
        array as NdArray<float> ?? throw FisherKernelsException.Format($"{node}: {name} must be a float array, got {array?.ElementType.ToString() ?? "nothing"}");

    /// <summary>A new zeroed array of the given type and shape.</summary>
    public static NdArray Allocate(ElementType type, int[] shape) => type switch
    {
        ElementType.Float32 => new NdArray<float>(shape),
        ElementType.Int64 => new NdArray<long>(shape),
        ElementType.Int32 => new NdArray<int>(shape),
        ElementType.Bool => new NdArray<bool>(shape),
        ElementType.Int8 => new NdArray<sbyte>(shape),
        ElementType.UInt8 => new NdArray<byte>(shape),
        ElementType.Int16 => new NdArray<short>(shape),
        ElementType.UInt16 => new NdArray<ushort>(shape),
        ElementType.UInt32 => new NdArray<uint>(shape),
        ElementType.UInt64 => new NdArray<ulong>(shape),
        ElementType.String => new StringArray(shape),
        _ => throw FisherKernelsException.Unsupported($"element type {type} is not supported by the operators"),
    };

    /// <summary>The same elements (shared, not copied) under another shape of the same length: a known value through a view.</summary>
    public static NdArray WithShape(NdArray value, int[] shape) => value switch
    {
        NdArray<float> a => new NdArray<float>(shape, a.Data),
        NdArray<long> a => new NdArray<long>(shape, a.Data),
        NdArray<int> a => new NdArray<int>(shape, a.Data),
        NdArray<bool> a => new NdArray<bool>(shape, a.Data),
        NdArray<sbyte> a => new NdArray<sbyte>(shape, a.Data),
        NdArray<byte> a => new NdArray<byte>(shape, a.Data),
        NdArray<short> a => new NdArray<short>(shape, a.Data),
        NdArray<ushort> a => new NdArray<ushort>(shape, a.Data),
        NdArray<uint> a => new NdArray<uint>(shape, a.Data),
        NdArray<ulong> a => new NdArray<ulong>(shape, a.Data),
        _ => throw FisherKernelsException.Unsupported($"element type {value.ElementType} is not supported"),
    };

    /// <summary>Copies the elements of <paramref name="source"/> into <paramref name="destination"/> (same type and length).</summary>
    public static void CopyElements(NdArray source, NdArray destination)
    {
        switch (source, destination)
        {
            case (NdArray<float> s, NdArray<float> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<long> s, NdArray<long> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<int> s, NdArray<int> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<bool> s, NdArray<bool> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<sbyte> s, NdArray<sbyte> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<byte> s, NdArray<byte> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<short> s, NdArray<short> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<ushort> s, NdArray<ushort> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<uint> s, NdArray<uint> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (NdArray<ulong> s, NdArray<ulong> d): s.Data.AsSpan().CopyTo(d.Data); break;
            case (StringArray s, StringArray d): s.Data.AsSpan().CopyTo(d.Data); break;
            default: throw new FisherKernelsException(ErrorKind.Internal, $"cannot copy {source.ElementType} into {destination.ElementType}");
        }
    }

    /// <summary>Product of <paramref name="shape"/>[from..to).</summary>
    public static int Product(ReadOnlySpan<int> shape, int from, int to)
    {
        long n = 1;
        for (int i = from; i < to; i++) n *= shape[i];
        return checked((int)n);
    }

    public static bool SameShape(ReadOnlySpan<int> a, ReadOnlySpan<int> b) => a.SequenceEqual(b);
}

namespace FisherKernels;

/// <summary>Element types that cross file and graph boundaries (npy, safetensors, ONNX values; strings: ONNX values known at plan build only).</summary>
public enum ElementType { Float32, Float64, Float16, BFloat16, Int8, UInt8, Int32, Int64, Bool, Int16, UInt16, UInt32, UInt64, String }

/// <summary>A dense, row-major, owned n-dimensional array. Untyped view for I/O and graph values.</summary>
public abstract class NdArray
{
    protected NdArray(int[] shape) => Shape = shape;

    public int[] Shape { get; }
    public int Rank => Shape.Length;
    public long Length => ShapeUtil.Product(Shape);
    public abstract ElementType ElementType { get; }
}

/// <summary>A dense, row-major n-dimensional array of <typeparamref name="T"/>.</summary>
public sealed class NdArray<T> : NdArray where T : unmanaged
{
    public NdArray(int[] shape, T[] data) : base(shape)
    {
        if (data.LongLength != ShapeUtil.Product(shape))
            throw FisherKernelsException.Argument($"array of shape [{string.Join(", ", shape)}] needs {ShapeUtil.Product(shape)} elements, got {data.LongLength}");
        Data = data;
    }

    public NdArray(params int[] shape) : this(shape, new T[ShapeUtil.Product(shape)]) { }

    public T[] Data { get; }
    public Span<T> Span => Data;

    public override ElementType ElementType => ElementTypes.Of<T>();
}

/// <summary>
/// A dense, row-major n-dimensional array of strings (ONNX's STRING tensors). The ONNX engine holds strings only as values
/// known when a plan is built (Cast to and from string), never in its buffers or kernels.
/// </summary>
public sealed class StringArray : NdArray
{
    public StringArray(int[] shape, string[] data) : base(shape)
    {
        if (data.LongLength != ShapeUtil.Product(shape))
            throw FisherKernelsException.Argument($"array of shape [{string.Join(", ", shape)}] needs {ShapeUtil.Product(shape)} elements, got {data.LongLength}");
        Data = data;
    }

    public StringArray(params int[] shape) : this(shape, Enumerable.Repeat("", checked((int)ShapeUtil.Product(shape))).ToArray()) { }

    public string[] Data { get; }

    public override ElementType ElementType => ElementType.String;
}

public static class ElementTypes
{
    public static ElementType Of<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? ElementType.Float32 :
        typeof(T) == typeof(double) ? ElementType.Float64 :
        typeof(T) == typeof(Half) ? ElementType.Float16 :
        typeof(T) == typeof(sbyte) ? ElementType.Int8 :
        typeof(T) == typeof(byte) ? ElementType.UInt8 :
        typeof(T) == typeof(int) ? ElementType.Int32 :
        typeof(T) == typeof(long) ? ElementType.Int64 :
        typeof(T) == typeof(bool) ? ElementType.Bool :
        typeof(T) == typeof(short) ? ElementType.Int16 :
        typeof(T) == typeof(ushort) ? ElementType.UInt16 :
        typeof(T) == typeof(uint) ? ElementType.UInt32 :
        typeof(T) == typeof(ulong) ? ElementType.UInt64 :
        throw FisherKernelsException.Unsupported($"element type {typeof(T).Name} is not supported");

    public static int SizeOf(ElementType type) => type switch
    {
        ElementType.Float64 or ElementType.Int64 or ElementType.UInt64 => 8,
        ElementType.Float32 or ElementType.Int32 or ElementType.UInt32 => 4,
        ElementType.Float16 or ElementType.BFloat16 or ElementType.Int16 or ElementType.UInt16 => 2,
        _ => 1,
    };
}

public static class ShapeUtil
{
    /// <summary>Product of the dimensions; throws on negative dimensions or overflow of <see cref="long"/>.</summary>
    public static long Product(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw FisherKernelsException.Argument($"negative dimension {d} in shape [{Format(shape)}]");
            n = checked(n * d);
        }
        return n;
    }

    public static string Format(ReadOnlySpan<int> shape)
    {
        var parts = new string[shape.Length];
        for (int i = 0; i < shape.Length; i++) parts[i] = shape[i].ToString(System.Globalization.CultureInfo.InvariantCulture);
        return string.Join(", ", parts);
    }
}

using System.Runtime.InteropServices;
using FisherKernels.Onnx.Proto;
using DataType = FisherKernels.Onnx.Proto.TensorProto.Types.DataType;

namespace FisherKernels.Onnx.Import;

/// <summary>
/// Converts a TensorProto to an owned array: float32, float16, bfloat16 and float64 become float32;
/// int64, int32, int16, int8, uint64, uint32, uint16, uint8 and bool keep their type. Data comes from raw_data, the typed fields, or an
/// external file (through <see cref="ExternalData"/>).
/// </summary>
internal static class TensorImport
{
    public static NdArray ToArray(TensorProto tensor, string what, ExternalData external)
    {
        int[] shape = Shape(tensor, what);
        long count = ShapeUtil.Product(shape);
        if (count > Array.MaxLength)
            throw FisherKernelsException.Unsupported($"{what}: {count} elements are more than one array can hold");
        var type = (DataType)tensor.DataType;
        int size = ElementSize(type, what);

        ReadOnlySpan<byte> raw = default;
        bool hasRaw = false;
        if (tensor.DataLocation == TensorProto.Types.DataLocation.External)
        {
            raw = external.Read(tensor, what, checked(count * size));
            hasRaw = true;
        }
        else if (!tensor.RawData.IsEmpty || count == 0 || TypedCount(tensor, type) == 0)
        {
            raw = tensor.RawData.Span;
            hasRaw = true;
        }
        if (hasRaw && raw.Length != count * size)
            throw FisherKernelsException.Format($"{what}: {raw.Length} bytes of data for shape [{ShapeUtil.Format(shape)}] of {type} (expected {count * size}; truncated or corrupt model?)");

        switch (type)
        {
            case DataType.Float:
                return new NdArray<float>(shape, hasRaw ? MemoryMarshal.Cast<byte, float>(raw).ToArray() : Checked(tensor.FloatData.ToArray(), count, what));
            case DataType.Float16:
            case DataType.Bfloat16:
            {
                var result = new float[count];
                if (hasRaw)
                {
                    var bits = MemoryMarshal.Cast<byte, ushort>(raw);
                    for (int i = 0; i < result.Length; i++) result[i] = HalfBits(bits[i], type);
                }
                else
                {
                    var bits = Checked(tensor.Int32Data.ToArray(), count, what);
                    for (int i = 0; i < result.Length; i++) result[i] = HalfBits((ushort)bits[i], type);
                }
                return new NdArray<float>(shape, result);
            }
            case DataType.Double:
            {
                var values = hasRaw ? MemoryMarshal.Cast<byte, double>(raw).ToArray() : Checked(tensor.DoubleData.ToArray(), count, what);
                return new NdArray<float>(shape, Array.ConvertAll(values, v => (float)v));
            }
            case DataType.Int64:
                return new NdArray<long>(shape, hasRaw ? MemoryMarshal.Cast<byte, long>(raw).ToArray() : Checked(tensor.Int64Data.ToArray(), count, what));
            case DataType.Int32:
                return new NdArray<int>(shape, hasRaw ? MemoryMarshal.Cast<byte, int>(raw).ToArray() : Checked(tensor.Int32Data.ToArray(), count, what));
            case DataType.Int8:
                return new NdArray<sbyte>(shape, hasRaw ? MemoryMarshal.Cast<byte, sbyte>(raw).ToArray() : Array.ConvertAll(Checked(tensor.Int32Data.ToArray(), count, what), v => (sbyte)v));
            case DataType.Uint8:
                return new NdArray<byte>(shape, hasRaw ? raw.ToArray() : Array.ConvertAll(Checked(tensor.Int32Data.ToArray(), count, what), v => (byte)v));
            case DataType.Int16:
                return new NdArray<short>(shape, hasRaw ? MemoryMarshal.Cast<byte, short>(raw).ToArray() : Array.ConvertAll(Checked(tensor.Int32Data.ToArray(), count, what), v => (short)v));
            case DataType.Uint16:
                return new NdArray<ushort>(shape, hasRaw ? MemoryMarshal.Cast<byte, ushort>(raw).ToArray() : Array.ConvertAll(Checked(tensor.Int32Data.ToArray(), count, what), v => (ushort)v));
            // uint32 and uint64 have the typed field uint64_data.
            case DataType.Uint32:
                return new NdArray<uint>(shape, hasRaw ? MemoryMarshal.Cast<byte, uint>(raw).ToArray() : Array.ConvertAll(Checked(tensor.Uint64Data.ToArray(), count, what), v => (uint)v));
            case DataType.Uint64:
                return new NdArray<ulong>(shape, hasRaw ? MemoryMarshal.Cast<byte, ulong>(raw).ToArray() : Checked(tensor.Uint64Data.ToArray(), count, what));
            case DataType.Bool:
            {
                var result = new bool[count];
                if (hasRaw) for (int i = 0; i < result.Length; i++) result[i] = raw[i] != 0;
                else
                {
                    var values = Checked(tensor.Int32Data.ToArray(), count, what);
                    for (int i = 0; i < result.Length; i++) result[i] = values[i] != 0;
                }
                return new NdArray<bool>(shape, result);
            }
            default:
                throw FisherKernelsException.Unsupported($"{what}: element type {type} is not supported ({Supported} are)");
        }
    }

    /// <summary>The graph element type a TensorProto data type becomes after import (null when unsupported).</summary>
    public static ElementType? ImportedType(int dataType) => (DataType)dataType switch
    {
        DataType.Float or DataType.Float16 or DataType.Bfloat16 => ElementType.Float32,
        DataType.Int64 => ElementType.Int64,
        DataType.Int32 => ElementType.Int32,
        DataType.Bool => ElementType.Bool,
        DataType.Int8 => ElementType.Int8,
        DataType.Uint8 => ElementType.UInt8,
        DataType.Int16 => ElementType.Int16,
        DataType.Uint16 => ElementType.UInt16,
        DataType.Uint32 => ElementType.UInt32,
        DataType.Uint64 => ElementType.UInt64,
        // The engine computes in float32 (as Cast to DOUBLE does): a float64 input arrives as float32.
        DataType.Double => ElementType.Float32,
        // Strings are values known when a plan is built (a string graph input is folded by value), for Cast alone.
        DataType.String => ElementType.String,
        _ => null,
    };

    private static int[] Shape(TensorProto tensor, string what)
    {
        var shape = new int[tensor.Dims.Count];
        for (int i = 0; i < shape.Length; i++)
        {
            long d = tensor.Dims[i];
            if (d < 0 || d > int.MaxValue)
                throw FisherKernelsException.Format($"{what}: invalid dimension {d}");
            shape[i] = (int)d;
        }
        return shape;
    }

    private static int ElementSize(DataType type, string what) => type switch
    {
        DataType.Float or DataType.Int32 or DataType.Uint32 => 4,
        DataType.Float16 or DataType.Bfloat16 or DataType.Int16 or DataType.Uint16 => 2,
        DataType.Int64 or DataType.Double or DataType.Uint64 => 8,
        DataType.Bool or DataType.Int8 or DataType.Uint8 => 1,
        DataType.Undefined => throw FisherKernelsException.Format($"{what}: element type is not set (corrupt model?)"),
        _ => throw FisherKernelsException.Unsupported($"{what}: element type {type} is not supported ({Supported} are)"),
    };

    private const string Supported = "float32, float16, bfloat16, float64, int64, int32, int16, int8, uint64, uint32, uint16, uint8 and bool";

    private static int TypedCount(TensorProto tensor, DataType type) => type switch
    {
        DataType.Float => tensor.FloatData.Count,
        DataType.Int64 => tensor.Int64Data.Count,
        DataType.Double => tensor.DoubleData.Count,
        DataType.Uint32 or DataType.Uint64 => tensor.Uint64Data.Count,
        _ => tensor.Int32Data.Count,
    };

    private static T[] Checked<T>(T[] values, long count, string what)
    {
        if (values.LongLength != count)
            throw FisherKernelsException.Format($"{what}: {values.Length} values for {count} elements (corrupt model?)");
        return values;
    }

    private static float HalfBits(ushort bits, DataType type) => type == DataType.Bfloat16
        ? BitConverter.Int32BitsToSingle(bits << 16)
        : (float)BitConverter.UInt16BitsToHalf(bits);
}

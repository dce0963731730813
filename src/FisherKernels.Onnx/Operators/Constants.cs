using System.Globalization;
using System.Numerics;

namespace FisherKernels.Onnx.Operators;

/// <summary>Shape (opset 15+: start/end, clamped): the input's shape as int64, known at plan time.</summary>
internal sealed class Shape : Operator
{
    public Shape(OperatorNode node) : base(node) => RequireInputs(1, 1);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "data");
        int rank = x.Shape.Length;
        long start = Node.Attributes.GetInt("start", 0), end = Node.Attributes.GetInt("end", rank);
        if (start < 0) start += rank;
        if (end < 0) end += rank;
        int from = (int)Math.Clamp(start, 0, rank), to = (int)Math.Clamp(end, from, rank);
        var dims = x.Shape[from..to].Select(d => (long)d).ToArray();
        return [new TensorInfo(ElementType.Int64, [dims.Length], new NdArray<long>([dims.Length], dims))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = inputs[0]!;
        var value = (NdArray<long>)InferShapes([new TensorInfo(x.ElementType, x.Shape)])[0].Value!;
        value.Span.CopyTo(((NdArray<long>)outputs[0]).Span);
    }
}

/// <summary>Constant: value (tensor), value_float(s) or value_int(s); known at plan time.</summary>
internal sealed class Constant : Operator
{
    private readonly NdArray value;

    public Constant(OperatorNode node) : base(node)
    {
        RequireInputs(0, 0);
        var a = node.Attributes;
        value = a.GetTensor("value")
            ?? (a.Has("value_float") ? (NdArray)new NdArray<float>([], [a.GetFloat("value_float", 0)]) : null)
            ?? (a.GetFloats("value_floats") is { } fs ? (NdArray)new NdArray<float>([fs.Length], fs) : null)
            ?? (a.GetIntOrNull("value_int") is { } i ? (NdArray)new NdArray<long>([], [i]) : null)
            ?? (a.GetInts("value_ints") is { } ls ? (NdArray)new NdArray<long>([ls.Length], ls) : null)
            ?? throw FisherKernelsException.Unsupported("needs a value, value_float(s) or value_int(s) attribute (strings and sparse values are not supported)");
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs) => [new TensorInfo(value.ElementType, value.Shape, value)];

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) =>
        Tensors.CopyElements(value, outputs[0]);
}

/// <summary>ConstantOfShape: a tensor of the given (known) shape filled with 'value' (default float 0).</summary>
internal sealed class ConstantOfShape : Operator
{
    private readonly NdArray fill;

    public ConstantOfShape(OperatorNode node) : base(node)
    {
        RequireInputs(1, 1);
        fill = node.Attributes.GetTensor("value") ?? new NdArray<float>([1], [0f]);
        if (fill.Length != 1) throw FisherKernelsException.Format($"attribute 'value' must hold one element, got {fill.Length}");
    }

    public override bool NeedsValue(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var shape = ConstantInts(Required(inputs, 0, "input"), "input");
        if (shape.Any(d => d < 0 || d > int.MaxValue)) throw Error($"invalid shape [{string.Join(", ", shape)}]");
        return [new TensorInfo(fill.ElementType, Array.ConvertAll(shape, d => (int)d))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (fill, outputs[0])
        {
            case (NdArray<float> f, NdArray<float> o): o.Span.Fill(f.Data[0]); break;
            case (NdArray<long> f, NdArray<long> o): o.Span.Fill(f.Data[0]); break;
            case (NdArray<int> f, NdArray<int> o): o.Span.Fill(f.Data[0]); break;
            case (NdArray<bool> f, NdArray<bool> o): o.Span.Fill(f.Data[0]); break;
            default: throw UnsupportedError($"value of type {fill.ElementType} is not supported");
        }
    }
}

/// <summary>Range(start, limit, delta) of scalars (known at plan time): max(⌈(limit − start)/delta⌉, 0) elements.</summary>
internal sealed class Range : Operator
{
    public Range(OperatorNode node) : base(node) => RequireInputs(3, 3);

    public override bool NeedsValue(int input) => true;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var start = Required(inputs, 0, "start");
        for (int i = 1; i < 3; i++)
            if (Required(inputs, i, i == 1 ? "limit" : "delta").Type != start.Type) throw Error("start, limit and delta must have one type");
        double s = Scalar(start, "start"), l = Scalar(inputs[1]!, "limit"), d = Scalar(inputs[2]!, "delta");
        if (d == 0) throw Error("delta must not be 0");
        double count = Math.Max(Math.Ceiling((l - s) / d), 0);
        if (count > int.MaxValue) throw Error($"range of {count} elements is too large");
        return [new TensorInfo(start.Type, [(int)count])];
    }

    private double Scalar(TensorInfo info, string name)
    {
        if (info.Length != 1) throw Error($"{name} must be a scalar, got [{ShapeUtil.Format(info.Shape)}]");
        return info.Value switch
        {
            NdArray<float> f => f.Data[0],
            NdArray<long> l => l.Data[0],
            NdArray<int> i => i.Data[0],
            null => throw UnsupportedError($"input '{name}' must be known when the plan is built"),
            _ => throw UnsupportedError($"{name} of type {info.Type} is not supported"),
        };
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (inputs[0], inputs[2], outputs[0])
        {
            case (NdArray<float> s, NdArray<float> d, NdArray<float> o): for (int i = 0; i < o.Data.Length; i++) o.Data[i] = s.Data[0] + i * d.Data[0]; break;
            case (NdArray<long> s, NdArray<long> d, NdArray<long> o): for (int i = 0; i < o.Data.Length; i++) o.Data[i] = s.Data[0] + i * d.Data[0]; break;
            case (NdArray<int> s, NdArray<int> d, NdArray<int> o): for (int i = 0; i < o.Data.Length; i++) o.Data[i] = s.Data[0] + i * d.Data[0]; break;
            default: throw UnsupportedError($"element type {inputs[0]!.ElementType} is not supported");
        }
    }
}

/// <summary>
/// Cast between float, every integer type and bool (to an integer: the integer part, wrapped around to the target's
/// width as numpy's astype does; integer to integer is exact, so uint64 and int64 beyond 2^24 keep every bit). The engine
/// computes in float32: a cast to bfloat16 or float16 rounds each value to the nearest bfloat16 or float16 (ties to even,
/// as the specification asks) and holds it as float32; a cast to double produces float32. Float → float is the identity
/// for derivatives; casts to integers and bool are not differentiable. Strings (to and from numbers, as the
/// specification's Cast defines them) are values known when the plan is built: the input of a cast to string must be.
/// </summary>
internal sealed class Cast : Operator
{
    private readonly ElementType target;
    private readonly bool toBFloat16, toFloat16;

    public Cast(OperatorNode node) : base(node)
    {
        RequireInputs(1, 1);
        long to = node.Attributes.GetIntOrNull("to") ?? throw FisherKernelsException.Format("attribute 'to' is required");
        toBFloat16 = to == 16;
        toFloat16 = to == 10;
        target = to switch
        {
            1 or 10 or 11 or 16 => ElementType.Float32, // FLOAT, FLOAT16, DOUBLE, BFLOAT16
            2 => ElementType.UInt8,
            3 => ElementType.Int8,
            4 => ElementType.UInt16,
            5 => ElementType.Int16,
            6 => ElementType.Int32,
            7 => ElementType.Int64,
            9 => ElementType.Bool,
            12 => ElementType.UInt32,
            13 => ElementType.UInt64,
            8 => ElementType.String,
            _ => throw FisherKernelsException.Unsupported($"cast to ONNX element type {to} is not supported (float, double, float16, bfloat16, int64, int32, int16, int8, uint64, uint32, uint16, uint8, bool, string are)"),
        };
    }

    public override bool IsDifferentiable(int input) => input == 0 && target == ElementType.Float32;

    /// <summary>A string exists only as a value known at plan build, so the number it is made from must be too.</summary>
    public override bool NeedsValue(int input) => target == ElementType.String;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "input");
        if (x.Type is ElementType.Float64 or ElementType.Float16 or ElementType.BFloat16)
            throw UnsupportedError($"input of type {x.Type} is not supported");
        if ((x.Type, target) is (ElementType.Bool, ElementType.String) or (ElementType.String, ElementType.Bool))
            throw UnsupportedError("cast between bool and string is not supported (the specification defines strings to and from numbers)");
        return [new TensorInfo(target, x.Shape)];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = inputs[0]!;
        int n = (int)x.Length;
        if (x is StringArray text) x = CastStrings.Parse(text, target, Node.ToString());
        switch (outputs[0])
        {
            case StringArray o:
                for (int i = 0; i < n; i++) o.Data[i] = x switch
                {
                    StringArray t => t.Data[i],
                    NdArray<float> f => CastStrings.Format(f.Data[i]),
                    NdArray<ulong> u => u.Data[i].ToString(CultureInfo.InvariantCulture),
                    _ => Integer(x, i).ToString(CultureInfo.InvariantCulture),
                };
                break;
            case NdArray<float> o:
                for (int i = 0; i < n; i++) o.Data[i] = x is NdArray<ulong> u ? u.Data[i] : Read(x, i);
                if (toBFloat16) for (int i = 0; i < n; i++) o.Data[i] = RoundToBFloat16(o.Data[i]);
                // The nearest float16 (ties to even, overflow to infinity, subnormals kept), held as the float32 it widens to.
                // An integer reaches float16's range (|x| ≤ 65504) exactly as float32, so rounding once more there is rounding once.
                if (toFloat16) for (int i = 0; i < n; i++) o.Data[i] = (float)(Half)o.Data[i];
                break;
            case NdArray<bool> o: for (int i = 0; i < n; i++) o.Data[i] = x is NdArray<float> f ? f.Data[i] != 0 : Integer(x, i) != 0; break;
            case NdArray<long> o: ToInteger(x, o.Data); break;
            case NdArray<int> o: ToInteger(x, o.Data); break;
            case NdArray<short> o: ToInteger(x, o.Data); break;
            case NdArray<sbyte> o: ToInteger(x, o.Data); break;
            case NdArray<ulong> o: ToInteger(x, o.Data); break;
            case NdArray<uint> o: ToInteger(x, o.Data); break;
            case NdArray<ushort> o: ToInteger(x, o.Data); break;
            case NdArray<byte> o: ToInteger(x, o.Data); break;
        }
    }

    /// <summary>
    /// A float's integer part (truncated toward zero, through int64, or uint64 from 2^63 up), an integer's bits: wrapped
    /// to the target's width either way, as numpy's astype does.
    /// </summary>
    private static void ToInteger<T>(NdArray x, T[] y) where T : IBinaryInteger<T>
    {
        if (x is NdArray<float> f)
            for (int i = 0; i < y.Length; i++) y[i] = f.Data[i] >= 9223372036854775808f ? T.CreateTruncating((ulong)f.Data[i]) : T.CreateTruncating((long)f.Data[i]);
        else
            for (int i = 0; i < y.Length; i++) y[i] = T.CreateTruncating(Integer(x, i));
    }

    /// <summary>Element i of an integer or bool array as int64 (uint64 by its bits, which wrap to the same narrower values).</summary>
    private static long Integer(NdArray x, int i) => x switch
    {
        NdArray<long> l => l.Data[i],
        NdArray<int> n => n.Data[i],
        NdArray<short> s => s.Data[i],
        NdArray<sbyte> s => s.Data[i],
        NdArray<ulong> u => unchecked((long)u.Data[i]),
        NdArray<uint> u => u.Data[i],
        NdArray<ushort> u => u.Data[i],
        NdArray<byte> u => u.Data[i],
        NdArray<bool> b => b.Data[i] ? 1 : 0,
        _ => throw FisherKernelsException.Unsupported($"cast from {x.ElementType} is not supported"),
    };

    /// <summary>The nearest bfloat16 (the top 16 bits of a float32), ties to even; NaN stays a quiet NaN of its sign.</summary>
    internal static float RoundToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return BitConverter.UInt32BitsToSingle((bits | 0x0040_0000) & 0xFFFF_0000);
        // Adding 0x7FFF plus the kept part's lowest bit carries into it exactly when the dropped half is above one half,
        // or is one half and the kept part is odd; a carry out of the largest finite value gives infinity, as rounding should.
        return BitConverter.UInt32BitsToSingle((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000);
    }

    private static float Read(NdArray x, int i) => x is NdArray<float> f ? f.Data[i] : Integer(x, i);

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads) =>
        PassThroughVjp(outputGrads, inputGrads);

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents) =>
        PassThroughJvp(inputTangents, outputTangents);
}

/// <summary>
/// Cast's strings (ONNX specification, Cast): numbers from their plain or scientific text, with "INF", "+INF", "-INF"
/// and "NaN" in any case for the special values; a number as the shortest text that reads back to the same float32,
/// written as numpy writes a float32 (what ONNX's own cases expect): positional for magnitudes from 1e-4 up to 1e16,
/// with at least one decimal ("0.5488135", "100.0"), else scientific with two exponent digits at least ("1e-05",
/// "1.5e+16"); "nan", "inf", "-inf". An integer as its decimal digits.
/// </summary>
internal static class CastStrings
{
    /// <summary>The strings as float32 (to a float target) or as int64 (to an integer one: an integer exactly, else the number's integer part).</summary>
    public static NdArray Parse(StringArray text, ElementType target, string node)
    {
        int n = text.Data.Length;
        if (target == ElementType.String) return text;
        if (target == ElementType.Float32)
        {
            var result = new float[n];
            for (int i = 0; i < n; i++) result[i] = (float)Number(text.Data[i], i, node, asFloat32: true);
            return new NdArray<float>(text.Shape, result);
        }
        var integers = new long[n];
        for (int i = 0; i < n; i++)
            integers[i] = long.TryParse(text.Data[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out long exact) ? exact
                : unchecked((long)Math.Truncate(Number(text.Data[i], i, node, asFloat32: false)));
        return new NdArray<long>(text.Shape, integers);
    }

    private static double Number(string s, int index, string node, bool asFloat32)
    {
        string t = s.Trim();
        if (t.Equals("INF", StringComparison.OrdinalIgnoreCase) || t.Equals("+INF", StringComparison.OrdinalIgnoreCase)) return double.PositiveInfinity;
        if (t.Equals("-INF", StringComparison.OrdinalIgnoreCase)) return double.NegativeInfinity;
        if (t.Equals("NaN", StringComparison.OrdinalIgnoreCase)) return double.NaN;
        // float32 parsed directly (one rounding, not through double); the literals above are the only words taken.
        if (t.Length > 0 && (char.IsAsciiDigit(t[^1]) || t[^1] == '.'))
        {
            if (asFloat32 && float.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out float f)) return f;
            if (!asFloat32 && double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double d)) return d;
        }
        throw FisherKernelsException.Format($"{node}: element {index} of the input, '{s}', is not a number");
    }

    /// <summary>The shortest round-trip text of a float32, in Python's and numpy's notation.</summary>
    public static string Format(float value)
    {
        if (float.IsNaN(value)) return "nan";
        if (float.IsInfinity(value)) return value > 0 ? "inf" : "-inf";
        string sign = value < 0 || (value == 0 && float.IsNegative(value)) ? "-" : "";
        if (value == 0) return sign + "0.0";
        // .NET's "R" gives the shortest digits that read back to the same float32: take them and the decimal exponent.
        string shortest = Math.Abs(value).ToString("R", CultureInfo.InvariantCulture);
        int e = shortest.IndexOf('E');
        string mantissa = e < 0 ? shortest : shortest[..e];
        int exponent = e < 0 ? 0 : int.Parse(shortest[(e + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        int point = mantissa.IndexOf('.');
        string digits = point < 0 ? mantissa : mantissa[..point] + mantissa[(point + 1)..];
        exponent += (point < 0 ? mantissa.Length : point) - 1;
        int leading = digits.Length - digits.TrimStart('0').Length;
        digits = digits.TrimStart('0');
        exponent -= leading;
        digits = digits.TrimEnd('0');
        // numpy's rule, by value (float32 1e-4 lies just below 1e-4, so it is "1e-04"); Python's repr decides by the digits.
        double magnitude = Math.Abs((double)value);
        if (magnitude < 1e-4 || magnitude >= 1e16)
        {
            string fraction = digits.Length > 1 ? "." + digits[1..] : "";
            return $"{sign}{digits[0]}{fraction}e{(exponent < 0 ? "-" : "+")}{Math.Abs(exponent):00}";
        }
        if (exponent < 0) return $"{sign}0.{new string('0', -exponent - 1)}{digits}";
        string whole = digits.Length > exponent + 1 ? digits[..(exponent + 1)] : digits.PadRight(exponent + 1, '0');
        string rest = digits.Length > exponent + 1 ? digits[(exponent + 1)..] : "0";
        return $"{sign}{whole}.{rest}";
    }
}

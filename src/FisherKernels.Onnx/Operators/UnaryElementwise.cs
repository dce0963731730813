using System.Numerics;
using System.Runtime.Intrinsics;
using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>One float unary function: SIMD forward over spans and its derivative dy/dx from x and y.</summary>
internal interface IUnaryOp
{
    static abstract void Apply(ReadOnlySpan<float> x, Span<float> y);
    static abstract void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> dydx);
}

internal struct SqrtOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Sqrt(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => TensorPrimitives.Divide(0.5f, y, d);
}

internal struct ReciprocalOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Divide(1f, x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        TensorPrimitives.Multiply(y, y, d);
        TensorPrimitives.Negate(d, d);
    }
}

internal struct NegOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Negate(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => d.Fill(-1);
}

internal struct ExpOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Exp(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => y.CopyTo(d);
}

internal struct LogOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Log(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => TensorPrimitives.Divide(1f, x, d);
}

internal struct TanhOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Tanh(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        TensorPrimitives.Multiply(y, y, d);
        TensorPrimitives.Subtract(1f, d, d);
    }
}

internal struct SigmoidOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Sigmoid(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        TensorPrimitives.Multiply(y, y, d);
        TensorPrimitives.Subtract(y, d, d);
    }
}

internal struct ReluOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Max(x, 0f, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        for (int i = 0; i < x.Length; i++) d[i] = x[i] > 0 ? 1 : 0;
    }
}

internal struct CosOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Cos(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        TensorPrimitives.Sin(x, d);
        TensorPrimitives.Negate(d, d);
    }
}

internal struct SinOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Sin(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => TensorPrimitives.Cos(x, d);
}

internal struct AbsOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Abs(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        for (int i = 0; i < x.Length; i++) d[i] = x[i] > 0 ? 1 : x[i] < 0 ? -1 : 0;
    }
}

internal struct ErfOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => FastMath.Erf(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        // d erf / dx = 2/√π · exp(−x²)
        TensorPrimitives.Multiply(x, x, d);
        TensorPrimitives.Negate(d, d);
        TensorPrimitives.Exp(d, d);
        TensorPrimitives.Multiply(d, 2 / MathF.Sqrt(MathF.PI), d);
    }
}

/// <summary>GELU with the exact erf form: x·Φ(x).</summary>
internal struct GeluErfOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => FastMath.GeluErf(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => FastMath.GeluErfDerivative(x, d);
}

/// <summary>GELU with the tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))).</summary>
internal struct GeluTanhOp : IUnaryOp
{
    public static void Apply(ReadOnlySpan<float> x, Span<float> y) => FastMath.GeluTanh(x, y);
    public static void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d) => FastMath.GeluTanhDerivative(x, d);
}

/// <summary>
/// Elementwise float functions: Sqrt, Reciprocal, Neg, Exp, Log, Tanh, Erf, Sigmoid, Relu, Cos, Sin, Abs, Gelu
/// (opset 20, approximate = none | tanh), and the com.microsoft fusions FastGelu (tanh GELU of x + bias)
/// and BiasGelu (erf GELU of x + bias), whose optional bias is broadcast over the last axis, com.microsoft Gelu (erf form)
/// and QuickGelu (x·sigmoid(αx), attribute alpha, default 1.702).
/// Neg also takes int64/int32 (shape arithmetic).
/// </summary>
internal sealed class UnaryElementwise : Operator
{
    private enum Function { Sqrt, Reciprocal, Neg, Exp, Log, Tanh, Erf, Sigmoid, Relu, Cos, Sin, Abs, GeluErf, GeluTanh, QuickGelu }

    private readonly Function function;
    private readonly bool hasBias;
    private readonly float alpha; // QuickGelu's

    public UnaryElementwise(OperatorNode node) : base(node)
    {
        hasBias = node.OpType is "FastGelu" or "BiasGelu";
        if (hasBias) RequireInputs(node.OpType == "BiasGelu" ? 2 : 1, 2); else RequireInputs(1, 1);
        function = node.OpType switch
        {
            "Sqrt" => Function.Sqrt,
            "Reciprocal" => Function.Reciprocal,
            "Neg" => Function.Neg,
            "Exp" => Function.Exp,
            "Log" => Function.Log,
            "Tanh" => Function.Tanh,
            "Erf" => Function.Erf,
            "Sigmoid" => Function.Sigmoid,
            "Relu" => Function.Relu,
            "Cos" => Function.Cos,
            "Sin" => Function.Sin,
            "Abs" => Function.Abs,
            "FastGelu" => Function.GeluTanh,
            "BiasGelu" => Function.GeluErf,
            "QuickGelu" => Function.QuickGelu,
            "Gelu" => node.Attributes.GetString("approximate", "none") switch
            {
                "none" => Function.GeluErf,
                "tanh" => Function.GeluTanh,
                var other => throw FisherKernelsException.Unsupported($"attribute 'approximate' must be 'none' or 'tanh', got '{other}'"),
            },
            _ => throw new FisherKernelsException(ErrorKind.Internal, $"{node}: not an elementwise unary operator"),
        };
        alpha = node.Attributes.GetFloat("alpha", 1.702f);
    }

    public override bool IsDifferentiable(int input) => input == 0 || (hasBias && input == 1);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "X");
        if (x.Type != ElementType.Float32 && !(function == Function.Neg && x.Type is ElementType.Int64 or ElementType.Int32))
            throw UnsupportedError($"input X must be float, got {x.Type}");
        if (hasBias && inputs.Length > 1 && inputs[1] is { } bias
            && (bias.Shape.Length != 1 || x.Shape.Length == 0 || bias.Shape[0] != x.Shape[^1]))
            throw Error($"bias [{ShapeUtil.Format(bias.Shape)}] must be 1-D of the last dimension of X [{ShapeUtil.Format(x.Shape)}]");
        return [new TensorInfo(x.Type, x.Shape)];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (inputs[0], outputs[0])
        {
            case (NdArray<long> a, NdArray<long> y): for (int i = 0; i < a.Data.Length; i++) y.Data[i] = -a.Data[i]; return;
            case (NdArray<int> a, NdArray<int> y): for (int i = 0; i < a.Data.Length; i++) y.Data[i] = -a.Data[i]; return;
        }
        var output = Tensors.Float(outputs[0], Node, "Y").Span;
        Apply(Input(inputs, output), output);
    }

    /// <summary>The function's argument: X, or X + bias written into <paramref name="destination"/>.</summary>
    private ReadOnlySpan<float> Input(ReadOnlySpan<NdArray?> inputs, Span<float> destination)
    {
        var x = Tensors.Float(inputs[0], Node, "X").Span;
        if (!hasBias || inputs.Length < 2 || inputs[1] is not NdArray<float> bias) return x;
        int n = bias.Data.Length;
        for (int row = 0; row < x.Length; row += n) TensorPrimitives.Add(x.Slice(row, n), bias.Span, destination.Slice(row, n));
        return destination;
    }

    private void Apply(ReadOnlySpan<float> x, Span<float> y)
    {
        switch (function)
        {
            case Function.Sqrt: SqrtOp.Apply(x, y); break;
            case Function.Reciprocal: ReciprocalOp.Apply(x, y); break;
            case Function.Neg: NegOp.Apply(x, y); break;
            case Function.Exp: ExpOp.Apply(x, y); break;
            case Function.Log: LogOp.Apply(x, y); break;
            case Function.Tanh: TanhOp.Apply(x, y); break;
            case Function.Erf: ErfOp.Apply(x, y); break;
            case Function.Sigmoid: SigmoidOp.Apply(x, y); break;
            case Function.Relu: ReluOp.Apply(x, y); break;
            case Function.Cos: CosOp.Apply(x, y); break;
            case Function.Sin: SinOp.Apply(x, y); break;
            case Function.Abs: AbsOp.Apply(x, y); break;
            case Function.GeluErf: GeluErfOp.Apply(x, y); break;
            case Function.QuickGelu:
                TensorPrimitives.Multiply(x, alpha, y);
                TensorPrimitives.Sigmoid(y, y);
                TensorPrimitives.Multiply(y, x, y);
                break;
            default: GeluTanhOp.Apply(x, y); break;
        }
    }

    private void Derivative(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> d)
    {
        switch (function)
        {
            case Function.Sqrt: SqrtOp.Derivative(x, y, d); break;
            case Function.Reciprocal: ReciprocalOp.Derivative(x, y, d); break;
            case Function.Neg: NegOp.Derivative(x, y, d); break;
            case Function.Exp: ExpOp.Derivative(x, y, d); break;
            case Function.Log: LogOp.Derivative(x, y, d); break;
            case Function.Tanh: TanhOp.Derivative(x, y, d); break;
            case Function.Erf: ErfOp.Derivative(x, y, d); break;
            case Function.Sigmoid: SigmoidOp.Derivative(x, y, d); break;
            case Function.Relu: ReluOp.Derivative(x, y, d); break;
            case Function.Cos: CosOp.Derivative(x, y, d); break;
            case Function.Sin: SinOp.Derivative(x, y, d); break;
            case Function.Abs: AbsOp.Derivative(x, y, d); break;
            case Function.GeluErf: GeluErfOp.Derivative(x, y, d); break;
            case Function.QuickGelu:
                // σ(αx) + αx·σ(αx)(1 − σ(αx))
                TensorPrimitives.Multiply(x, alpha, d);
                TensorPrimitives.Sigmoid(d, d);
                for (int i = 0; i < d.Length; i++) d[i] *= 1 + alpha * x[i] * (1 - d[i]);
                break;
            default: GeluTanhOp.Derivative(x, y, d); break;
        }
    }

    /// <summary>dy/dx at every element, in scratch (after the biased argument when there is a bias).</summary>
    private Span<float> Slopes(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var y = Tensors.Float(outputs[0], Node, "Y").Span;
        var scratch = context.Scratch(2L * y.Length);
        Span<float> argument = scratch[..y.Length], slopes = scratch[y.Length..];
        Derivative(Input(inputs, argument), y, slopes);
        return slopes;
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var gBias = hasBias && inputGrads.Length > 1 ? inputGrads[1] : null;
        if (inputGrads[0] is null && gBias is null) return;
        if (gBias is null && Splits(context, gy.Data.Length))
        {
            Split(context, inputs, outputs, gy.Data, inputGrads[0]!.Data, accumulate: true);
            return;
        }
        var slopes = Slopes(context, inputs, outputs);
        TensorPrimitives.Multiply(gy.Span, slopes, slopes);
        if (inputGrads[0] is { } gx) TensorPrimitives.Add(gx.Span, slopes, gx.Span);
        if (gBias is not null)
            for (int row = 0, n = gBias.Data.Length; row < slopes.Length; row += n) TensorPrimitives.Add(gBias.Span, slopes.Slice(row, n), gBias.Span);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var tBias = hasBias && inputTangents.Length > 1 ? inputTangents[1] : null;
        if (inputTangents[0] is null && tBias is null) { ty.Span.Clear(); return; }
        if (tBias is null && Splits(context, ty.Data.Length))
        {
            Split(context, inputs, outputs, inputTangents[0]!.Data, ty.Data, accumulate: false);
            return;
        }
        var slopes = Slopes(context, inputs, outputs);
        // ty = slope · (tx + tbias)
        if (inputTangents[0] is { } tx) tx.Span.CopyTo(ty.Span); else ty.Span.Clear();
        if (tBias is not null)
            for (int row = 0, n = tBias.Data.Length; row < ty.Data.Length; row += n) TensorPrimitives.Add(ty.Span.Slice(row, n), tBias.Span, ty.Span.Slice(row, n));
        TensorPrimitives.Multiply(ty.Span, slopes, ty.Span);
    }

    /// <summary>Whether a derivative without a bias is long enough to split across the threads.</summary>
    private bool Splits(OpContext context, int length) => !hasBias && context.Threads > 1 && length >= 2 * BinaryElementwise.ParallelMinimum;

    /// <summary>
    /// target (+)= source ⊙ dy/dx over ranges of the elements on the threads, each range's slopes in its own
    /// part of the scratch (the VJP adds gy·slope into gx, the JVP writes tx·slope into ty).
    /// </summary>
    private unsafe void Split(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, float[] source, float[] target, bool accumulate)
    {
        var x = Tensors.Float(inputs[0], Node, "X").Data;
        var y = Tensors.Float(outputs[0], Node, "Y").Data;
        fixed (float* scratch = context.Scratch(y.Length))
        {
            nint slopes = (nint)scratch;
            ParallelWork.ForRanges(y.Length, context.Threads, BinaryElementwise.ParallelMinimum, (start, count) =>
            {
                var range = new Span<float>((float*)slopes + start, count);
                Derivative(x.AsSpan(start, count), y.AsSpan(start, count), range);
                var t = target.AsSpan(start, count);
                if (accumulate) TensorPrimitives.MultiplyAdd(source.AsSpan(start, count), range, t, t);
                else TensorPrimitives.Multiply(source.AsSpan(start, count), range, t);
            });
        }
    }
}

/// <summary>SIMD erf and GELU (float32 accuracy) that System.Numerics.Tensors does not provide.</summary>
internal static class FastMath
{
    /// <summary>Whether <see cref="Exp(Vector256{float})"/> runs here (AVX2 with FMA; AVX-512 machines keep .NET's Vector512.Exp).</summary>
    public static readonly bool HasFastExp = !Vector512.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Avx2.IsSupported
                                             && System.Runtime.Intrinsics.X86.Fma.IsSupported;

    /// <summary>
    /// e^x in float32 within 2 ulp (exp = 2ⁿ·e^r, n = round(x·log₂e), r = x − n·ln 2 in two steps, e^r by Cephes expf's
    /// degree-7 polynomial): .NET's Vector256.Exp computes in float64 and cost GELU ≈ 1.8 ns an element on Zen 3, a
    /// quarter of the feed-forward MatMul it is fused into. 0 below −87.33 (−∞ included; results that would be subnormal
    /// are flushed), +∞ past float's range, NaN kept.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        const float Log2E = 1.44269504088896341f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
        // maxps/minps return their second operand when either is NaN: NaN passes through the clamp.
        var clamped = System.Runtime.Intrinsics.X86.Avx.Min(Vector256.Create(89f), System.Runtime.Intrinsics.X86.Avx.Max(Vector256.Create(-87.33f), x));
        var n = System.Runtime.Intrinsics.X86.Avx.RoundToNearestInteger(clamped * Vector256.Create(Log2E));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), clamped);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.Create(1.9875691500e-4f);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1.3981999507e-3f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(8.3334519073e-3f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(4.1665795894e-2f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1.6666665459e-1f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(5.0000001201e-1f));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        // 2ⁿ as two normal powers (n reaches 128 just below the clamp, past float's exponent): p·2^(n−n/2)·2^(n/2)
        // overflows to +∞ exactly where e^x does.
        var ni = Vector256.ConvertToInt32Native(n); // n is integral and in range: no saturation fix-up needed
        var half = Vector256.ShiftRightArithmetic(ni, 1);
        var bias = Vector256.Create(127);
        var e = p * Vector256.ShiftLeft(ni - half + bias, 23).AsSingle() * Vector256.ShiftLeft(half + bias, 23).AsSingle();
        return Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256.Create(-87.33f)), Vector256<float>.Zero, e);
    }

    /// <summary>y = e^x elementwise (see <see cref="Exp(Vector256{float})"/>; elsewhere TensorPrimitives.Exp).</summary>
    public static void Exp(ReadOnlySpan<float> x, Span<float> y)
    {
        if (!HasFastExp) { TensorPrimitives.Exp(x, y); return; }
        int i = 0;
        for (; i <= x.Length - 8; i += 8) Exp(Vector256.Create(x[i..])).CopyTo(y[i..]);
        if (i < x.Length) TensorPrimitives.Exp(x[i..], y[i..]);
    }

    public const float InvSqrt2 = 0.70710678118654752f;
    public const float InvSqrt2Pi = 0.39894228040143268f;
    public const float Sqrt2OverPi = 0.79788456080286536f;

    // Abramowitz & Stegun 7.1.26: |error| ≤ 1.5e-7, below float32 resolution of erf near ±1.
    private const float P = 0.3275911f, A1 = 0.254829592f, A2 = -0.284496736f, A3 = 1.421413741f, A4 = -1.453152027f, A5 = 1.061405429f;

    public static float Erf(float x)
    {
        float a = MathF.Abs(x);
        float t = 1 / (1 + P * a);
        float poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
        float r = 1 - poly * MathF.Exp(-a * a);
        return x < 0 ? -r : r;
    }

    private static Vector<float> Erf(Vector<float> x)
    {
        var a = Vector.Abs(x);
        var t = Vector<float>.One / (Vector<float>.One + new Vector<float>(P) * a);
        var poly = ((((new Vector<float>(A5) * t + new Vector<float>(A4)) * t + new Vector<float>(A3)) * t + new Vector<float>(A2)) * t + new Vector<float>(A1)) * t;
        var r = Vector<float>.One - poly * Vector.Exp(-(a * a));
        return Vector.ConditionalSelect(Vector.LessThan(x, Vector<float>.Zero), -r, r);
    }

    private static Vector512<float> Erf(Vector512<float> x)
    {
        var a = Vector512.Abs(x);
        var t = Vector512<float>.One / (Vector512<float>.One + Vector512.Create(P) * a);
        var poly = ((((Vector512.Create(A5) * t + Vector512.Create(A4)) * t + Vector512.Create(A3)) * t + Vector512.Create(A2)) * t + Vector512.Create(A1)) * t;
        var r = Vector512<float>.One - poly * Vector512.Exp(-(a * a));
        return Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512<float>.Zero), -r, r);
    }

    public static void Erf(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0, w = Vector<float>.Count;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= x.Length - 16; i += 16) Erf(Vector512.Create(x[i..])).CopyTo(y[i..]);
        for (; i <= x.Length - w; i += w) Erf(new Vector<float>(x[i..])).CopyTo(y[i..]);
        for (; i < x.Length; i++) y[i] = Erf(x[i]);
    }

    public static void GeluErf(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0, w = Vector<float>.Count;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= x.Length - 16; i += 16)
            {
                var v = Vector512.Create(x[i..]);
                (Vector512.Create(0.5f) * v * (Vector512<float>.One + Erf(v * Vector512.Create(InvSqrt2)))).CopyTo(y[i..]);
            }
        var half = new Vector<float>(0.5f);
        for (; i <= x.Length - w; i += w)
        {
            var v = new Vector<float>(x[i..]);
            (half * v * (Vector<float>.One + Erf(v * new Vector<float>(InvSqrt2)))).CopyTo(y[i..]);
        }
        for (; i < x.Length; i++) y[i] = 0.5f * x[i] * (1 + Erf(x[i] * InvSqrt2));
    }

    public static void GeluTanh(ReadOnlySpan<float> x, Span<float> y)
    {
        // tanh(u) = 1 − 2/(exp(2u) + 1), so ½x(1 + tanh u) = x − x/(exp(2u) + 1); exp saturates safely at ±∞.
        int i = 0, w = Vector<float>.Count;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= x.Length - 16; i += 16)
            {
                var v = Vector512.Create(x[i..]);
                var u2 = Vector512.Create(2 * Sqrt2OverPi) * (v + Vector512.Create(0.044715f) * v * v * v);
                (v - v / (Vector512.Exp(u2) + Vector512<float>.One)).CopyTo(y[i..]);
            }
        else if (HasFastExp)
            for (; i <= x.Length - 8; i += 8)
            {
                var v = Vector256.Create(x[i..]);
                var u2 = Vector256.Create(2 * Sqrt2OverPi) * (v + Vector256.Create(0.044715f) * v * v * v);
                (v - v / (Exp(u2) + Vector256<float>.One)).CopyTo(y[i..]);
            }
        for (; i <= x.Length - w; i += w)
        {
            var v = new Vector<float>(x[i..]);
            var u2 = new Vector<float>(2 * Sqrt2OverPi) * (v + new Vector<float>(0.044715f) * v * v * v);
            (v - v / (Vector.Exp(u2) + Vector<float>.One)).CopyTo(y[i..]);
        }
        for (; i < x.Length; i++)
        {
            float v = x[i];
            y[i] = 0.5f * v * (1 + MathF.Tanh(Sqrt2OverPi * (v + 0.044715f * v * v * v)));
        }
    }

    /// <summary>d/dx of the erf GELU: Φ(x) + x·φ(x).</summary>
    public static void GeluErfDerivative(ReadOnlySpan<float> x, Span<float> d)
    {
        int i = 0, w = Vector<float>.Count;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= x.Length - 16; i += 16)
            {
                var v = Vector512.Create(x[i..]);
                var cdf = Vector512.Create(0.5f) * (Vector512<float>.One + Erf(v * Vector512.Create(InvSqrt2)));
                (cdf + v * Vector512.Create(InvSqrt2Pi) * Vector512.Exp(Vector512.Create(-0.5f) * v * v)).CopyTo(d[i..]);
            }
        for (; i <= x.Length - w; i += w)
        {
            var v = new Vector<float>(x[i..]);
            var cdf = new Vector<float>(0.5f) * (Vector<float>.One + Erf(v * new Vector<float>(InvSqrt2)));
            (cdf + v * new Vector<float>(InvSqrt2Pi) * Vector.Exp(new Vector<float>(-0.5f) * v * v)).CopyTo(d[i..]);
        }
        for (; i < x.Length; i++)
        {
            float v = x[i];
            d[i] = 0.5f * (1 + Erf(v * InvSqrt2)) + v * InvSqrt2Pi * MathF.Exp(-0.5f * v * v);
        }
    }

    /// <summary>
    /// d/dx of the tanh GELU: ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²) with t = tanh(u), u = k(x + c·x³). With
    /// s = 1/(exp(2u) + 1) (so 1 + t = 2(1 − s), 1 − t² = 4s(1 − s)) it is (1 − s)(1 + 2k·x·s(1 + 3c·x²)),
    /// which stays finite where exp saturates (s = 0 or 1).
    /// </summary>
    public static void GeluTanhDerivative(ReadOnlySpan<float> x, Span<float> d)
    {
        const float c = 0.044715f;
        int i = 0, w = Vector<float>.Count;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= x.Length - 16; i += 16)
            {
                var v = Vector512.Create(x[i..]);
                var v2 = v * v;
                var s = Vector512<float>.One / (Vector512.Exp(Vector512.Create(2 * Sqrt2OverPi) * (v + Vector512.Create(c) * v2 * v)) + Vector512<float>.One);
                var slope = Vector512.Create(2 * Sqrt2OverPi) * v * s * (Vector512<float>.One + Vector512.Create(3 * c) * v2);
                ((Vector512<float>.One - s) * (Vector512<float>.One + slope)).CopyTo(d[i..]);
            }
        for (; i <= x.Length - w; i += w)
        {
            var v = new Vector<float>(x[i..]);
            var v2 = v * v;
            var s = Vector<float>.One / (Vector.Exp(new Vector<float>(2 * Sqrt2OverPi) * (v + new Vector<float>(c) * v2 * v)) + Vector<float>.One);
            var slope = new Vector<float>(2 * Sqrt2OverPi) * v * s * (Vector<float>.One + new Vector<float>(3 * c) * v2);
            ((Vector<float>.One - s) * (Vector<float>.One + slope)).CopyTo(d[i..]);
        }
        for (; i < x.Length; i++)
        {
            float v = x[i];
            float t = MathF.Tanh(Sqrt2OverPi * (v + c * v * v * v));
            d[i] = 0.5f * (1 + t) + 0.5f * v * (1 - t * t) * Sqrt2OverPi * (1 + 3 * c * v * v);
        }
    }
}

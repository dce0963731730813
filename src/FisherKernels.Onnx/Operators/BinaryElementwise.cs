using System.Numerics;
using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>One arithmetic binary operator: scalar rule for any number type, SIMD spans for float, partial derivatives.</summary>
internal interface IBinaryOp
{
    static abstract T Apply<T>(T a, T b) where T : INumber<T>;
    static abstract void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y);
    static abstract void Apply(ReadOnlySpan<float> a, float b, Span<float> y);
    static abstract void Apply(float a, ReadOnlySpan<float> b, Span<float> y);
    /// <summary>∂y/∂a at (a, b) where y = Apply(a, b).</summary>
    static abstract float DA(float a, float b, float y);
    /// <summary>∂y/∂b at (a, b) where y = Apply(a, b).</summary>
    static abstract float DB(float a, float b, float y);

    /// <summary>SIMD VJP of one broadcast run (see <see cref="RunMath"/>; y is the forward output); false = use the elementwise rule.</summary>
    static virtual bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb) => false;

    /// <summary>SIMD JVP of one broadcast run; false = use the elementwise rule.</summary>
    static virtual bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty) => false;
}

/// <summary>
/// Vectorized pieces of the derivatives of Add, Sub and Mul over one broadcast run: an operand "slot" is
/// (array, offset, step) and covers the run's elements when step = 1, or one element repeated when step = 0.
/// </summary>
internal static class RunMath
{
    public readonly record struct Run(int Output, int A, int StepA, int B, int StepB, int Length);

    /// <summary>target slot += sign·g ⊙ other slot (other = null: 1). A step-0 target receives the sum over the run.</summary>
    public static void Accumulate(float[] target, int offset, int step, ReadOnlySpan<float> g, float[]? other, int otherOffset, int otherStep, float sign)
    {
        int n = g.Length;
        if (other is null)
        {
            if (step == 1) TensorPrimitives.MultiplyAdd(g, sign, target.AsSpan(offset, n), target.AsSpan(offset, n));
            else target[offset] += sign * TensorPrimitives.Sum(g);
        }
        else if (otherStep == 1)
        {
            var o = other.AsSpan(otherOffset, n);
            if (step == 1) TensorPrimitives.MultiplyAdd(g, o, target.AsSpan(offset, n), target.AsSpan(offset, n));
            else target[offset] += TensorPrimitives.Dot(g, o);
        }
        else
        {
            float o = other[otherOffset];
            if (step == 1) TensorPrimitives.MultiplyAdd(g, o, target.AsSpan(offset, n), target.AsSpan(offset, n));
            else target[offset] += o * TensorPrimitives.Sum(g);
        }
    }

    /// <summary>y (+)= sign·(t slot ⊙ other slot) (other = null: 1; t = null: zero).</summary>
    public static void Write(Span<float> y, float[]? t, int offset, int step, float[]? other, int otherOffset, int otherStep, float sign, bool accumulate)
    {
        int n = y.Length;
        if (t is null) { if (!accumulate) y.Clear(); return; }
        if (other is null)
        {
            if (step == 1)
            {
                var ts = t.AsSpan(offset, n);
                if (accumulate) TensorPrimitives.MultiplyAdd(ts, sign, y, y);
                else TensorPrimitives.Multiply(ts, sign, y);
            }
            else if (accumulate) TensorPrimitives.Add(y, sign * t[offset], y);
            else y.Fill(sign * t[offset]);
            return;
        }
        if (step == 0 && otherStep == 0)
        {
            float v = t[offset] * other[otherOffset];
            if (accumulate) TensorPrimitives.Add(y, v, y); else y.Fill(v);
            return;
        }
        // At least one side is a span: (span, span) or (span, scalar).
        (float[] spanArray, int spanOffset, float[] scalarOrSpan, int so, int ss) = step == 1 ? (t, offset, other, otherOffset, otherStep) : (other, otherOffset, t, offset, step);
        var sp = spanArray.AsSpan(spanOffset, n);
        if (ss == 1)
        {
            if (accumulate) TensorPrimitives.MultiplyAdd(sp, scalarOrSpan.AsSpan(so, n), y, y);
            else TensorPrimitives.Multiply(sp, scalarOrSpan.AsSpan(so, n), y);
        }
        else if (accumulate) TensorPrimitives.MultiplyAdd(sp, scalarOrSpan[so], y, y);
        else TensorPrimitives.Multiply(sp, scalarOrSpan[so], y);
    }
}

/// <summary>A slope ∂y/∂operand computed from one span x and the output y (constants inside), scalar and SIMD.</summary>
internal interface ISlope
{
    float At(float x, float y);
    Vector<float> At(Vector<float> x, Vector<float> y);
}

internal static class SlopeMath
{
    /// <summary>target (+)= v ⊙ slope(x, y), one pass.</summary>
    public static void Chain<TSlope>(TSlope slope, ReadOnlySpan<float> v, ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> target, bool accumulate)
        where TSlope : struct, ISlope
    {
        int n = target.Length, w = Vector<float>.Count, i = 0;
        v = v[..n]; x = x[..n]; y = y[..n];
        for (; i <= n - w; i += w)
        {
            var r = new Vector<float>(v[i..]) * slope.At(new Vector<float>(x[i..]), new Vector<float>(y[i..]));
            if (accumulate) r += new Vector<float>(target[i..]);
            r.CopyTo(target[i..]);
        }
        for (; i < n; i++) target[i] = (accumulate ? target[i] : 0) + v[i] * slope.At(x[i], y[i]);
    }

    /// <summary>Σ v ⊙ slope(x, y) (the gradient of an operand broadcast over the run).</summary>
    public static float Dot<TSlope>(TSlope slope, ReadOnlySpan<float> v, ReadOnlySpan<float> x, ReadOnlySpan<float> y) where TSlope : struct, ISlope
    {
        int n = v.Length, w = Vector<float>.Count, i = 0;
        x = x[..n]; y = y[..n];
        var sum = Vector<float>.Zero;
        for (; i <= n - w; i += w) sum += new Vector<float>(v[i..]) * slope.At(new Vector<float>(x[i..]), new Vector<float>(y[i..]));
        float total = Vector.Sum(sum);
        for (; i < n; i++) total += v[i] * slope.At(x[i], y[i]);
        return total;
    }
}

/// <summary>d(xᵉ)/dx for the exponents exporters write as constants: 2x, 3x², ½/√x (from y = √x).</summary>
internal readonly struct PowerSlope(float exponent) : ISlope
{
    public static bool Handles(float exponent) => exponent is 2 or 3 or 0.5f;

    public float At(float x, float y) => exponent == 2 ? 2 * x : exponent == 3 ? 3 * x * x : 0.5f / y;

    public Vector<float> At(Vector<float> x, Vector<float> y) =>
        exponent == 2 ? x + x : exponent == 3 ? new Vector<float>(3f) * x * x : new Vector<float>(0.5f) / y;
}

/// <summary>∂(a/b)/∂a = 1/b (x = b).</summary>
internal readonly struct QuotientSlopeA : ISlope
{
    public float At(float x, float y) => 1 / x;
    public Vector<float> At(Vector<float> x, Vector<float> y) => Vector<float>.One / x;
}

/// <summary>∂(a/b)/∂b = −y/b (x = b).</summary>
internal readonly struct QuotientSlopeB : ISlope
{
    public float At(float x, float y) => -y / x;
    public Vector<float> At(Vector<float> x, Vector<float> y) => -y / x;
}

internal struct AddOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> => a + b;
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Add(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Add(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Add(b, a, y);
    public static float DA(float a, float b, float y) => 1;
    public static float DB(float a, float b, float y) => 1;

    public static bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb)
    {
        var g = gy.AsSpan(r.Output, r.Length);
        if (ga is not null) RunMath.Accumulate(ga, r.A, r.StepA, g, null, 0, 0, 1);
        if (gb is not null) RunMath.Accumulate(gb, r.B, r.StepB, g, null, 0, 0, 1);
        return true;
    }

    public static bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty)
    {
        var t = ty.AsSpan(r.Output, r.Length);
        RunMath.Write(t, ta, r.A, r.StepA, null, 0, 0, 1, false);
        RunMath.Write(t, tb, r.B, r.StepB, null, 0, 0, 1, true);
        return true;
    }
}

internal struct SubOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> => a - b;
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Subtract(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Subtract(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Subtract(a, b, y);
    public static float DA(float a, float b, float y) => 1;
    public static float DB(float a, float b, float y) => -1;

    public static bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb)
    {
        var g = gy.AsSpan(r.Output, r.Length);
        if (ga is not null) RunMath.Accumulate(ga, r.A, r.StepA, g, null, 0, 0, 1);
        if (gb is not null) RunMath.Accumulate(gb, r.B, r.StepB, g, null, 0, 0, -1);
        return true;
    }

    public static bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty)
    {
        var t = ty.AsSpan(r.Output, r.Length);
        RunMath.Write(t, ta, r.A, r.StepA, null, 0, 0, 1, false);
        RunMath.Write(t, tb, r.B, r.StepB, null, 0, 0, -1, true);
        return true;
    }
}

internal struct MulOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> => a * b;
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Multiply(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Multiply(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Multiply(b, a, y);
    public static float DA(float a, float b, float y) => b;
    public static float DB(float a, float b, float y) => a;

    public static bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb)
    {
        var g = gy.AsSpan(r.Output, r.Length);
        if (ga is not null) RunMath.Accumulate(ga, r.A, r.StepA, g, b, r.B, r.StepB, 1);
        if (gb is not null) RunMath.Accumulate(gb, r.B, r.StepB, g, a, r.A, r.StepA, 1);
        return true;
    }

    public static bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty)
    {
        var t = ty.AsSpan(r.Output, r.Length);
        RunMath.Write(t, ta, r.A, r.StepA, b, r.B, r.StepB, 1, false);
        RunMath.Write(t, tb, r.B, r.StepB, a, r.A, r.StepA, 1, true);
        return true;
    }
}

internal struct DivOp : IBinaryOp
{
    // Integer division truncates toward zero, as ONNX Runtime does.
    public static T Apply<T>(T a, T b) where T : INumber<T> => a / b;
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Divide(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Divide(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Divide(a, b, y);
    public static float DA(float a, float b, float y) => 1 / b;
    public static float DB(float a, float b, float y) => -y / b;

    public static bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb)
    {
        var g = gy.AsSpan(r.Output, r.Length);
        var ys = y.AsSpan(r.Output, r.Length);
        if (r.StepB == 0)
        {
            // One divisor for the run (a normalization's scale, a constant): ga += g/b, gb −= ⟨g, y⟩/b.
            float inverse = 1 / b[r.B];
            if (ga is not null) RunMath.Accumulate(ga, r.A, r.StepA, g, null, 0, 0, inverse);
            if (gb is not null) gb[r.B] -= inverse * TensorPrimitives.Dot(g, ys);
            return true;
        }
        var bs = b.AsSpan(r.B, r.Length);
        if (ga is not null && r.StepA == 0) ga[r.A] += SlopeMath.Dot(new QuotientSlopeA(), g, bs, ys);
        else if (ga is not null) SlopeMath.Chain(new QuotientSlopeA(), g, bs, ys, ga.AsSpan(r.A, r.Length), accumulate: true);
        if (gb is not null) SlopeMath.Chain(new QuotientSlopeB(), g, bs, ys, gb.AsSpan(r.B, r.Length), accumulate: true);
        return true;
    }

    public static bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty)
    {
        // ty = ta/b − tb·y/b
        var t = ty.AsSpan(r.Output, r.Length);
        var ys = y.AsSpan(r.Output, r.Length);
        if (r.StepB == 0)
        {
            float inverse = 1 / b[r.B];
            RunMath.Write(t, ta, r.A, r.StepA, null, 0, 0, inverse, false);
            if (tb is not null) TensorPrimitives.MultiplyAdd(ys, -inverse * tb[r.B], t, t);
            return true;
        }
        var bs = b.AsSpan(r.B, r.Length);
        if (ta is null) t.Clear();
        else if (r.StepA == 0) TensorPrimitives.Divide(ta[r.A], bs, t);
        else SlopeMath.Chain(new QuotientSlopeA(), ta.AsSpan(r.A, r.Length), bs, ys, t, accumulate: false);
        if (tb is not null) SlopeMath.Chain(new QuotientSlopeB(), tb.AsSpan(r.B, r.Length), bs, ys, t, accumulate: true);
        return true;
    }
}

internal struct PowOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> =>
        T.CreateTruncating(Math.Pow(double.CreateTruncating(a), double.CreateTruncating(b)));
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Pow(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y)
    {
        // Exporters write x², x³ and √x as Pow with a constant exponent: multiply instead of exp/log.
        if (b == 2) TensorPrimitives.Multiply(a, a, y);
        else if (b == 3) { TensorPrimitives.Multiply(a, a, y); TensorPrimitives.Multiply(y, a, y); }
        else if (b == 0.5f) TensorPrimitives.Sqrt(a, y);
        else if (b == 1) a.CopyTo(y);
        else TensorPrimitives.Pow(a, b, y);
    }
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Pow(a, b, y);
    public static float DA(float a, float b, float y) => b switch
    {
        0 => 0,
        1 => 1,
        2 => 2 * a,
        3 => 3 * a * a,
        _ => b * MathF.Pow(a, b - 1),
    };
    // d(a^b)/db = a^b·ln a; taken as 0 where a^b = 0 (a = 0), as torch does.
    public static float DB(float a, float b, float y) => y == 0 ? 0 : y * MathF.Log(a);

    /// <summary>SIMD for a constant exponent of 1, 2, 3 or ½ over a span base (x², x³ of GELU and LayerNorm, √x).</summary>
    private static bool Simple(in RunMath.Run r, float[] b, float[]? exponentDerivative) =>
        exponentDerivative is null && r.StepA == 1 && r.StepB == 0 && (b[r.B] == 1 || PowerSlope.Handles(b[r.B]));

    public static bool Vjp(in RunMath.Run r, float[] a, float[] b, float[] y, float[] gy, float[]? ga, float[]? gb)
    {
        if (!Simple(r, b, gb)) return false;
        if (ga is null) return true;
        var g = gy.AsSpan(r.Output, r.Length);
        var target = ga.AsSpan(r.A, r.Length);
        if (b[r.B] == 1) TensorPrimitives.Add(target, g, target);
        else SlopeMath.Chain(new PowerSlope(b[r.B]), g, a.AsSpan(r.A, r.Length), y.AsSpan(r.Output, r.Length), target, accumulate: true);
        return true;
    }

    public static bool Jvp(in RunMath.Run r, float[] a, float[] b, float[] y, float[]? ta, float[]? tb, float[] ty)
    {
        if (!Simple(r, b, tb)) return false;
        var t = ty.AsSpan(r.Output, r.Length);
        if (ta is null) t.Clear();
        else if (b[r.B] == 1) ta.AsSpan(r.A, r.Length).CopyTo(t);
        else SlopeMath.Chain(new PowerSlope(b[r.B]), ta.AsSpan(r.A, r.Length), a.AsSpan(r.A, r.Length), y.AsSpan(r.Output, r.Length), t, accumulate: false);
        return true;
    }
}

internal struct MaxOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> => T.Max(a, b);
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Max(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Max(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Max(b, a, y);
    // The derivative goes to the larger operand; a tie goes to A.
    public static float DA(float a, float b, float y) => a >= b ? 1 : 0;
    public static float DB(float a, float b, float y) => a >= b ? 0 : 1;
}

internal struct MinOp : IBinaryOp
{
    public static T Apply<T>(T a, T b) where T : INumber<T> => T.Min(a, b);
    public static void Apply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Min(a, b, y);
    public static void Apply(ReadOnlySpan<float> a, float b, Span<float> y) => TensorPrimitives.Min(a, b, y);
    public static void Apply(float a, ReadOnlySpan<float> b, Span<float> y) => TensorPrimitives.Min(b, a, y);
    public static float DA(float a, float b, float y) => a <= b ? 1 : 0;
    public static float DB(float a, float b, float y) => a <= b ? 0 : 1;
}

/// <summary>
/// Add, Sub, Mul, Div, Pow, and two-input Max, Min, with multidirectional broadcasting (float and every integer type;
/// Pow's base float, int64 or int32, its exponent of any of those types or an unsigned integer). Integer arithmetic wraps around (as numpy's and C's unsigned arithmetic do);
/// integer division truncates.
/// </summary>
internal sealed class BinaryElementwise : Operator
{
    public BinaryElementwise(OperatorNode node) : base(node) => RequireInputs(2, 2);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var a = Required(inputs, 0, "A");
        var b = Required(inputs, 1, "B");
        if (a.Type != b.Type && Node.OpType != "Pow") throw Error($"inputs must have one element type, got {a.Type} and {b.Type}");
        if (a.Type == ElementType.Bool || (a.Type is not (ElementType.Float32 or ElementType.Int64 or ElementType.Int32) && Node.OpType == "Pow"))
            throw UnsupportedError($"element type {a.Type} is not supported");
        var shape = Broadcast.Shape(a.Shape, b.Shape) ?? throw Error($"shapes [{ShapeUtil.Format(a.Shape)}] and [{ShapeUtil.Format(b.Shape)}] do not broadcast");
        return [new TensorInfo(a.Type, shape)];
    }

    public override bool IsDifferentiable(int input) => input is 0 or 1;

    public override bool PassesGradientUnchanged(int input) => Node.OpType == "Add" || (Node.OpType == "Sub" && input == 0);

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        switch (Node.OpType)
        {
            case "Add": Forward<AddOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            case "Sub": Forward<SubOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            case "Mul": Forward<MulOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            case "Div": Forward<DivOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            case "Max": Forward<MaxOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            case "Min": Forward<MinOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
            default: Forward<PowOp>(inputs[0]!, inputs[1]!, outputs[0]); break;
        }
    }

    /// <summary>
    /// A first gradient of the full output shape is written where that is one pass (Add's, and Div's by a single divisor, as
    /// attention's scale); any other is cleared here, as the backward pass would have.
    /// </summary>
    public override bool WritesFreshGradients => true;

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        int fresh = context.FreshGradients;
        if (outputGrads[0] is not { } gy)
        {
            for (int i = 0; i < 2; i++)
                if ((fresh >> i & 1) != 0) inputGrads[i]?.Span.Clear();
            return;
        }
        if (fresh == 1 && inputGrads[1] is null && inputGrads[0] is { } first && first.Length == gy.Length)
        {
            // ga = gy·∂y/∂a in one pass over the whole shape (0 + x is x: the bits of zeroing and adding).
            if (Node.OpType == "Add") { gy.Span.CopyTo(first.Span); return; }
            if (Node.OpType == "Div" && inputs[1] is NdArray<float> { Length: 1 } divisor)
            {
                TensorPrimitives.Multiply(gy.Span, 1 / divisor.Data[0], first.Span);
                return;
            }
        }
        for (int i = 0; i < 2; i++)
            if ((fresh >> i & 1) != 0) inputGrads[i]?.Span.Clear();
        switch (Node.OpType)
        {
            case "Add": Derivative<AddOp, VjpRun<AddOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            case "Sub": Derivative<SubOp, VjpRun<SubOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            case "Mul": Derivative<MulOp, VjpRun<MulOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            case "Div": Derivative<DivOp, VjpRun<DivOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            case "Max": Derivative<MaxOp, VjpRun<MaxOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            case "Min": Derivative<MinOp, VjpRun<MinOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
            default: Derivative<PowOp, VjpRun<PowOp>>(context, inputs, outputs, gy, inputGrads[0], inputGrads[1], gradients: true); break;
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        switch (Node.OpType)
        {
            case "Add": Derivative<AddOp, JvpRun<AddOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            case "Sub": Derivative<SubOp, JvpRun<SubOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            case "Mul": Derivative<MulOp, JvpRun<MulOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            case "Div": Derivative<DivOp, JvpRun<DivOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            case "Max": Derivative<MaxOp, JvpRun<MaxOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            case "Min": Derivative<MinOp, JvpRun<MinOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
            default: Derivative<PowOp, JvpRun<PowOp>>(context, inputs, outputs, ty, inputTangents[0], inputTangents[1], gradients: false); break;
        }
    }

    /// <summary>x + c, c + x, x − c: output 0's tangent is x's when x alone has one and has the output's shape.</summary>
    public override int TangentPassesThrough(ReadOnlySpan<NdArray<float>?> inputTangents, int[] outputShape)
    {
        int only = inputTangents[0] is null ? inputTangents[1] is null ? -1 : 1 : inputTangents[1] is null ? 0 : -1;
        bool passes = Node.OpType == "Add" || (Node.OpType == "Sub" && only == 0);
        return passes && only >= 0 && inputTangents[only]!.Shape.AsSpan().SequenceEqual(outputShape) ? only : -1;
    }

    private static void Forward<TOp>(NdArray a, NdArray b, NdArray y) where TOp : IBinaryOp
    {
        var layout = Broadcast.Create(y.Shape, a.Shape, b.Shape);
        switch (a, b, y)
        {
            case (NdArray<float> fa, NdArray<float> fb, NdArray<float> fy):
                var floatRun = new FloatRun<TOp> { A = fa.Data, B = fb.Data, Y = fy.Data, StepA = layout.Step0, StepB = layout.Step1 };
                layout.ForEachRun(ref floatRun);
                break;
            case (NdArray<long> la, NdArray<long> lb, NdArray<long> ly): Scalar<TOp, long>(layout, la.Data, lb.Data, ly.Data); break;
            case (NdArray<int> ia, NdArray<int> ib, NdArray<int> iy): Scalar<TOp, int>(layout, ia.Data, ib.Data, iy.Data); break;
            case (NdArray<sbyte> sa, NdArray<sbyte> sb, NdArray<sbyte> sy): Scalar<TOp, sbyte>(layout, sa.Data, sb.Data, sy.Data); break;
            case (NdArray<byte> ba, NdArray<byte> bb, NdArray<byte> by): Scalar<TOp, byte>(layout, ba.Data, bb.Data, by.Data); break;
            case (NdArray<short> ba, NdArray<short> bb, NdArray<short> by): Scalar<TOp, short>(layout, ba.Data, bb.Data, by.Data); break;
            case (NdArray<ushort> ba, NdArray<ushort> bb, NdArray<ushort> by): Scalar<TOp, ushort>(layout, ba.Data, bb.Data, by.Data); break;
            case (NdArray<uint> ba, NdArray<uint> bb, NdArray<uint> by): Scalar<TOp, uint>(layout, ba.Data, bb.Data, by.Data); break;
            case (NdArray<ulong> ba, NdArray<ulong> bb, NdArray<ulong> by): Scalar<TOp, ulong>(layout, ba.Data, bb.Data, by.Data); break;
            // Pow of a float base by an integer exponent of any type: the exponent as float.
            case (NdArray<float> fa, _, NdArray<float> fy) when IntegerAsFloats(b) is { } fb: Scalar<TOp, float>(layout, fa.Data, fb, fy.Data); break;
            // Pow of an integer base by a float exponent (opset 12+): in float64, truncated to the base's type; copies, as rare as such graphs are.
            case (NdArray<long> la, NdArray<float> fb, NdArray<long> ly):
                var longPowers = new double[ly.Data.Length];
                Scalar<TOp, double>(layout, Array.ConvertAll(la.Data, v => (double)v), Array.ConvertAll(fb.Data, v => (double)v), longPowers);
                for (int i = 0; i < longPowers.Length; i++) ly.Data[i] = (long)longPowers[i];
                break;
            case (NdArray<int> ia, NdArray<float> fb, NdArray<int> iy):
                var intPowers = new double[iy.Data.Length];
                Scalar<TOp, double>(layout, Array.ConvertAll(ia.Data, v => (double)v), Array.ConvertAll(fb.Data, v => (double)v), intPowers);
                for (int i = 0; i < intPowers.Length; i++) iy.Data[i] = (int)intPowers[i];
                break;
            default: throw FisherKernelsException.Unsupported($"{a.ElementType} and {b.ElementType} operands are not supported");
        }
    }

    private static float[]? IntegerAsFloats(NdArray x) => x switch
    {
        NdArray<long> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<int> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<short> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<sbyte> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<ulong> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<uint> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<ushort> a => Array.ConvertAll(a.Data, v => (float)v),
        NdArray<byte> a => Array.ConvertAll(a.Data, v => (float)v),
        _ => null,
    };

    private static void Scalar<TOp, T>(in Broadcast layout, T[] a, T[] b, T[] y) where TOp : IBinaryOp where T : INumber<T>
    {
        var run = new ScalarRun<TOp, T> { A = a, B = b, Y = y, StepA = layout.Step0, StepB = layout.Step1 };
        layout.ForEachRun(ref run);
    }

    /// <summary>Elements below which a derivative runs on one thread (waking a second costs more than it saves).</summary>
    internal const int ParallelMinimum = 1 << 14;

    /// <summary>
    /// VJP (<paramref name="gradients"/>: first/second are input gradients, added into) or JVP (input
    /// tangents, read). One broadcast run over the whole output is split across the threads when no
    /// input gradient is reduced into (a broadcast operand's gradient sums over the run).
    /// </summary>
    private void Derivative<TOp, TRun>(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs, NdArray<float> gradOrTangent,
                                       NdArray<float>? first, NdArray<float>? second, bool gradients)
        where TOp : IBinaryOp where TRun : struct, IDerivativeRun
    {
        var a = Tensors.Float(inputs[0], Node, "A");
        // Pow's integer exponent (opset 12+; it gets no derivative) as floats: a copy, as rare as such exports are.
        var b = inputs[1] is NdArray<float> floats ? floats
            : new NdArray<float>(inputs[1]!.Shape, IntegerAsFloats(inputs[1]!) ?? throw Error($"B of type {inputs[1]!.ElementType} is not supported"));
        var layout = Broadcast.Create(gradOrTangent.Shape, a.Shape, b.Shape);
        var run = new TRun();
        run.Bind(a.Data, b.Data, ((NdArray<float>)outputs[0]).Data, gradOrTangent.Data, first?.Data, second?.Data, layout.Step0, layout.Step1);
        int length = gradOrTangent.Data.Length;
        bool split = layout.RunCount == 1 && length >= 2 * ParallelMinimum && context.Threads > 1
                     && (!gradients || ((first is null || first.Data.Length == length) && (second is null || second.Data.Length == length)));
        if (split) Split(run, length, layout.Step0, layout.Step1, context.Threads);
        else layout.ForEachRun(ref run);
    }

    /// <summary>One run of <paramref name="length"/> elements as ranges on the threads (kept apart: its closure allocates).</summary>
    private static void Split<TRun>(TRun run, int length, int stepA, int stepB, int threads) where TRun : struct, IDerivativeRun =>
        ParallelWork.ForRanges(length, threads, ParallelMinimum, (start, count) => run.Run(start, start * stepA, start * stepB, 0, count));

    private struct FloatRun<TOp> : IRunAction where TOp : IBinaryOp
    {
        public float[] A, B, Y;
        public int StepA, StepB;

        public readonly void Run(int output, int a, int b, int unused, int length)
        {
            var y = Y.AsSpan(output, length);
            if (StepA == 1 && StepB == 1) TOp.Apply(A.AsSpan(a, length), B.AsSpan(b, length), y);
            else if (StepA == 1) TOp.Apply(A.AsSpan(a, length), B[b], y);
            else if (StepB == 1) TOp.Apply(A[a], B.AsSpan(b, length), y);
            else y.Fill(TOp.Apply(A[a], B[b]));
        }
    }

    private struct ScalarRun<TOp, T> : IRunAction where TOp : IBinaryOp where T : INumber<T>
    {
        public T[] A, B, Y;
        public int StepA, StepB;

        public readonly void Run(int output, int a, int b, int unused, int length)
        {
            for (int i = 0; i < length; i++) Y[output + i] = TOp.Apply(A[a + i * StepA], B[b + i * StepB]);
        }
    }

    internal interface IDerivativeRun : IRunAction
    {
        void Bind(float[] a, float[] b, float[] y, float[] gradOrTangent, float[]? first, float[]? second, int stepA, int stepB);
    }

    /// <summary>ga[ia] += gy·∂y/∂a, gb[ib] += gy·∂y/∂b: summing over broadcast positions reduces the gradient to the operand's shape.</summary>
    private struct VjpRun<TOp> : IDerivativeRun where TOp : IBinaryOp
    {
        private float[] a, b, y, gy;
        private float[]? ga, gb;
        private int stepA, stepB;

        public void Bind(float[] a, float[] b, float[] y, float[] gradOrTangent, float[]? first, float[]? second, int stepA, int stepB) =>
            (this.a, this.b, this.y, gy, ga, gb, this.stepA, this.stepB) = (a, b, y, gradOrTangent, first, second, stepA, stepB);

        public readonly void Run(int output, int ia, int ib, int unused, int length)
        {
            if (TOp.Vjp(new RunMath.Run(output, ia, stepA, ib, stepB, length), a, b, y, gy, ga, gb)) return;
            for (int i = 0; i < length; i++, ia += stepA, ib += stepB)
            {
                float g = gy[output + i];
                if (ga is not null) ga[ia] += g * TOp.DA(a[ia], b[ib], y[output + i]);
                if (gb is not null) gb[ib] += g * TOp.DB(a[ia], b[ib], y[output + i]);
            }
        }
    }

    /// <summary>ty = ta·∂y/∂a + tb·∂y/∂b, a missing tangent being zero.</summary>
    private struct JvpRun<TOp> : IDerivativeRun where TOp : IBinaryOp
    {
        private float[] a, b, y, ty;
        private float[]? ta, tb;
        private int stepA, stepB;

        public void Bind(float[] a, float[] b, float[] y, float[] gradOrTangent, float[]? first, float[]? second, int stepA, int stepB) =>
            (this.a, this.b, this.y, ty, ta, tb, this.stepA, this.stepB) = (a, b, y, gradOrTangent, first, second, stepA, stepB);

        public readonly void Run(int output, int ia, int ib, int unused, int length)
        {
            if (TOp.Jvp(new RunMath.Run(output, ia, stepA, ib, stepB, length), a, b, y, ta, tb, ty)) return;
            for (int i = 0; i < length; i++, ia += stepA, ib += stepB)
            {
                float t = 0;
                if (ta is not null) t += ta[ia] * TOp.DA(a[ia], b[ib], y[output + i]);
                if (tb is not null) t += tb[ib] * TOp.DB(a[ia], b[ib], y[output + i]);
                ty[output + i] = t;
            }
        }
    }
}

using System.Numerics;
using System.Runtime.Intrinsics;

namespace FisherKernels.Onnx.Operators;

/// <summary>Where(condition, X, Y) with three-way broadcasting; differentiable in X and Y.</summary>
internal sealed class Where : Operator
{
    public Where(OperatorNode node) : base(node) => RequireInputs(3, 3);

    public override bool IsDifferentiable(int input) => input is 1 or 2;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var c = Required(inputs, 0, "condition");
        var x = Required(inputs, 1, "X");
        var y = Required(inputs, 2, "Y");
        if (c.Type != ElementType.Bool) throw Error($"condition must be bool, got {c.Type}");
        if (x.Type != y.Type) throw Error($"X and Y must have one type, got {x.Type} and {y.Type}");
        var shape = Broadcast.Shape(c.Shape, x.Shape) is { } s ? Broadcast.Shape(s, y.Shape) : null;
        return [new TensorInfo(x.Type, shape ?? throw Error($"shapes [{ShapeUtil.Format(c.Shape)}], [{ShapeUtil.Format(x.Shape)}] and [{ShapeUtil.Format(y.Shape)}] do not broadcast"))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var c = (NdArray<bool>)inputs[0]!;
        switch (outputs[0])
        {
            case NdArray<float> o: Select(c, (NdArray<float>)inputs[1]!, (NdArray<float>)inputs[2]!, o); break;
            case NdArray<long> o: Select(c, (NdArray<long>)inputs[1]!, (NdArray<long>)inputs[2]!, o); break;
            case NdArray<int> o: Select(c, (NdArray<int>)inputs[1]!, (NdArray<int>)inputs[2]!, o); break;
            case NdArray<bool> o: Select(c, (NdArray<bool>)inputs[1]!, (NdArray<bool>)inputs[2]!, o); break;
            case NdArray<sbyte> o: Select(c, (NdArray<sbyte>)inputs[1]!, (NdArray<sbyte>)inputs[2]!, o); break;
            case NdArray<byte> o: Select(c, (NdArray<byte>)inputs[1]!, (NdArray<byte>)inputs[2]!, o); break;
            case NdArray<short> o: Select(c, (NdArray<short>)inputs[1]!, (NdArray<short>)inputs[2]!, o); break;
            case NdArray<ushort> o: Select(c, (NdArray<ushort>)inputs[1]!, (NdArray<ushort>)inputs[2]!, o); break;
            case NdArray<uint> o: Select(c, (NdArray<uint>)inputs[1]!, (NdArray<uint>)inputs[2]!, o); break;
            case NdArray<ulong> o: Select(c, (NdArray<ulong>)inputs[1]!, (NdArray<ulong>)inputs[2]!, o); break;
            default: throw UnsupportedError($"element type {outputs[0].ElementType} is not supported");
        }
    }

    private static void Select<T>(NdArray<bool> c, NdArray<T> x, NdArray<T> y, NdArray<T> o) where T : unmanaged
    {
        var layout = Broadcast.Create(o.Shape, c.Shape, x.Shape, y.Shape);
        var run = new SelectRun<T> { C = c.Data, X = x.Data, Y = y.Data, O = o.Data, Layout = layout };
        layout.ForEachRun(ref run);
    }

    private struct SelectRun<T> : IRunAction where T : unmanaged
    {
        public bool[] C; public T[] X, Y, O; public Broadcast Layout;

        public readonly void Run(int output, int c, int x, int y, int length)
        {
            for (int i = 0; i < length; i++, c += Layout.Step0, x += Layout.Step1, y += Layout.Step2)
                O[output + i] = C[c] ? X[x] : Y[y];
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        int fresh = context.FreshGradients;
        if (outputGrads[0] is not { } gy)
        {
            for (int i = 1; i < 3; i++)
                if ((fresh >> i & 1) != 0) inputGrads[i]?.Span.Clear();
            return;
        }
        var c = (NdArray<bool>)inputs[0]!;
        var layout = Broadcast.Create(gy.Shape, c.Shape, inputs[1]!.Shape, inputs[2]!.Shape);
        // A first gradient of the output's shape along a running condition is written by the masked pass (the other
        // side's lanes zero); any other first gradient is cleared here, as the backward pass would have.
        bool writeX = (fresh & 2) != 0 && inputGrads[1] is { } gx && gx.Length == gy.Length && layout.Step0 == 1 && layout.Step1 == 1;
        bool writeY = (fresh & 4) != 0 && inputGrads[2] is { } gz && gz.Length == gy.Length && layout.Step0 == 1 && layout.Step2 == 1;
        if ((fresh & 2) != 0 && !writeX) inputGrads[1]?.Span.Clear();
        if ((fresh & 4) != 0 && !writeY) inputGrads[2]?.Span.Clear();
        var run = new GradRun { C = c.Data, G = gy.Data, GX = inputGrads[1]?.Data, GY = inputGrads[2]?.Data, Layout = layout, WriteX = writeX, WriteY = writeY };
        layout.ForEachRun(ref run);
    }

    public override bool WritesFreshGradients => true;

    private struct GradRun : IRunAction
    {
        public bool[] C; public float[] G; public float[]? GX, GY; public Broadcast Layout;
        /// <summary>Write GX/GY (their first gradient, reached once) instead of adding into them.</summary>
        public bool WriteX, WriteY;

        public readonly void Run(int output, int c, int x, int y, int length)
        {
            if (Layout.Step0 == 1)
            {
                // The condition runs along (an attention mask): each side's contiguous gradient is a masked add.
                var g = G.AsSpan(output, length);
                var condition = C.AsSpan(c, length);
                if (GX is not null && Layout.Step1 == 1) MaskedAdd(condition, g, GX.AsSpan(x, length), when: true, WriteX);
                if (GY is not null && Layout.Step2 == 1) MaskedAdd(condition, g, GY.AsSpan(y, length), when: false, WriteY);
                if ((GX is null || Layout.Step1 == 1) && (GY is null || Layout.Step2 == 1)) return;
                for (int i = 0; i < length; i++)
                {
                    if (condition[i]) { if (GX is not null && Layout.Step1 == 0) GX[x] += g[i]; }
                    else if (GY is not null && Layout.Step2 == 0) GY[y] += g[i];
                }
                return;
            }
            for (int i = 0; i < length; i++, c += Layout.Step0, x += Layout.Step1, y += Layout.Step2)
            {
                if (C[c]) { if (GX is not null) GX[x] += G[output + i]; }
                else if (GY is not null) GY[y] += G[output + i];
            }
        }
    }

    /// <summary>
    /// target[i] += g[i] where condition[i] == <paramref name="when"/> (8 lanes at a time: bools widened to masks); with
    /// <paramref name="write"/>, target[i] = that or 0 (0 + x is x: the bits of a zeroed target).
    /// </summary>
    private static unsafe void MaskedAdd(ReadOnlySpan<bool> condition, ReadOnlySpan<float> g, Span<float> target, bool when, bool write)
    {
        int i = 0, n = g.Length;
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            fixed (bool* pc = condition) fixed (float* pg = g, pt = target)
                for (; i + 8 <= n; i += 8)
                {
                    var flags = System.Runtime.Intrinsics.X86.Avx2.ConvertToVector256Int32((byte*)pc + i);
                    var isFalse = Vector256.Equals(flags, Vector256<int>.Zero).AsSingle();
                    var v = Vector256.Load(pg + i);
                    var picked = when ? Vector256.AndNot(v, isFalse) : v & isFalse;
                    (write ? picked : Vector256.Load(pt + i) + picked).Store(pt + i);
                }
        }
        for (; i < n; i++)
            if (condition[i] == when) target[i] = write ? g[i] : target[i] + g[i];
            else if (write) target[i] = 0;
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var c = (NdArray<bool>)inputs[0]!;
        var layout = Broadcast.Create(ty.Shape, c.Shape, inputs[1]!.Shape, inputs[2]!.Shape);
        var run = new TangentRun { C = c.Data, T = ty.Data, TX = inputTangents[1]?.Data, TY = inputTangents[2]?.Data, Layout = layout };
        layout.ForEachRun(ref run);
    }

    private struct TangentRun : IRunAction
    {
        public bool[] C; public float[] T; public float[]? TX, TY; public Broadcast Layout;

        public readonly void Run(int output, int c, int x, int y, int length)
        {
            if (Layout.Step0 == 1 && (TX is null || Layout.Step1 == 1) && (TY is null || Layout.Step2 == 1))
            {
                // The condition runs along with each side that has a tangent (an attention mask): a masked select.
                MaskedSelect(C.AsSpan(c, length), TX is null ? default : TX.AsSpan(x, length), TY is null ? default : TY.AsSpan(y, length), T.AsSpan(output, length));
                return;
            }
            for (int i = 0; i < length; i++, c += Layout.Step0, x += Layout.Step1, y += Layout.Step2)
                T[output + i] = C[c] ? (TX is null ? 0 : TX[x]) : (TY is null ? 0 : TY[y]);
        }
    }

    /// <summary>
    /// target[i] = condition[i] ? whenTrue[i] : whenFalse[i], an empty side counting as zeros (8 lanes at a time:
    /// bools widened to masks).
    /// </summary>
    private static unsafe void MaskedSelect(ReadOnlySpan<bool> condition, ReadOnlySpan<float> whenTrue, ReadOnlySpan<float> whenFalse, Span<float> target)
    {
        int i = 0, n = target.Length;
        bool hasTrue = !whenTrue.IsEmpty, hasFalse = !whenFalse.IsEmpty;
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            fixed (bool* pc = condition) fixed (float* pt = whenTrue, pf = whenFalse, po = target)
                for (; i + 8 <= n; i += 8)
                {
                    var flags = System.Runtime.Intrinsics.X86.Avx2.ConvertToVector256Int32((byte*)pc + i);
                    var isTrue = ~Vector256.Equals(flags, Vector256<int>.Zero).AsSingle();
                    var t = hasTrue ? Vector256.Load(pt + i) : Vector256<float>.Zero;
                    var f = hasFalse ? Vector256.Load(pf + i) : Vector256<float>.Zero;
                    Vector256.ConditionalSelect(isTrue, t, f).Store(po + i);
                }
        }
        for (; i < n; i++) target[i] = condition[i] ? (hasTrue ? whenTrue[i] : 0) : (hasFalse ? whenFalse[i] : 0);
    }
}

/// <summary>Equal, Less, Greater, LessOrEqual, GreaterOrEqual (float and every integer type; Equal also bool) and And, Or, Xor (bool), with broadcasting → bool. Not differentiable.</summary>
internal sealed class Compare : Operator
{
    public Compare(OperatorNode node) : base(node) => RequireInputs(2, 2);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var a = Required(inputs, 0, "A");
        var b = Required(inputs, 1, "B");
        if (a.Type != b.Type) throw Error($"inputs must have one element type, got {a.Type} and {b.Type}");
        bool logical = Node.OpType is "And" or "Or" or "Xor";
        if (logical != (a.Type == ElementType.Bool) && !(Node.OpType == "Equal" && a.Type == ElementType.Bool))
            throw UnsupportedError(logical ? $"inputs must be bool, got {a.Type}" : "bool inputs are only supported by Equal");
        var shape = Broadcast.Shape(a.Shape, b.Shape) ?? throw Error($"shapes [{ShapeUtil.Format(a.Shape)}] and [{ShapeUtil.Format(b.Shape)}] do not broadcast");
        return [new TensorInfo(ElementType.Bool, shape)];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var o = (NdArray<bool>)outputs[0];
        switch (inputs[0], inputs[1])
        {
            case (NdArray<float> a, NdArray<float> b): Run(a, b, o); break;
            case (NdArray<long> a, NdArray<long> b): Run(a, b, o); break;
            case (NdArray<int> a, NdArray<int> b): Run(a, b, o); break;
            case (NdArray<sbyte> a, NdArray<sbyte> b): Run(a, b, o); break;
            case (NdArray<byte> a, NdArray<byte> b): Run(a, b, o); break;
            case (NdArray<short> a, NdArray<short> b): Run(a, b, o); break;
            case (NdArray<ushort> a, NdArray<ushort> b): Run(a, b, o); break;
            case (NdArray<uint> a, NdArray<uint> b): Run(a, b, o); break;
            case (NdArray<ulong> a, NdArray<ulong> b): Run(a, b, o); break;
            case (NdArray<bool> a, NdArray<bool> b):
                Run(new NdArray<int>(a.Shape, Array.ConvertAll(a.Data, v => v ? 1 : 0)), new NdArray<int>(b.Shape, Array.ConvertAll(b.Data, v => v ? 1 : 0)), o);
                break;
            default: throw UnsupportedError($"element types {inputs[0]!.ElementType} and {inputs[1]!.ElementType} are not supported");
        }
    }

    private void Run<T>(NdArray<T> a, NdArray<T> b, NdArray<bool> o) where T : unmanaged, INumber<T>
    {
        var layout = Broadcast.Create(o.Shape, a.Shape, b.Shape);
        var run = new CompareRun<T> { A = a.Data, B = b.Data, O = o.Data, Layout = layout, Kind = Node.OpType };
        layout.ForEachRun(ref run);
    }

    private struct CompareRun<T> : IRunAction where T : INumber<T>
    {
        public T[] A, B; public bool[] O; public Broadcast Layout; public string Kind;

        public readonly void Run(int output, int a, int b, int unused, int length)
        {
            for (int i = 0; i < length; i++, a += Layout.Step0, b += Layout.Step1)
                O[output + i] = Kind switch
                {
                    "Equal" => A[a] == B[b],
                    "Less" => A[a] < B[b],
                    "Greater" => A[a] > B[b],
                    "LessOrEqual" => A[a] <= B[b],
                    "GreaterOrEqual" => A[a] >= B[b],
                    "And" => A[a] != T.Zero && B[b] != T.Zero,
                    "Or" => A[a] != T.Zero || B[b] != T.Zero,
                    _ => (A[a] != T.Zero) != (B[b] != T.Zero),
                };
        }
    }
}

/// <summary>Not on bool.</summary>
internal sealed class Not : Operator
{
    public Not(OperatorNode node) : base(node) => RequireInputs(1, 1);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "X");
        if (x.Type != ElementType.Bool) throw Error($"input must be bool, got {x.Type}");
        return [new TensorInfo(ElementType.Bool, x.Shape)];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = (NdArray<bool>)inputs[0]!;
        var y = (NdArray<bool>)outputs[0];
        for (int i = 0; i < x.Data.Length; i++) y.Data[i] = !x.Data[i];
    }
}

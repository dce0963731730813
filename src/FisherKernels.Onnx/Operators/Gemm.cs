using System.Numerics.Tensors;
using FisherKernels.Backends;

namespace FisherKernels.Onnx.Operators;

/// <summary>Gemm: Y = α·op(A)·op(B) + β·C, op = transpose when transA/transB; C (optional) broadcast to [M, N].</summary>
internal sealed class Gemm : Operator
{
    private readonly bool transA, transB;
    private readonly float alpha, beta;

    public Gemm(OperatorNode node) : base(node)
    {
        RequireInputs(2, 3);
        transA = node.Attributes.GetInt("transA", 0) != 0;
        transB = node.Attributes.GetInt("transB", 0) != 0;
        alpha = node.Attributes.GetFloat("alpha", 1);
        beta = node.Attributes.GetFloat("beta", 1);
    }

    public override bool IsDifferentiable(int input) => input is 0 or 1 or 2;

    private (int M, int N, int K) Dims(int[] a, int[] b) =>
        (transA ? a[1] : a[0], transB ? b[0] : b[1], transA ? a[0] : a[1]);

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var a = RequiredFloat(inputs, 0, "A");
        var b = RequiredFloat(inputs, 1, "B");
        if (a.Shape.Length != 2 || b.Shape.Length != 2) throw Error($"A and B must be 2-D, got [{ShapeUtil.Format(a.Shape)}] and [{ShapeUtil.Format(b.Shape)}]");
        var (m, n, k) = Dims(a.Shape, b.Shape);
        if ((transB ? b.Shape[1] : b.Shape[0]) != k) throw Error($"op(A) [{m}, {k}] and op(B) of [{ShapeUtil.Format(b.Shape)}] cannot be multiplied");
        if (inputs.Length > 2 && inputs[2] is { } c)
        {
            if (c.Type != ElementType.Float32) throw UnsupportedError($"C must be float, got {c.Type}");
            if (c.Shape.Length > 2 || Broadcast.Shape(c.Shape, [m, n]) is not [var bm, var bn] || bm != m || bn != n)
                throw Error($"C [{ShapeUtil.Format(c.Shape)}] does not broadcast to [{m}, {n}]");
        }
        return [new TensorInfo(ElementType.Float32, [m, n])];
    }

    private static NdArray<float>? C(ReadOnlySpan<NdArray?> inputs) => inputs.Length > 2 ? inputs[2] as NdArray<float> : null;

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var a = (NdArray<float>)inputs[0]!;
        var b = (NdArray<float>)inputs[1]!;
        var y = (NdArray<float>)outputs[0];
        var (m, n, k) = Dims(a.Shape, b.Shape);
        float betaY = 0;
        if (C(inputs) is { } c && beta != 0) { BroadcastScaled(c, beta, y, m, n); betaY = 1; }
        context.Backend.Gemm(new GemmShape(m, n, k, transA, transB, alpha, betaY), a.Data, b.Data, y.Data);
    }

    /// <summary>y = scale·C broadcast to [m, n] (C of shape [], [n], [1, n], [m, 1], [m, n]).</summary>
    private static void BroadcastScaled(NdArray<float> c, float scale, NdArray<float> y, int m, int n)
    {
        bool rows = c.Rank == 2 && c.Shape[0] == m && m != 1, cols = c.Rank >= 1 && c.Shape[^1] == n && n != 1;
        for (int i = 0; i < m; i++)
        {
            var row = y.Data.AsSpan(i * n, n);
            if (cols) TensorPrimitives.Multiply(c.Data.AsSpan(rows ? i * n : 0, n), scale, row);
            else row.Fill(scale * c.Data[rows ? i : 0]);
        }
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var a = (NdArray<float>)inputs[0]!;
        var b = (NdArray<float>)inputs[1]!;
        var (m, n, k) = Dims(a.Shape, b.Shape);
        var backend = context.Backend;
        if (inputGrads[0] is { } ga)
        {
            // op(A) = A:  gA[m×k] += α·gY·op(B)ᵀ;   op(A) = Aᵀ:  gA[k×m] += α·op(B)·gYᵀ
            if (!transA) backend.Gemm(new GemmShape(m, k, n, false, !transB, alpha, 1), gy.Data, b.Data, ga.Data);
            else backend.Gemm(new GemmShape(k, m, n, transB, true, alpha, 1), b.Data, gy.Data, ga.Data);
        }
        if (inputGrads[1] is { } gb)
        {
            // op(B) = B:  gB[k×n] += α·op(A)ᵀ·gY;   op(B) = Bᵀ:  gB[n×k] += α·gYᵀ·op(A)
            if (!transB) backend.Gemm(new GemmShape(k, n, m, !transA, false, alpha, 1), a.Data, gy.Data, gb.Data);
            else backend.Gemm(new GemmShape(n, k, m, true, transA, alpha, 1), gy.Data, a.Data, gb.Data);
        }
        if (inputGrads.Length > 2 && inputGrads[2] is { } gc)
        {
            var c = C(inputs)!;
            bool rows = c.Rank == 2 && c.Shape[0] == m && m != 1, cols = c.Rank >= 1 && c.Shape[^1] == n && n != 1;
            for (int i = 0; i < m; i++)
            {
                var row = gy.Data.AsSpan(i * n, n);
                if (cols)
                {
                    var target = gc.Data.AsSpan(rows ? i * n : 0, n);
                    TensorPrimitives.MultiplyAdd(row, beta, target, target);
                }
                else gc.Data[rows ? i : 0] += beta * TensorPrimitives.Sum(row);
            }
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var a = (NdArray<float>)inputs[0]!;
        var b = (NdArray<float>)inputs[1]!;
        var (m, n, k) = Dims(a.Shape, b.Shape);
        float betaY = 0;
        if (inputTangents.Length > 2 && inputTangents[2] is { } tc) { BroadcastScaled(tc, beta, ty, m, n); betaY = 1; }
        if (inputTangents[0] is { } ta) { context.Backend.Gemm(new GemmShape(m, n, k, transA, transB, alpha, betaY), ta.Data, b.Data, ty.Data); betaY = 1; }
        if (inputTangents[1] is { } tb) { context.Backend.Gemm(new GemmShape(m, n, k, transA, transB, alpha, betaY), a.Data, tb.Data, ty.Data); betaY = 1; }
        if (betaY == 0) ty.Span.Clear();
    }
}

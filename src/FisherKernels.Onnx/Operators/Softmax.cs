using System.Numerics.Tensors;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Softmax and LogSoftmax. Opset 13+: along one axis (default -1). Before 13: the input is coerced to
/// 2-D at the axis (default 1) and normalized over everything from the axis on. Max-subtracted, so
/// large logits do not overflow.
/// </summary>
internal sealed class Softmax : Operator
{
    private readonly long axis;
    private readonly bool log;

    public Softmax(OperatorNode node) : base(node)
    {
        RequireInputs(1, 1);
        axis = node.Attributes.GetInt("axis", node.Opset >= 13 ? -1 : 1);
        log = node.OpType == "LogSoftmax";
    }

    public override bool IsDifferentiable(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = RequiredFloat(inputs, 0, "input");
        NormalizeAxis(axis, Math.Max(1, x.Shape.Length));
        return [new TensorInfo(ElementType.Float32, x.Shape)];
    }

    /// <summary>The input as [outer, length, inner] with the normalization over the middle.</summary>
    private (int Outer, int Length, int Inner) Layout(int[] shape)
    {
        if (shape.Length == 0) return (1, 1, 1);
        int a = NormalizeAxis(axis, shape.Length);
        return Node.Opset >= 13
            ? (Tensors.Product(shape, 0, a), shape[a], Tensors.Product(shape, a + 1, shape.Length))
            : (Tensors.Product(shape, 0, a), Tensors.Product(shape, a, shape.Length), 1);
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var x = Tensors.Float(inputs[0], Node, "input");
        var y = Tensors.Float(outputs[0], Node, "output");
        var (outer, length, inner) = Layout(x.Shape);
        if (length == 0) return;
        if (inner == 1)
        {
            for (int o = 0; o < outer; o++)
            {
                var xs = x.Data.AsSpan(o * length, length);
                var ys = y.Data.AsSpan(o * length, length);
                float max = TensorPrimitives.Max(xs);
                TensorPrimitives.Subtract(xs, max, ys);
                if (log)
                {
                    float logSum = MathF.Log(SumExp(context, ys));
                    TensorPrimitives.Subtract(ys, logSum, ys);
                }
                else
                {
                    TensorPrimitives.Exp(ys, ys);
                    TensorPrimitives.Divide(ys, TensorPrimitives.Sum(ys), ys);
                }
            }
            return;
        }
        var column = context.Scratch(length);
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                int start = o * length * inner + i;
                for (int j = 0; j < length; j++) column[j] = x.Data[start + j * inner];
                float max = TensorPrimitives.Max(column);
                TensorPrimitives.Subtract(column, max, column);
                if (log) TensorPrimitives.Subtract(column, MathF.Log(SumExp(column)), column);
                else
                {
                    TensorPrimitives.Exp(column, column);
                    TensorPrimitives.Divide(column, TensorPrimitives.Sum(column), column);
                }
                for (int j = 0; j < length; j++) y.Data[start + j * inner] = column[j];
            }
    }

    private static float SumExp(OpContext context, ReadOnlySpan<float> shifted)
    {
        var e = context.Scratch(shifted.Length);
        TensorPrimitives.Exp(shifted, e);
        return TensorPrimitives.Sum(e);
    }

    private static float SumExp(ReadOnlySpan<float> shifted)
    {
        float sum = 0;
        foreach (float v in shifted) sum += MathF.Exp(v);
        return sum;
    }

    // Softmax:     gx = y ⊙ (gy − ⟨gy, y⟩),   ty = y ⊙ (tx − ⟨tx, y⟩)
    // LogSoftmax:  gx = gy − softmax·Σgy,      ty = tx − ⟨tx, softmax⟩      (softmax = exp(y))
    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy || inputGrads[0] is not { } gx) return;
        var y = Tensors.Float(outputs[0], Node, "output");
        bool fresh = (context.FreshGradients & 1) != 0;
        var (outer, length, inner) = Layout(y.Shape);
        if (!log && inner == 1 && length is > 0 and <= MaxRowGradient)
        {
            // Softmax over contiguous rows (attention): gx (+)= y ⊙ (gy − ⟨gy, y⟩), rows split over the threads.
            int minimumRows = Math.Max(1, BinaryElementwise.ParallelMinimum / length);
            if (context.Threads > 1 && outer >= 2 * minimumRows) SplitRowGradients(y.Data, gy.Data, gx.Data, length, outer, minimumRows, context.Threads, fresh);
            else RowGradients(y.Data, gy.Data, gx.Data, length, 0, outer, fresh);
            return;
        }
        if (fresh) gx.Span.Clear();
        Derivative(context, y, gy.Data, gx.Data, reverse: true);
    }

    public override bool WritesFreshGradients => true;

    /// <summary>Longest row whose gradient goes through <see cref="RowGradients"/> (its per-row buffer is on the stack).</summary>
    private const int MaxRowGradient = 4096;

    /// <summary>The rows as ranges on the threads (kept apart: its closure allocates).</summary>
    private static void SplitRowGradients(float[] y, float[] gy, float[] gx, int length, int rows, int minimumRows, int threads, bool fresh) =>
        ParallelWork.ForRanges(rows, threads, minimumRows, (start, count) => RowGradients(y, gy, gx, length, start, count, fresh));

    private static void RowGradients(float[] y, float[] gy, float[] gx, int length, int start, int count, bool fresh)
    {
        Span<float> t = fresh ? default : stackalloc float[length];
        for (int row = start; row < start + count; row++)
        {
            var p = y.AsSpan(row * length, length);
            var g = gy.AsSpan(row * length, length);
            var target = gx.AsSpan(row * length, length);
            if (fresh) { TensorPrimitives.AddMultiply(g, -TensorPrimitives.Dot(g, p), p, target); continue; }
            TensorPrimitives.AddMultiply(g, -TensorPrimitives.Dot(g, p), p, t);
            TensorPrimitives.Add(target, t, target);
        }
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is not { } tx) { ty.Span.Clear(); return; }
        var y = Tensors.Float(outputs[0], Node, "output");
        var (outer, length, inner) = Layout(y.Shape);
        if (log || inner != 1 || length == 0) { Derivative(context, y, tx.Data, ty.Data, reverse: false); return; }
        // Softmax over contiguous rows (attention): ty = y ⊙ (tx − ⟨tx, y⟩) in one pass a row, rows split over the threads.
        int minimumRows = Math.Max(1, BinaryElementwise.ParallelMinimum / length);
        if (context.Threads > 1 && outer >= 2 * minimumRows) SplitRows(y.Data, tx.Data, ty.Data, length, outer, minimumRows, context.Threads);
        else RowTangents(y.Data, tx.Data, ty.Data, length, 0, outer);
    }

    /// <summary>The rows as ranges on the threads (kept apart: its closure allocates).</summary>
    private static void SplitRows(float[] y, float[] tx, float[] ty, int length, int rows, int minimumRows, int threads) =>
        ParallelWork.ForRanges(rows, threads, minimumRows, (start, count) => RowTangents(y, tx, ty, length, start, count));

    private static void RowTangents(float[] y, float[] tx, float[] ty, int length, int start, int count)
    {
        for (int row = start; row < start + count; row++)
        {
            var p = y.AsSpan(row * length, length);
            var t = tx.AsSpan(row * length, length);
            TensorPrimitives.AddMultiply(t, -TensorPrimitives.Dot(t, p), p, ty.AsSpan(row * length, length));
        }
    }

    /// <summary>Reverse: target += Jᵀ·source. Forward: target = J·source. Per normalized slice.</summary>
    private void Derivative(OpContext context, NdArray<float> y, float[] source, float[] target, bool reverse)
    {
        var (outer, length, inner) = Layout(y.Shape);
        var scratch = context.Scratch(3L * length);
        Span<float> p = scratch[..length], s = scratch.Slice(length, length), t = scratch.Slice(2 * length, length);
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                int start = o * length * inner + i;
                if (inner == 1)
                {
                    // Rows are contiguous: read y and the source in place (p holds exp(y) for log-softmax only).
                    var yRow = y.Data.AsSpan(start, length);
                    var sRow = source.AsSpan(start, length);
                    var tRow = target.AsSpan(start, length);
                    if (log) TensorPrimitives.Exp(yRow, p);
                    ReadOnlySpan<float> probabilities = log ? p : yRow;
                    if (!log)
                    {
                        float dot = TensorPrimitives.Dot(sRow, probabilities);
                        TensorPrimitives.Subtract(sRow, dot, t);
                        TensorPrimitives.Multiply(t, probabilities, t);
                    }
                    else if (reverse) TensorPrimitives.MultiplyAdd(probabilities, -TensorPrimitives.Sum(sRow), sRow, t);
                    else TensorPrimitives.Subtract(sRow, TensorPrimitives.Dot(sRow, probabilities), t);
                    if (reverse) TensorPrimitives.Add(tRow, t, tRow); else t.CopyTo(tRow);
                    continue;
                }
                for (int j = 0; j < length; j++) { p[j] = y.Data[start + j * inner]; s[j] = source[start + j * inner]; }
                if (log) TensorPrimitives.Exp(p, p);
                // softmax: J = diag(p) − p pᵀ (symmetric);  log-softmax: J = I − 1 pᵀ, Jᵀ = I − p 1ᵀ
                if (!log)
                {
                    float dot = TensorPrimitives.Dot(s, p);
                    TensorPrimitives.Subtract(s, dot, t);
                    TensorPrimitives.Multiply(t, p, t);
                }
                else if (reverse)
                {
                    float sum = TensorPrimitives.Sum(s);
                    TensorPrimitives.MultiplyAdd(p, -sum, s, t);
                }
                else TensorPrimitives.Subtract(s, TensorPrimitives.Dot(s, p), t);
                for (int j = 0; j < length; j++)
                {
                    if (reverse) target[start + j * inner] += t[j];
                    else target[start + j * inner] = t[j];
                }
            }
    }
}

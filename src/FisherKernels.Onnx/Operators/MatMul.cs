using System.Runtime.CompilerServices;
using FisherKernels.Backends;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// numpy.matmul: [..., M, K] × [..., K, N] with broadcast batch dimensions; a 1-D operand gets a
/// dimension prepended (A) or appended (B) that is removed from the result. GEMMs go through the backend.
/// </summary>
internal sealed class MatMul : Operator
{
    public MatMul(OperatorNode node) : base(node) => RequireInputs(2, 2);

    public override bool IsDifferentiable(int input) => input is 0 or 1;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var a = RequiredFloat(inputs, 0, "A");
        var b = RequiredFloat(inputs, 1, "B");
        if (a.Shape.Length == 0 || b.Shape.Length == 0) throw Error("MatMul operands must have rank 1 or more");
        if (!Dims.TryCreate(a.Shape, b.Shape, out var d))
            throw Error($"shapes [{ShapeUtil.Format(a.Shape)}] and [{ShapeUtil.Format(b.Shape)}] cannot be multiplied");
        var shape = new List<int>(d.Out[..d.Rank].ToArray());
        if (a.Shape.Length > 1) shape.Add(d.M);
        if (b.Shape.Length > 1) shape.Add(d.N);
        return [new TensorInfo(ElementType.Float32, [.. shape])];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var (a, b, y) = Operands(inputs, outputs);
        Dims.TryCreate(a.Shape, b.Shape, out var d);
        // y[M×N] = A[M×K]·B[K×N] per batch
        Gemm(context.Backend, d.Out[..d.Rank], a.Data, d.A[..d.Rank], b.Data, d.B[..d.Rank], y.Data, d.Out[..d.Rank], d.M, d.N, d.K, false, false, 0);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var (a, b, _) = Operands(inputs, outputs);
        Dims.TryCreate(a.Shape, b.Shape, out var d);
        ReadOnlySpan<int> batch = d.Out[..d.Rank], batchA = d.A[..d.Rank], batchB = d.B[..d.Rank];
        // gA[M×K] += gY[M×N]·Bᵀ,  gB[K×N] += Aᵀ·gY[M×N]; batches broadcast into an operand add up there.
        if (inputGrads[0] is { } ga) Gemm(context.Backend, batch, gy.Data, batch, b.Data, batchB, ga.Data, batchA, d.M, d.K, d.N, false, true, 1);
        if (inputGrads[1] is { } gb) Gemm(context.Backend, batch, a.Data, batchA, gy.Data, batch, gb.Data, batchB, d.K, d.N, d.M, true, false, 1);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var (a, b, _) = Operands(inputs, outputs);
        Dims.TryCreate(a.Shape, b.Shape, out var d);
        ReadOnlySpan<int> batch = d.Out[..d.Rank], batchA = d.A[..d.Rank], batchB = d.B[..d.Rank];
        float beta = 0;
        if (inputTangents[0] is { } ta) { Gemm(context.Backend, batch, ta.Data, batchA, b.Data, batchB, ty.Data, batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (inputTangents[1] is { } tb) { Gemm(context.Backend, batch, a.Data, batchA, tb.Data, batchB, ty.Data, batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (beta == 0) ty.Span.Clear();
    }

    private (NdArray<float> A, NdArray<float> B, NdArray<float> Y) Operands(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) =>
        (Tensors.Float(inputs[0], Node, "A"), Tensors.Float(inputs[1], Node, "B"), Tensors.Float(outputs[0], Node, "Y"));

    [InlineArray(Broadcast.MaxRank)] private struct BatchShape { private int element; }

    /// <summary>Matrix sizes and the batch shapes of A, B and the output, right-aligned to the output's batch rank (no allocation).</summary>
    private struct Dims
    {
        public int M, N, K, Rank;
        public BatchShape A, B, Out;

        public static bool TryCreate(ReadOnlySpan<int> a, ReadOnlySpan<int> b, out Dims d)
        {
            d = default;
            d.M = a.Length == 1 ? 1 : a[^2];
            d.K = a[^1];
            d.N = b.Length == 1 ? 1 : b[^1];
            if ((b.Length == 1 ? b[0] : b[^2]) != d.K) return false;
            ReadOnlySpan<int> batchA = a.Length > 2 ? a[..^2] : default, batchB = b.Length > 2 ? b[..^2] : default;
            d.Rank = Math.Max(batchA.Length, batchB.Length);
            if (d.Rank > Broadcast.MaxRank) throw FisherKernelsException.Unsupported($"MatMul batch rank {d.Rank} is above {Broadcast.MaxRank}");
            for (int i = 0; i < d.Rank; i++)
            {
                int da = i < d.Rank - batchA.Length ? 1 : batchA[i - (d.Rank - batchA.Length)];
                int db = i < d.Rank - batchB.Length ? 1 : batchB[i - (d.Rank - batchB.Length)];
                if (da != db && da != 1 && db != 1) return false;
                d.A[i] = da; d.B[i] = db; d.Out[i] = da == 1 ? db : da;
            }
            return true;
        }
    }

    /// <summary>
    /// C_c (+)= op(A_a)·op(B_b) over the broadcast batch (C [m×n], op(A) [m×k], op(B) [k×n] per batch).
    /// When C is broadcast over some batch dimension its batches are visited several times, which is only
    /// meaningful with <paramref name="beta"/> = 1 (gradients add up).
    /// </summary>
    private static void Gemm(IComputeBackend backend, ReadOnlySpan<int> batch, float[] a, ReadOnlySpan<int> batchA, float[] b, ReadOnlySpan<int> batchB,
                             float[] c, ReadOnlySpan<int> batchC, int m, int n, int k, bool transA, bool transB, float beta)
    {
        long countA = ShapeUtil.Product(batchA), countB = ShapeUtil.Product(batchB), countC = ShapeUtil.Product(batchC);
        long count = ShapeUtil.Product(batch);
        if (count == 0 || m == 0 || n == 0) return;
        if (countB == 1 && countA == count && countC == count && !transA)
        {
            // B shared by every batch: one GEMM with the batches stacked into the rows of A and C.
            backend.Gemm(new GemmShape(checked((int)(count * m)), n, k, false, transB, 1, beta), a, b, c);
        }
        else if (countC == 1 && countA == count && countB == count && transA && !transB && count > 1)
        {
            // Weight gradient of a shared B: the batches stack along the contraction.
            backend.Gemm(new GemmShape(m, n, checked((int)(count * k)), true, false, 1, beta), a, b, c);
        }
        else if ((countA == count || countA == 1) && (countB == count || countB == 1) && countC == count)
        {
            backend.Gemm(new GemmShape(m, n, k, transA, transB, 1, beta, checked((int)count),
                                       countA == 1 ? 0 : (long)m * k, countB == 1 ? 0 : (long)k * n, (long)m * n), a, b, c);
        }
        else
        {
            // General broadcast (or a reduction into C): one GEMM per output batch.
            int rank = batch.Length;
            Span<int> index = stackalloc int[rank];
            for (long i = 0; i < count; i++)
            {
                long rest = i, offA = 0, offB = 0, offC = 0, strideA = 1, strideB = 1, strideC = 1;
                for (int d = rank - 1; d >= 0; d--)
                {
                    int idx = (int)(rest % batch[d]); rest /= batch[d];
                    if (batchA[d] != 1) offA += idx * strideA;
                    if (batchB[d] != 1) offB += idx * strideB;
                    if (batchC[d] != 1) offC += idx * strideC;
                    strideA *= batchA[d]; strideB *= batchB[d]; strideC *= batchC[d];
                }
                int lenA = m * k, lenB = k * n, lenC = m * n;
                backend.Gemm(new GemmShape(m, n, k, transA, transB, 1, beta),
                             a.AsSpan((int)(offA * lenA), lenA), b.AsSpan((int)(offB * lenB), lenB), c.AsSpan((int)(offC * lenC), lenC));
            }
        }
    }
}

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
        var dims = Dims.Of(a.Shape, b.Shape) ?? throw Error($"shapes [{ShapeUtil.Format(a.Shape)}] and [{ShapeUtil.Format(b.Shape)}] cannot be multiplied");
        return [new TensorInfo(ElementType.Float32, dims.OutputShape(a.Shape.Length, b.Shape.Length))];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var (a, b, y) = Operands(inputs, outputs);
        var d = Dims.Of(a.Shape, b.Shape)!.Value;
        // y[M×N] = A[M×K]·B[K×N] per batch
        Gemm(context.Backend, d, a.Data, d.BatchA, b.Data, d.BatchB, y.Data, d.Batch, d.M, d.N, d.K, false, false, 0);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is not { } gy) return;
        var (a, b, _) = Operands(inputs, outputs);
        var d = Dims.Of(a.Shape, b.Shape)!.Value;
        // gA[M×K] += gY[M×N]·Bᵀ,  gB[K×N] += Aᵀ·gY[M×N]; batches broadcast into an operand add up there.
        if (inputGrads[0] is { } ga) Gemm(context.Backend, d, gy.Data, d.Batch, b.Data, d.BatchB, ga.Data, d.BatchA, d.M, d.K, d.N, false, true, 1);
        if (inputGrads[1] is { } gb) Gemm(context.Backend, d, a.Data, d.BatchA, gy.Data, d.Batch, gb.Data, d.BatchB, d.K, d.N, d.M, true, false, 1);
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var (a, b, _) = Operands(inputs, outputs);
        var d = Dims.Of(a.Shape, b.Shape)!.Value;
        float beta = 0;
        if (inputTangents[0] is { } ta) { Gemm(context.Backend, d, ta.Data, d.BatchA, b.Data, d.BatchB, ty.Data, d.Batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (inputTangents[1] is { } tb) { Gemm(context.Backend, d, a.Data, d.BatchA, tb.Data, d.BatchB, ty.Data, d.Batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (beta == 0) ty.Span.Clear();
    }

    private (NdArray<float> A, NdArray<float> B, NdArray<float> Y) Operands(ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) =>
        (Tensors.Float(inputs[0], Node, "A"), Tensors.Float(inputs[1], Node, "B"), Tensors.Float(outputs[0], Node, "Y"));

    /// <summary>Matrix sizes and the batch shapes of A, B and the output, all of the output's batch rank.</summary>
    internal readonly record struct Dims(int M, int N, int K, int[] BatchA, int[] BatchB, int[] Batch)
    {
        public static Dims? Of(int[] a, int[] b)
        {
            int m = a.Length == 1 ? 1 : a[^2], k = a[^1];
            int kb = b.Length == 1 ? b[0] : b[^2], n = b.Length == 1 ? 1 : b[^1];
            if (k != kb) return null;
            var batchA = a.Length > 2 ? a[..^2] : [];
            var batchB = b.Length > 2 ? b[..^2] : [];
            var batch = Broadcast.Shape(batchA, batchB);
            if (batch is null) return null;
            return new Dims(m, n, k, Pad(batchA, batch.Length), Pad(batchB, batch.Length), batch);
        }

        public int[] OutputShape(int rankA, int rankB)
        {
            var shape = new List<int>(Batch);
            if (rankA > 1) shape.Add(M);
            if (rankB > 1) shape.Add(N);
            return [.. shape];
        }

        private static int[] Pad(int[] shape, int rank)
        {
            var padded = new int[rank];
            Array.Fill(padded, 1);
            shape.CopyTo(padded, rank - shape.Length);
            return padded;
        }
    }

    /// <summary>
    /// C_c (+)= op(A_a)·op(B_b) over the broadcast of the three batch shapes (C [m×n], op(A) [m×k],
    /// op(B) [k×n] per batch). When C is broadcast over some batch dimension its batches are visited
    /// several times, which is only meaningful with <paramref name="beta"/> = 1 (gradients add up).
    /// </summary>
    private static void Gemm(IComputeBackend backend, in Dims dims, float[] a, int[] batchA, float[] b, int[] batchB,
                             float[] c, int[] batchC, int m, int n, int k, bool transA, bool transB, float beta)
    {
        long countA = ShapeUtil.Product(batchA), countB = ShapeUtil.Product(batchB), countC = ShapeUtil.Product(batchC);
        long count = ShapeUtil.Product(dims.Batch);
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
            int rank = dims.Batch.Length;
            Span<int> index = stackalloc int[rank];
            for (long i = 0; i < count; i++)
            {
                long rest = i, offA = 0, offB = 0, offC = 0, strideA = 1, strideB = 1, strideC = 1;
                for (int d = rank - 1; d >= 0; d--)
                {
                    int idx = (int)(rest % dims.Batch[d]); rest /= dims.Batch[d];
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

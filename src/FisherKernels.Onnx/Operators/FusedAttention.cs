using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Scaled dot-product attention as exporters write it, fused at plan time in inference plans:
/// O = Softmax(mask(scale · Q·Kᵀ))·V per (batch, head), with Q [B,H,Sq,D], Kᵀ [B,H,D,Sk], V [B,H,Sk,Dv]
/// and O [B,H,Sq,Dv]. The mask is either a selection (Where(condition, scores, fill) or with the branches
/// swapped) or an additive bias, broadcast to [B,H,Sq,Sk]. Transposes around the chain are absorbed: each of
/// Q, Kᵀ, V may be given as a source tensor and the permutation that makes it, and O may be written
/// transposed. Inputs: (Q source, Kᵀ source, V source, mask?). Heads run in parallel; the scores of a head
/// stay in a per-thread workspace instead of a [B,H,Sq,Sk] buffer.
/// </summary>
internal sealed unsafe class FusedAttention : Operator
{
    public enum MaskKind { None, Select, Add }

    private readonly int[] queryPermutation, keyPermutation, valuePermutation, outputPermutation;
    private readonly float scale, fill;
    private readonly MaskKind mask;
    private readonly bool keepWhere; // Select: the scores are kept where the condition equals this

    [ThreadStatic] private static float[]? workspace;

    /// <summary>For Q, Kᵀ, V: logical axis i is the source's axis [i]; for O: the output is Transpose(O, [·]) (read by the device plan).</summary>
    internal int[][] Permutations => [queryPermutation, keyPermutation, valuePermutation, outputPermutation];
    internal float Scale => scale;
    internal MaskKind Mask => mask;
    internal float Fill => fill;
    internal bool KeepWhere => keepWhere;

    /// <param name="permutations">For Q, Kᵀ, V: logical axis i is the source's axis perm[i]; for O: the output is Transpose(O, perm).</param>
    public FusedAttention(OperatorNode node, int[][] permutations, float scale, MaskKind mask, float fill, bool keepWhere) : base(node)
    {
        (queryPermutation, keyPermutation, valuePermutation, outputPermutation) = (permutations[0], permutations[1], permutations[2], permutations[3]);
        (this.scale, this.mask, this.fill, this.keepWhere) = (scale, mask, fill, keepWhere);
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var q = Permute(RequiredFloat(inputs, 0, "Q").Shape, queryPermutation);
        var v = Permute(RequiredFloat(inputs, 2, "V").Shape, valuePermutation);
        return [new TensorInfo(ElementType.Float32, Permute([q[0], q[1], q[2], v[3]], outputPermutation))];
    }

    private static int[] Permute(int[] shape, int[] permutation) => permutation.Select(p => shape[p]).ToArray();

    /// <summary>Element strides of the logical tensor Transpose(source, perm) in the source's storage.</summary>
    private static void LogicalStrides(int[] sourceShape, int[] permutation, Span<long> strides)
    {
        Span<long> source = stackalloc long[4];
        long stride = 1;
        for (int i = 3; i >= 0; i--) { source[i] = stride; stride *= sourceShape[i]; }
        for (int i = 0; i < 4; i++) strides[i] = source[permutation[i]];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var q = Tensors.Float(inputs[0], Node, "Q");
        var k = Tensors.Float(inputs[1], Node, "K");
        var v = Tensors.Float(inputs[2], Node, "V");
        var o = Tensors.Float(outputs[0], Node, "O");
        var qShape = Permute(q.Shape, queryPermutation);
        var kShape = Permute(k.Shape, keyPermutation);
        var vShape = Permute(v.Shape, valuePermutation);
        var shape = new Layout(qShape[0], qShape[1], qShape[2], kShape[3], qShape[3], vShape[3]);
        LogicalStrides(q.Shape, queryPermutation, shape.QueryStrides);
        LogicalStrides(k.Shape, keyPermutation, shape.KeyStrides);
        LogicalStrides(v.Shape, valuePermutation, shape.ValueStrides);
        // O[b,h,s,d] lands at output axis j where outputPermutation[j] is its axis.
        Span<long> outputStrides = stackalloc long[4];
        LogicalStrides(o.Shape, [0, 1, 2, 3], outputStrides);
        for (int j = 0; j < 4; j++) shape.OutputStrides[outputPermutation[j]] = outputStrides[j];
        var maskArray = mask == MaskKind.None ? null : inputs[3];
        if (maskArray is not null)
        {
            // Right-aligned broadcast of the mask over [B, H, Sq, Sk].
            int offset = 4 - maskArray.Rank;
            long stride = 1;
            ReadOnlySpan<int> logical = [shape.Batch, shape.Heads, shape.Queries, shape.Keys];
            for (int i = 3; i >= 0; i--)
            {
                int d = i < offset ? 1 : maskArray.Shape[i - offset];
                shape.MaskStrides[i] = d == 1 && logical[i] != 1 ? 0 : stride;
                stride *= d;
            }
        }
        if (shape.Keys == 0) { o.Span.Clear(); return; } // no keys: every output row is an empty sum
        var work = new Work(this, q.Data, k.Data, v.Data, maskArray, o.Data, shape);
        long flops = 4L * shape.Batch * shape.Heads * shape.Queries * shape.Keys * Math.Max(shape.Depth, shape.ValueDepth);
        ParallelWork.For(shape.Batch * shape.Heads, flops >= 1 << 20 ? context.Threads : 1, work.Head);
    }

    /// <summary>Sizes and the element strides of the logical [B,H,·,·] views.</summary>
    private sealed class Layout(int batch, int heads, int queries, int keys, int depth, int valueDepth)
    {
        public readonly int Batch = batch, Heads = heads, Queries = queries, Keys = keys, Depth = depth, ValueDepth = valueDepth;
        public readonly long[] QueryStrides = new long[4], KeyStrides = new long[4], ValueStrides = new long[4], OutputStrides = new long[4], MaskStrides = new long[4];
    }

    private sealed class Work(FusedAttention op, float[] q, float[] k, float[] v, NdArray? mask, float[] o, Layout s)
    {
        public void Head(int item) => op.Head(item, q, k, v, mask, o, s);
    }

    private void Head(int item, float[] q, float[] k, float[] v, NdArray? maskArray, float[] o, Layout s)
    {
        int b = item / s.Heads, h = item % s.Heads, sq = s.Queries, sk = s.Keys, d = s.Depth, dv = s.ValueDepth;
        int keyPanels = PackedGemm.PanelCount(sk) * PackedGemm.PanelWidth, valuePanels = PackedGemm.PanelCount(dv) * PackedGemm.PanelWidth;
        long need = (long)sq * d + (long)keyPanels * d + (long)sq * sk + (long)valuePanels * sk + (long)sq * dv;
        if (workspace is null || workspace.Length < need) workspace = new float[need];
        fixed (float* pq = q, pk = k, pv = v, po = o, w = workspace)
        {
            float* queries = w, keys = queries + (long)sq * d, scores = keys + (long)keyPanels * d;
            float* values = scores + (long)sq * sk, result = values + (long)valuePanels * sk;
            // Q of this head as a dense [Sq × D] block; Kᵀ [D × Sk] and V [Sk × Dv] packed for the GEMM kernel.
            Gather(pq + b * s.QueryStrides[0] + h * s.QueryStrides[1], sq, d, s.QueryStrides[2], s.QueryStrides[3], queries);
            PackedGemm.Pack(pk + b * s.KeyStrides[0] + h * s.KeyStrides[1], d, sk, s.KeyStrides[2], s.KeyStrides[3], keys);
            PackedGemm.Pack(pv + b * s.ValueStrides[0] + h * s.ValueStrides[1], sk, dv, s.ValueStrides[2], s.ValueStrides[3], values);
            // Blocks of 8 query rows; with a selection mask only the keys up to the last one a row keeps are computed.
            for (int i0 = 0; i0 < sq; i0 += 8)
            {
                int rows = Math.Min(8, sq - i0), needed = 0;
                for (int i = i0; i < i0 + rows; i++) needed = Math.Max(needed, KeptKeys(maskArray, s, b, h, i));
                float* block = scores + (long)i0 * sk;
                PackedGemm.MultiplyPanels(queries + (long)i0 * d, d, rows, d, keys, needed, null, block, sk, 0, PackedGemm.PanelCount(needed));
                for (int i = 0; i < rows; i++) NormalizeRow(new Span<float>(block + (long)i * sk, needed), maskArray, s, b, h, i0 + i);
                PackedGemm.MultiplyPanels(block, sk, rows, needed, values, dv, null, result + (long)i0 * dv, dv, 0, PackedGemm.PanelCount(dv), packedDepth: sk);
            }
            float* target = po + b * s.OutputStrides[0] + h * s.OutputStrides[1];
            for (int i = 0; i < sq; i++)
            {
                if (s.OutputStrides[3] == 1) new ReadOnlySpan<float>(result + (long)i * dv, dv).CopyTo(new Span<float>(target + i * s.OutputStrides[2], dv));
                else for (int j = 0; j < dv; j++) target[i * s.OutputStrides[2] + j * s.OutputStrides[3]] = result[(long)i * dv + j];
            }
        }
    }

    private static void Gather(float* source, int rows, int columns, long rowStride, long columnStride, float* target)
    {
        for (int r = 0; r < rows; r++)
        {
            if (columnStride == 1) new ReadOnlySpan<float>(source + r * rowStride, columns).CopyTo(new Span<float>(target + (long)r * columns, columns));
            else for (int c = 0; c < columns; c++) target[(long)r * columns + c] = source[r * rowStride + c * columnStride];
        }
    }

    /// <summary>
    /// The keys [0, n) that row i of a head needs: all of them, unless a selection mask fills the rest with a value so
    /// negative (≤ −1e4) that its softmax weight is exactly 0 next to any kept score: then up to the last kept key.
    /// A row that keeps no key needs them all (its softmax is over the fill values alone).
    /// </summary>
    private int KeptKeys(NdArray? maskArray, Layout s, int b, int h, int i)
    {
        if (maskArray is not NdArray<bool> condition || fill > -1e4f || s.MaskStrides[3] != 1) return s.Keys;
        long start = b * s.MaskStrides[0] + h * s.MaskStrides[1] + i * s.MaskStrides[2];
        var flags = MemoryMarshal.Cast<bool, byte>(condition.Data.AsSpan((int)start, s.Keys));
        int last = keepWhere ? flags.LastIndexOfAnyExcept((byte)0) : flags.LastIndexOf((byte)0);
        return last < 0 ? s.Keys : last + 1;
    }

    /// <summary>One row of scores: scale, mask, softmax (max-subtracted, as the Softmax operator).</summary>
    private void NormalizeRow(Span<float> row, NdArray? maskArray, Layout s, int b, int h, int i)
    {
        TensorPrimitives.Multiply(row, scale, row);
        if (maskArray is not null)
        {
            long start = b * s.MaskStrides[0] + h * s.MaskStrides[1] + i * s.MaskStrides[2], step = s.MaskStrides[3];
            switch (maskArray)
            {
                case NdArray<bool> condition when step == 1:
                    // Masks come in runs (causal, padding): find them with vectorized searches, fill the masked ones.
                    var flags = MemoryMarshal.Cast<bool, byte>(condition.Data.AsSpan((int)start, row.Length));
                    for (int j = 0; j < row.Length;)
                    {
                        int from = keepWhere ? flags[j..].IndexOf((byte)0) : flags[j..].IndexOfAnyExcept((byte)0);
                        if (from < 0) break;
                        j += from;
                        int length = keepWhere ? flags[j..].IndexOfAnyExcept((byte)0) : flags[j..].IndexOf((byte)0);
                        if (length < 0) length = row.Length - j;
                        row.Slice(j, length).Fill(fill);
                        j += length;
                    }
                    break;
                case NdArray<bool> condition:
                    for (int j = 0; j < row.Length; j++)
                        if (condition.Data[start + j * step] != keepWhere) row[j] = fill;
                    break;
                case NdArray<float> bias when step == 1: TensorPrimitives.Add(row, bias.Data.AsSpan((int)start, row.Length), row); break;
                case NdArray<float> bias:
                    for (int j = 0; j < row.Length; j++) row[j] += bias.Data[start + j * step];
                    break;
            }
        }
        TensorPrimitives.Subtract(row, TensorPrimitives.Max(row), row);
        FastMath.Exp(row, row);
        TensorPrimitives.Divide(row, TensorPrimitives.Sum(row), row);
    }
}

namespace FisherKernels.Backends;

/// <summary>
/// A float32 buffer in an accelerator's memory (<see cref="ITensorDevice"/>). Every value a device plan holds is one
/// of these: int and bool values too, as float32 (exact for integers below 2²⁴, which token ids, positions and
/// shapes are).
/// </summary>
public abstract class DeviceTensor : IDisposable
{
    public abstract long Length { get; }

    public abstract void Dispose();
}

/// <summary>Elementwise functions of one operand (<see cref="ITensorDevice.Unary"/>).</summary>
public enum DeviceUnary
{
    Identity, Neg, Sqrt, Reciprocal, Exp, Log, Tanh, Erf, Sigmoid, Relu, Cos, Sin, Abs,
    GeluErf, GeluTanh, Silu,
    /// <summary>dGELU/dx (erf and tanh forms): the slope a derivative plan keeps beside the GELU.</summary>
    GeluErfSlope, GeluTanhSlope,
    /// <summary>Cast to bool: 1 where x ≠ 0.</summary>
    NotZero,
    /// <summary>Logical not of a bool stored as 0/1.</summary>
    Not,
    /// <summary>Cast of a float to an integer type: rounds toward zero.</summary>
    Truncate,
}

/// <summary>Elementwise functions of two operands with broadcasting, and Where of three (<see cref="ITensorDevice.Binary"/>).</summary>
public enum DeviceBinary { Add, Sub, Mul, Div, Pow, Max, Min, Equal, Less, Greater, LessOrEqual, GreaterOrEqual, And, Or, Where }

/// <summary>
/// The output shape of a broadcast elementwise launch (at most <see cref="MaxRank"/> dimensions) and, per operand,
/// its element strides in that shape (0 along a broadcast dimension).
/// </summary>
public sealed record BroadcastLayout(int[] Shape, long[][] Strides)
{
    public const int MaxRank = 6;

    /// <summary>The layout of operands of <paramref name="shapes"/> broadcast (NumPy rules) to <paramref name="output"/>.</summary>
    public static BroadcastLayout For(int[] output, params int[][] shapes)
    {
        if (output.Length > MaxRank)
            throw FisherKernelsException.Unsupported($"a broadcast over rank {output.Length} (the device kernels take at most {MaxRank})");
        var strides = new long[shapes.Length][];
        for (int o = 0; o < shapes.Length; o++)
        {
            strides[o] = new long[output.Length];
            int offset = output.Length - shapes[o].Length;
            long stride = 1;
            for (int d = output.Length - 1; d >= 0; d--)
            {
                int size = d < offset ? 1 : shapes[o][d - offset];
                strides[o][d] = size == 1 && output[d] != 1 ? 0 : stride;
                stride *= size;
            }
        }
        return new BroadcastLayout(output, strides);
    }
}

/// <summary>
/// Scaled dot-product attention on one launch: O[b,h,i,:] = Σⱼ softmax_j(mask(scale·Q[b,h,i,:]·K[b,h,j,:]))·V[b,h,j,:],
/// every operand addressed through the element strides of its logical [B, H, ·, ·] view (so transposes around
/// attention cost nothing). The mask is broadcast over [B, H, Sq, Sk] by <see cref="MaskStrides"/>.
/// </summary>
public sealed record AttentionLayout(int Batch, int Heads, int Queries, int Keys, int Depth, int ValueDepth,
                                     long[] QueryStrides, long[] KeyStrides, long[] ValueStrides, long[] OutputStrides,
                                     long[] MaskStrides, AttentionMask Mask, float Scale, float Fill, bool KeepWhere);

/// <summary>How an attention mask applies: a selection (kept where the condition equals KeepWhere, else Fill) or an additive bias.</summary>
public enum AttentionMask { None, Select, Add }

/// <summary>
/// A backend whose buffers live on an accelerator (the ILGPU backend): a device plan allocates every value here once,
/// uploads the weights once, and runs each step of a model's plan as one or a few of these launches, so that only the
/// tokens go in and the logits come out. Launches are queued in order on one stream; <see cref="Download"/> waits for them.
/// Every float operand is dense and row-major; lengths are checked by the caller (the plan sized them).
/// </summary>
public interface ITensorDevice
{
    /// <summary>A zeroed buffer of <paramref name="length"/> floats.</summary>
    DeviceTensor Allocate(long length);

    void Upload(ReadOnlySpan<float> source, DeviceTensor target);

    /// <summary>Waits for every queued launch, then copies the first target.Length floats of <paramref name="source"/> out.</summary>
    void Download(DeviceTensor source, Span<float> target);

    /// <summary>A constant table of int32 element indices (for <see cref="Copy"/>).</summary>
    DeviceTensor UploadIndices(ReadOnlySpan<int> indices);

    /// <summary>target[pairs[2t]] = source[pairs[2t+1]] for every pair t: the data movement of a transpose, slice, concat, expand…</summary>
    void Copy(DeviceTensor source, DeviceTensor pairs, DeviceTensor target);

    void Unary(DeviceUnary function, DeviceTensor x, DeviceTensor y, long length);

    /// <summary>y = f(a, b) (Where: y = a ≠ 0 ? b : c) over <paramref name="layout"/>'s shape, one stride row per operand.</summary>
    void Binary(DeviceBinary function, BroadcastLayout layout, DeviceTensor a, DeviceTensor b, DeviceTensor? c, DeviceTensor y);

    /// <summary>The batched GEMM of <see cref="IComputeBackend.Gemm"/> on device buffers (batch strides, 0 broadcasts).</summary>
    void Gemm(in GemmShape shape, DeviceTensor a, DeviceTensor b, DeviceTensor c);

    /// <summary>Rows of x [rows × cols] normalized (centred: LayerNorm; else RMSNorm), times scale (+ bias), into y.</summary>
    void Normalize(DeviceTensor x, DeviceTensor scale, DeviceTensor? bias, DeviceTensor y, int rows, int cols, float epsilon, bool centered);

    /// <summary>Softmax of each row of x [rows × cols] into y.</summary>
    void Softmax(DeviceTensor x, DeviceTensor y, int rows, int cols);

    /// <summary>y[o, i, :] = mean (or sum) over r of x[o, r, i] with x [outer × length × inner].</summary>
    void Reduce(DeviceTensor x, DeviceTensor y, int outer, int length, int inner, bool mean);

    /// <summary>y[o, t, :] = table[o, indices[t], :] with table [outer × rows × inner] (negative indices count from the end).</summary>
    void Gather(DeviceTensor table, DeviceTensor indices, DeviceTensor y, int outer, int rows, int inner, int count);

    void Attention(AttentionLayout layout, DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor? mask, DeviceTensor o);

    /// <summary>
    /// Kernel family 1 on device buffers (<see cref="IComputeBackend.AccumulateFactor"/> without a row mask): factor ←
    /// β·factor + α·X̃ᵀX̃ with X̃ = [X | 1] when <paramref name="appendOne"/>, x [rows × cols], both triangles written.
    /// </summary>
    void AccumulateFactor(DeviceTensor x, int rows, int cols, bool appendOne, float alpha, float beta, DeviceTensor factor);

    // The reverse pass (VJP) of a device plan, and its tangent pass (JVP): every launch below adds into its target (the
    // plan zeroes a target before the first step that writes it), so that a value read by several steps sums their terms.

    /// <summary>The first <paramref name="length"/> floats of <paramref name="target"/> set to <paramref name="value"/>.</summary>
    void Fill(DeviceTensor target, long length, float value);

    /// <summary>gx[i] += gy[i]·f′(x[i]) for a unary function, with y = f(x) at hand (the slope of tanh, sigmoid, √ and exp read y).</summary>
    void UnaryVjp(DeviceUnary function, DeviceTensor x, DeviceTensor y, DeviceTensor gy, DeviceTensor gx, long length);

    /// <summary>
    /// target[j] += scale·Σ source[i] over the elements i of <paramref name="layout"/>'s shape that broadcast to target
    /// element j: <c>layout.Strides[0]</c> are the target's strides in that shape (0 along a broadcast dimension), the source
    /// is dense in that shape. The VJP of a broadcast (equal shapes: target += scale·source).
    /// </summary>
    void AddReduced(BroadcastLayout layout, DeviceTensor source, DeviceTensor target, float scale);

    /// <summary>
    /// target[s] += Σ source[indices[k]] for k in [offsets[s], offsets[s+1]), s below <paramref name="count"/>: the VJP of a
    /// <see cref="Copy"/> table grouped by source element (race-free, in a fixed order).
    /// </summary>
    void AddGathered(DeviceTensor source, DeviceTensor offsets, DeviceTensor indices, DeviceTensor target, long count);

    /// <summary>
    /// The VJP of <see cref="Gather"/> for the table: table[o, indices[t], :] += gy[o, t, :] (atomic adds: indices repeat).
    /// </summary>
    void ScatterAddRows(DeviceTensor gy, DeviceTensor indices, DeviceTensor table, int outer, int rows, int inner, int count);

    /// <summary>
    /// The VJP of <see cref="Normalize"/> for x: with x̂ the normalized row and r its inverse deviation, ĝ = gy·scale,
    /// gx += r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) (mean(ĝ) only when centred).
    /// </summary>
    void NormalizeVjp(DeviceTensor x, DeviceTensor scale, DeviceTensor gy, DeviceTensor gx, int rows, int cols, float epsilon, bool centered);

    /// <summary>
    /// The JVP of <see cref="Normalize"/> for x: with x̂ the normalized row and r its inverse deviation,
    /// ty += scale·r·(tx − mean(tx) − x̂·mean(tx·x̂)) (mean(tx) only when centred).
    /// </summary>
    void NormalizeJvp(DeviceTensor x, DeviceTensor scale, DeviceTensor tx, DeviceTensor ty, int rows, int cols, float epsilon, bool centered);

    /// <summary>The VJP of <see cref="Softmax"/> of rows from its output y: gx += y ⊙ (gy − ⟨gy, y⟩).</summary>
    void SoftmaxVjp(DeviceTensor y, DeviceTensor gy, DeviceTensor gx, int rows, int cols);
}

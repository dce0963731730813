using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// The tensor operations of <see cref="ITensorDevice"/> (device-resident model plans): buffers stay on the device
/// between launches, launches are queued on the default stream, and only <see cref="Download"/> waits. These are
/// plain one-thread-per-element (or per-row) kernels: correct everywhere first; the GEMMs use the tiled kernel of
/// family 3.
/// </summary>
public sealed partial class IlgpuBackend : ITensorDevice
{
    /// <summary>A float buffer (or, for index tables, an int buffer) on this backend's accelerator.</summary>
    private sealed class Tensor : DeviceTensor
    {
        public MemoryBuffer1D<float, Stride1D.Dense>? Floats;
        public MemoryBuffer1D<int, Stride1D.Dense>? Ints;

        public override long Length => Floats?.Length ?? Ints?.Length ?? 0;

        public ArrayView<float> View => Floats?.View ?? throw new FisherKernelsException(ErrorKind.Internal, "an index table used as data");

        public ArrayView<int> Indices => Ints?.View ?? throw new FisherKernelsException(ErrorKind.Internal, "a data tensor used as an index table");

        public override void Dispose()
        {
            Floats?.Dispose();
            Ints?.Dispose();
            Floats = null;
            Ints = null;
        }
    }

    private static Tensor Of(DeviceTensor tensor) => tensor as Tensor
        ?? throw new FisherKernelsException(ErrorKind.Internal, "a device tensor of another backend");

    /// <summary>A one-element buffer bound where an optional operand is absent (kernels do not read it).</summary>
    private Tensor Placeholder => placeholder ??= (Tensor)Allocate(1);
    private Tensor? placeholder;

    public DeviceTensor Allocate(long length)
    {
        try
        {
            var buffer = accelerator.Allocate1D<float>(Math.Max(length, 1));
            buffer.MemSetToZero(accelerator.DefaultStream);
            return new Tensor { Floats = buffer };
        }
        catch (Exception e) when (e is not FisherKernelsException)
        {
            throw new FisherKernelsException(ErrorKind.OutOfMemory, $"{Name}: cannot allocate {length} floats of device memory: {e.Message}", e);
        }
    }

    public void Upload(ReadOnlySpan<float> source, DeviceTensor target)
    {
        if (!source.IsEmpty) Of(target).View.SubView(0, source.Length).CopyFromCPU(accelerator.DefaultStream, source);
    }

    public void Download(DeviceTensor source, Span<float> target)
    {
        if (!target.IsEmpty) Of(source).View.SubView(0, target.Length).CopyToCPU(accelerator.DefaultStream, target);
        Synchronize();
    }

    public DeviceTensor UploadIndices(ReadOnlySpan<int> indices)
    {
        var buffer = accelerator.Allocate1D<int>(Math.Max(indices.Length, 1));
        if (!indices.IsEmpty) buffer.View.SubView(0, indices.Length).CopyFromCPU(accelerator.DefaultStream, indices);
        return new Tensor { Ints = buffer };
    }

    private Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>>? copyKernel;

    public void Copy(DeviceTensor source, DeviceTensor pairs, DeviceTensor target)
    {
        long count = Of(pairs).Length / 2;
        if (count == 0) return;
        copyKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>>(CopyPairsKernel);
        copyKernel(checked((int)count), Of(source).View, Of(pairs).Indices, Of(target).View);
    }

    private static void CopyPairsKernel(Index1D t, ArrayView<float> source, ArrayView<int> pairs, ArrayView<float> target) =>
        target[pairs[2 * t]] = source[pairs[2 * t + 1]];

    private Action<Index1D, ArrayView<float>, ArrayView<float>, int>? unaryKernel;

    public void Unary(DeviceUnary function, DeviceTensor x, DeviceTensor y, long length)
    {
        if (length == 0) return;
        unaryKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(UnaryKernel);
        unaryKernel(checked((int)length), Of(x).View, Of(y).View, (int)function);
    }

    private static void UnaryKernel(Index1D i, ArrayView<float> x, ArrayView<float> y, int function) => y[i] = UnaryValue((DeviceUnary)function, x[i]);

    internal static float UnaryValue(DeviceUnary function, float v) => function switch
    {
        DeviceUnary.Neg => -v,
        DeviceUnary.Sqrt => XMath.Sqrt(v),
        DeviceUnary.Reciprocal => 1f / v,
        DeviceUnary.Exp => XMath.Exp(v),
        DeviceUnary.Log => XMath.Log(v),
        DeviceUnary.Tanh => XMath.Tanh(v),
        DeviceUnary.Erf => Erf(v),
        DeviceUnary.Sigmoid => 1f / (1f + XMath.Exp(-v)),
        DeviceUnary.Relu => v > 0f ? v : 0f,
        DeviceUnary.Cos => XMath.Cos(v),
        DeviceUnary.Sin => XMath.Sin(v),
        DeviceUnary.Abs => XMath.Abs(v),
        DeviceUnary.GeluErf => 0.5f * v * (1f + Erf(v * 0.70710678f)),
        DeviceUnary.GeluTanh => 0.5f * v * (1f + XMath.Tanh(0.7978845608f * (v + 0.044715f * v * v * v))),
        DeviceUnary.Silu => v / (1f + XMath.Exp(-v)),
        DeviceUnary.GeluErfSlope => 0.5f * (1f + Erf(v * 0.70710678f)) + v * 0.39894228f * XMath.Exp(-0.5f * v * v),
        DeviceUnary.GeluTanhSlope => GeluTanhSlope(v),
        DeviceUnary.NotZero => v != 0f ? 1f : 0f,
        DeviceUnary.Not => v != 0f ? 0f : 1f,
        DeviceUnary.Truncate => XMath.Truncate(v),
        _ => v,
    };

    /// <summary>d/dx of 0.5·x·(1 + tanh(c·(x + 0.044715·x³))).</summary>
    private static float GeluTanhSlope(float x)
    {
        const float c = 0.7978845608f;
        float t = XMath.Tanh(c * (x + 0.044715f * x * x * x));
        return 0.5f * (1f + t) + 0.5f * x * (1f - t * t) * c * (1f + 3f * 0.044715f * x * x);
    }

    /// <summary>erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, under float32's rounding of GELU's result).</summary>
    private static float Erf(float x)
    {
        float a = XMath.Abs(x), t = 1f / (1f + 0.3275911f * a);
        float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        float r = 1f - poly * XMath.Exp(-a * a);
        return x < 0f ? -r : r;
    }

    /// <summary>A broadcast launch's shape (padded on the left to six dimensions) and the three operands' strides.</summary>
    internal struct BroadcastArgs
    {
        public int D0, D1, D2, D3, D4, D5, Function;
        public long A0, A1, A2, A3, A4, A5, B0, B1, B2, B3, B4, B5, C0, C1, C2, C3, C4, C5;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, BroadcastArgs>? binaryKernel;

    public void Binary(DeviceBinary function, BroadcastLayout layout, DeviceTensor a, DeviceTensor b, DeviceTensor? c, DeviceTensor y)
    {
        long length = ShapeUtil.Product(layout.Shape);
        if (length == 0) return;
        int pad = BroadcastLayout.MaxRank - layout.Shape.Length;
        int Dim(int d) => d < pad ? 1 : layout.Shape[d - pad];
        long Stride(int operand, int d) => d < pad || operand >= layout.Strides.Length ? 0 : layout.Strides[operand][d - pad];
        var args = new BroadcastArgs
        {
            D0 = Dim(0), D1 = Dim(1), D2 = Dim(2), D3 = Dim(3), D4 = Dim(4), D5 = Dim(5), Function = (int)function,
            A0 = Stride(0, 0), A1 = Stride(0, 1), A2 = Stride(0, 2), A3 = Stride(0, 3), A4 = Stride(0, 4), A5 = Stride(0, 5),
            B0 = Stride(1, 0), B1 = Stride(1, 1), B2 = Stride(1, 2), B3 = Stride(1, 3), B4 = Stride(1, 4), B5 = Stride(1, 5),
            C0 = Stride(2, 0), C1 = Stride(2, 1), C2 = Stride(2, 2), C3 = Stride(2, 3), C4 = Stride(2, 4), C5 = Stride(2, 5),
        };
        binaryKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, BroadcastArgs>(BinaryKernel);
        binaryKernel(checked((int)length), Of(a).View, Of(b).View, (c is null ? Placeholder : Of(c)).View, Of(y).View, args);
    }

    private static void BinaryKernel(Index1D index, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> y, BroadcastArgs p)
    {
        long rest = (int)index;
        long i5 = rest % p.D5; rest /= p.D5;
        long i4 = rest % p.D4; rest /= p.D4;
        long i3 = rest % p.D3; rest /= p.D3;
        long i2 = rest % p.D2; rest /= p.D2;
        long i1 = rest % p.D1; rest /= p.D1;
        long i0 = rest;
        float x = a[i0 * p.A0 + i1 * p.A1 + i2 * p.A2 + i3 * p.A3 + i4 * p.A4 + i5 * p.A5];
        float z = b[i0 * p.B0 + i1 * p.B1 + i2 * p.B2 + i3 * p.B3 + i4 * p.B4 + i5 * p.B5];
        if ((DeviceBinary)p.Function == DeviceBinary.Where)
        {
            y[index] = x != 0f ? z : c[i0 * p.C0 + i1 * p.C1 + i2 * p.C2 + i3 * p.C3 + i4 * p.C4 + i5 * p.C5];
            return;
        }
        y[index] = BinaryValue((DeviceBinary)p.Function, x, z);
    }

    internal static float BinaryValue(DeviceBinary function, float x, float z) => function switch
    {
        DeviceBinary.Add => x + z,
        DeviceBinary.Sub => x - z,
        DeviceBinary.Mul => x * z,
        DeviceBinary.Div => x / z,
        // x² is the common case (variance in decomposed norms): exact, as the CPU operator computes it.
        DeviceBinary.Pow => z == 2f ? x * x : z == 1f ? x : z == 0.5f ? XMath.Sqrt(x) : XMath.Pow(x, z),
        DeviceBinary.Max => x > z ? x : z,
        DeviceBinary.Min => x < z ? x : z,
        DeviceBinary.Equal => x == z ? 1f : 0f,
        DeviceBinary.Less => x < z ? 1f : 0f,
        DeviceBinary.Greater => x > z ? 1f : 0f,
        DeviceBinary.LessOrEqual => x <= z ? 1f : 0f,
        DeviceBinary.GreaterOrEqual => x >= z ? 1f : 0f,
        DeviceBinary.And => x != 0f && z != 0f ? 1f : 0f,
        DeviceBinary.Or => x != 0f || z != 0f ? 1f : 0f,
        _ => 0f,
    };

    public void Gemm(in GemmShape shape, DeviceTensor a, DeviceTensor b, DeviceTensor c)
    {
        if (shape.M == 0 || shape.N == 0 || shape.BatchCount == 0) return;
        if (shape.K == 0) { Of(c).View.SubView(0, (shape.BatchCount - 1) * shape.StrideC + (long)shape.M * shape.N).MemSetToZero(accelerator.DefaultStream); return; }
        LaunchGemm(shape, Of(a).View, Of(b).View, Of(c).View);
    }

    internal struct RowArgs
    {
        public int Cols, Centered, HasBias;
        /// <summary>The normalization's derivative kernel: 1 for the JVP's form, 0 for the VJP's.</summary>
        public int Tangent;
        public float Epsilon;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, RowArgs>? normalizeKernel;

    public void Normalize(DeviceTensor x, DeviceTensor scale, DeviceTensor? bias, DeviceTensor y, int rows, int cols, float epsilon, bool centered)
    {
        if (rows == 0 || cols == 0) return;
        normalizeKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, RowArgs>(NormalizeKernel);
        var args = new RowArgs { Cols = cols, Centered = centered ? 1 : 0, HasBias = bias is null ? 0 : 1, Epsilon = epsilon };
        normalizeKernel(rows, Of(x).View, Of(scale).View, (bias is null ? Placeholder : Of(bias)).View, Of(y).View, args);
    }

    /// <summary>A row's mean (0 unless centred) and inverse deviation 1/√(mean square of the deviations + ε).</summary>
    internal struct RowStatistics
    {
        public float Mean, Inverse;
    }

    /// <summary>The statistics of the row at <paramref name="start"/>, in float32 as the CPU operator computes them.</summary>
    private static RowStatistics Statistics(ArrayView<float> x, long start, RowArgs p)
    {
        float mean = 0f;
        if (p.Centered != 0)
        {
            for (int j = 0; j < p.Cols; j++) mean += x[start + j];
            mean /= p.Cols;
        }
        float square = 0f;
        for (int j = 0; j < p.Cols; j++)
        {
            float d = x[start + j] - mean;
            square += d * d;
        }
        return new RowStatistics { Mean = mean, Inverse = 1f / XMath.Sqrt(square / p.Cols + p.Epsilon) };
    }

    /// <summary>One row: its statistics, then y = x̂·scale (+ bias).</summary>
    private static void NormalizeKernel(Index1D row, ArrayView<float> x, ArrayView<float> scale, ArrayView<float> bias, ArrayView<float> y, RowArgs p)
    {
        long start = (long)(int)row * p.Cols;
        var statistics = Statistics(x, start, p);
        float mean = statistics.Mean, inverse = statistics.Inverse;
        for (int j = 0; j < p.Cols; j++)
        {
            float v = (x[start + j] - mean) * inverse * scale[j];
            y[start + j] = p.HasBias != 0 ? v + bias[j] : v;
        }
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, int>? softmaxKernel;

    public void Softmax(DeviceTensor x, DeviceTensor y, int rows, int cols)
    {
        if (rows == 0 || cols == 0) return;
        softmaxKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(SoftmaxKernel);
        softmaxKernel(rows, Of(x).View, Of(y).View, cols);
    }

    private static void SoftmaxKernel(Index1D row, ArrayView<float> x, ArrayView<float> y, int cols)
    {
        long start = (long)(int)row * cols;
        float max = x[start];
        for (int j = 1; j < cols; j++) max = XMath.Max(max, x[start + j]);
        float sum = 0f;
        for (int j = 0; j < cols; j++)
        {
            float e = XMath.Exp(x[start + j] - max);
            y[start + j] = e;
            sum += e;
        }
        float inverse = 1f / sum;
        for (int j = 0; j < cols; j++) y[start + j] *= inverse;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>? reduceKernel;

    public void Reduce(DeviceTensor x, DeviceTensor y, int outer, int length, int inner, bool mean)
    {
        if ((long)outer * inner == 0) return;
        reduceKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>(ReduceKernel);
        reduceKernel(checked(outer * inner), Of(x).View, Of(y).View, length, inner, mean ? 1 : 0);
    }

    private static void ReduceKernel(Index1D index, ArrayView<float> x, ArrayView<float> y, int length, int inner, int mean)
    {
        long o = index / inner, i = index % inner, start = o * length * inner + i;
        float sum = 0f;
        for (int r = 0; r < length; r++) sum += x[start + (long)r * inner];
        y[index] = mean != 0 && length > 0 ? sum / length : sum;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? gatherKernel;

    public void Gather(DeviceTensor table, DeviceTensor indices, DeviceTensor y, int outer, int rows, int inner, int count)
    {
        long length = (long)outer * count * inner;
        if (length == 0) return;
        gatherKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(GatherKernel);
        gatherKernel(checked((int)length), Of(table).View, Of(indices).View, Of(y).View, rows, inner, count);
    }

    /// <summary>An index outside [−rows, rows) reads row 0 (the plan checks token ids on the host before they go in).</summary>
    private static void GatherKernel(Index1D index, ArrayView<float> table, ArrayView<float> indices, ArrayView<float> y, int rows, int inner, int count)
    {
        long at = TableElement(index, indices, rows, inner, count);
        y[index] = table[at >= 0 ? at : 0];
    }

    /// <summary>
    /// The table element [o, indices[t], e] that gathered element <paramref name="index"/> of [outer × count × inner] reads
    /// (a negative index counts from the end); −1 for an index outside [−rows, rows).
    /// </summary>
    private static long TableElement(long index, ArrayView<float> indices, int rows, int inner, int count)
    {
        long e = index % inner, rest = index / inner;
        long t = rest % count, o = rest / count;
        long r = (long)indices[t];
        if (r < 0) r += rows;
        return r < 0 || r >= rows ? -1 : (o * rows + r) * inner + e;
    }

    internal struct AttentionArgs
    {
        public int Heads, Queries, Keys, Depth, ValueDepth, Mask, KeepWhere;
        public float Scale, Fill;
        public long Q0, Q1, Q2, Q3, K0, K1, K2, K3, V0, V1, V2, V3, O0, O1, O2, O3, M0, M1, M2, M3;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionArgs>? attentionKernel;

    public void Attention(AttentionLayout s, DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor? mask, DeviceTensor o)
    {
        long rows = (long)s.Batch * s.Heads * s.Queries;
        if (rows == 0 || s.ValueDepth == 0) return;
        var args = new AttentionArgs
        {
            Heads = s.Heads, Queries = s.Queries, Keys = s.Keys, Depth = s.Depth, ValueDepth = s.ValueDepth,
            Mask = mask is null ? 0 : (int)s.Mask, KeepWhere = s.KeepWhere ? 1 : 0, Scale = s.Scale, Fill = s.Fill,
            Q0 = s.QueryStrides[0], Q1 = s.QueryStrides[1], Q2 = s.QueryStrides[2], Q3 = s.QueryStrides[3],
            K0 = s.KeyStrides[0], K1 = s.KeyStrides[1], K2 = s.KeyStrides[2], K3 = s.KeyStrides[3],
            V0 = s.ValueStrides[0], V1 = s.ValueStrides[1], V2 = s.ValueStrides[2], V3 = s.ValueStrides[3],
            O0 = s.OutputStrides[0], O1 = s.OutputStrides[1], O2 = s.OutputStrides[2], O3 = s.OutputStrides[3],
            M0 = s.MaskStrides[0], M1 = s.MaskStrides[1], M2 = s.MaskStrides[2], M3 = s.MaskStrides[3],
        };
        attentionKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionArgs>(AttentionKernel);
        attentionKernel(checked((int)rows), Of(q).View, Of(k).View, Of(v).View, (mask is null ? Placeholder : Of(mask)).View, Of(o).View, args);
    }

    /// <summary>
    /// One query row: a pass for the largest masked score, then one that accumulates exp(score − max)·V into the output
    /// row, which is divided by the sum at the end (the scores are computed twice instead of stored).
    /// </summary>
    private static void AttentionKernel(Index1D index, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> mask, ArrayView<float> o, AttentionArgs p)
    {
        long i = index % p.Queries, bh = index / p.Queries, h = bh % p.Heads, b = bh / p.Heads;
        long qBase = b * p.Q0 + h * p.Q1 + i * p.Q2, kBase = b * p.K0 + h * p.K1, vBase = b * p.V0 + h * p.V1;
        long oBase = b * p.O0 + h * p.O1 + i * p.O2, mBase = b * p.M0 + h * p.M1 + i * p.M2;
        float max = float.NegativeInfinity;
        for (int j = 0; j < p.Keys; j++) max = XMath.Max(max, Score(q, k, mask, p, qBase, kBase + j * p.K2, mBase + j * p.M3));
        for (int d = 0; d < p.ValueDepth; d++) o[oBase + d * p.O3] = 0f;
        float sum = 0f;
        for (int j = 0; j < p.Keys; j++)
        {
            float weight = XMath.Exp(Score(q, k, mask, p, qBase, kBase + j * p.K2, mBase + j * p.M3) - max);
            sum += weight;
            long vRow = vBase + j * p.V2;
            for (int d = 0; d < p.ValueDepth; d++) o[oBase + d * p.O3] += weight * v[vRow + d * p.V3];
        }
        float inverse = 1f / sum;
        for (int d = 0; d < p.ValueDepth; d++) o[oBase + d * p.O3] *= inverse;
    }

    private static float Score(ArrayView<float> q, ArrayView<float> k, ArrayView<float> mask, AttentionArgs p, long qBase, long kRow, long maskAt)
    {
        float dot = 0f;
        for (int d = 0; d < p.Depth; d++) dot += q[qBase + d * p.Q3] * k[kRow + d * p.K3];
        float score = dot * p.Scale;
        if (p.Mask == (int)AttentionMask.Select) return (mask[maskAt] != 0f) == (p.KeepWhere != 0) ? score : p.Fill;
        if (p.Mask == (int)AttentionMask.Add) return score + mask[maskAt];
        return score;
    }

    void ITensorDevice.AccumulateFactor(DeviceTensor x, int rows, int cols, bool appendOne, float alpha, float beta, DeviceTensor factor)
    {
        int dim = cols + (appendOne ? 1 : 0);
        if (dim == 0) return;
        if ((long)rows * cols > Of(x).Length || (long)dim * dim > Of(factor).Length)
            throw new FisherKernelsException(ErrorKind.Internal, $"AccumulateFactor: x [{rows} x {cols}] or the factor [{dim} x {dim}] is larger than its buffer");
        int tiles = Tiling.TileCount(dim);
        var args = new AccumulateArgs
        {
            Rows = rows, Cols = cols, Dim = dim, HasMask = 0, TileCount = tiles, Alpha = alpha, Beta = beta,
        };
        var config = new KernelConfig(new Index3D(tiles * (tiles + 1) / 2, 1, 1), new Index3D(Tiling.Threads, Tiling.Threads, 1));
        accumulateKernel.Value(config, Of(x).View, accumulateMask.Take(1), Of(factor).View, args);
    }
}

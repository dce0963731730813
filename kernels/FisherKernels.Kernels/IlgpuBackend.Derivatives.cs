using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// The reverse-pass and tangent-pass launches of <see cref="ITensorDevice"/> (a device plan's VJP and JVP): each adds into its target.
/// One thread per target element or row, so no two threads write one element, except <see cref="ScatterAddRows"/>
/// (token ids repeat), which adds atomically.
/// </summary>
public sealed partial class IlgpuBackend
{
    private Action<Index1D, ArrayView<float>, float>? fillKernel;

    public void Fill(DeviceTensor target, long length, float value)
    {
        if (length == 0) return;
        fillKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(FillKernel);
        fillKernel(checked((int)length), Of(target).View, value);
    }

    private static void FillKernel(Index1D i, ArrayView<float> target, float value) => target[i] = value;

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? unaryVjpKernel;

    public void UnaryVjp(DeviceUnary function, DeviceTensor x, DeviceTensor y, DeviceTensor gy, DeviceTensor gx, long length)
    {
        if (length == 0) return;
        unaryVjpKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(UnaryVjpKernel);
        unaryVjpKernel(checked((int)length), Of(x).View, Of(y).View, Of(gy).View, Of(gx).View, (int)function);
    }

    private static void UnaryVjpKernel(Index1D i, ArrayView<float> x, ArrayView<float> y, ArrayView<float> gy, ArrayView<float> gx, int function) =>
        gx[i] += gy[i] * UnarySlope((DeviceUnary)function, x[i], y[i]);

    /// <summary>f′(x) of <see cref="UnaryValue"/>'s functions, with y = f(x).</summary>
    internal static float UnarySlope(DeviceUnary function, float v, float y) => function switch
    {
        DeviceUnary.Identity => 1f,
        DeviceUnary.Neg => -1f,
        DeviceUnary.Sqrt => 0.5f / y,
        DeviceUnary.Reciprocal => -y * y,
        DeviceUnary.Exp => y,
        DeviceUnary.Log => 1f / v,
        DeviceUnary.Tanh => 1f - y * y,
        DeviceUnary.Erf => 1.1283791671f * XMath.Exp(-v * v),
        DeviceUnary.Sigmoid => y * (1f - y),
        DeviceUnary.Relu => v > 0f ? 1f : 0f,
        DeviceUnary.Cos => -XMath.Sin(v),
        DeviceUnary.Sin => XMath.Cos(v),
        DeviceUnary.Abs => v > 0f ? 1f : v < 0f ? -1f : 0f,
        DeviceUnary.GeluErf => UnaryValue(DeviceUnary.GeluErfSlope, v),
        DeviceUnary.GeluTanh => GeluTanhSlope(v),
        DeviceUnary.Silu => SiluSlope(v),
        _ => 0f,
    };

    private static float SiluSlope(float v)
    {
        float s = 1f / (1f + XMath.Exp(-v));
        return s * (1f + v * (1f - s));
    }

    /// <summary>The target's shape and its reduction (<see cref="AddReduced"/>), padded on the left to six dimensions.</summary>
    internal struct ReduceArgs
    {
        // Dimensions of the source; the target keeps dimension d when Keep_d = 1 (else it is summed over).
        public int D0, D1, D2, D3, D4, D5, K0, K1, K2, K3, K4, K5, Reduced;
        public float Scale;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ReduceArgs>? addReducedKernel;

    public void AddReduced(BroadcastLayout layout, DeviceTensor source, DeviceTensor target, float scale)
    {
        long length = ShapeUtil.Product(layout.Shape);
        if (length == 0) return;
        int pad = BroadcastLayout.MaxRank - layout.Shape.Length;
        int Dim(int d) => d < pad ? 1 : layout.Shape[d - pad];
        int Keep(int d) => Dim(d) == 1 || layout.Strides[0][d - pad] != 0 ? 1 : 0;
        long kept = 1;
        int reduced = 1;
        for (int d = pad; d < BroadcastLayout.MaxRank; d++)
            if (Keep(d) == 1) kept *= Dim(d); else reduced *= Dim(d);
        var args = new ReduceArgs
        {
            D0 = Dim(0), D1 = Dim(1), D2 = Dim(2), D3 = Dim(3), D4 = Dim(4), D5 = Dim(5),
            K0 = pad > 0 ? 1 : Keep(0), K1 = pad > 1 ? 1 : Keep(1), K2 = pad > 2 ? 1 : Keep(2), K3 = pad > 3 ? 1 : Keep(3), K4 = pad > 4 ? 1 : Keep(4), K5 = Keep(5),
            Reduced = reduced, Scale = scale,
        };
        addReducedKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ReduceArgs>(AddReducedKernel);
        addReducedKernel(checked((int)kept), Of(source).View, Of(target).View, args);
    }

    /// <summary>One target element: its coordinates along the kept dimensions, then a loop over the summed ones.</summary>
    private static void AddReducedKernel(Index1D index, ArrayView<float> source, ArrayView<float> target, ReduceArgs p)
    {
        // Coordinates of the target element (row-major over the kept dimensions, the summed ones of size 1).
        long rest = (int)index;
        long c5 = p.K5 != 0 ? rest % p.D5 : 0; if (p.K5 != 0) rest /= p.D5;
        long c4 = p.K4 != 0 ? rest % p.D4 : 0; if (p.K4 != 0) rest /= p.D4;
        long c3 = p.K3 != 0 ? rest % p.D3 : 0; if (p.K3 != 0) rest /= p.D3;
        long c2 = p.K2 != 0 ? rest % p.D2 : 0; if (p.K2 != 0) rest /= p.D2;
        long c1 = p.K1 != 0 ? rest % p.D1 : 0; if (p.K1 != 0) rest /= p.D1;
        long c0 = p.K0 != 0 ? rest : 0;
        float sum = 0f;
        for (int r = 0; r < p.Reduced; r++)
        {
            long q = r;
            long i5 = c5, i4 = c4, i3 = c3, i2 = c2, i1 = c1, i0 = c0;
            if (p.K5 == 0) { i5 = q % p.D5; q /= p.D5; }
            if (p.K4 == 0) { i4 = q % p.D4; q /= p.D4; }
            if (p.K3 == 0) { i3 = q % p.D3; q /= p.D3; }
            if (p.K2 == 0) { i2 = q % p.D2; q /= p.D2; }
            if (p.K1 == 0) { i1 = q % p.D1; q /= p.D1; }
            if (p.K0 == 0) i0 = q;
            sum += source[((((i0 * p.D1 + i1) * p.D2 + i2) * p.D3 + i3) * p.D4 + i4) * p.D5 + i5];
        }
        target[index] += p.Scale * sum;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>>? addGatheredKernel;

    public void AddGathered(DeviceTensor source, DeviceTensor offsets, DeviceTensor indices, DeviceTensor target, long count)
    {
        if (count == 0) return;
        addGatheredKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>>(AddGatheredKernel);
        addGatheredKernel(checked((int)count), Of(source).View, Of(offsets).Indices, Of(indices).Indices, Of(target).View);
    }

    private static void AddGatheredKernel(Index1D s, ArrayView<float> source, ArrayView<int> offsets, ArrayView<int> indices, ArrayView<float> target)
    {
        int end = offsets[s + 1];
        if (offsets[s] == end) return;
        float sum = 0f;
        for (int k = offsets[s]; k < end; k++) sum += source[indices[k]];
        target[s] += sum;
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? scatterRowsKernel;

    public void ScatterAddRows(DeviceTensor gy, DeviceTensor indices, DeviceTensor table, int outer, int rows, int inner, int count)
    {
        long length = (long)outer * count * inner;
        if (length == 0) return;
        scatterRowsKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(ScatterRowsKernel);
        scatterRowsKernel(checked((int)length), Of(gy).View, Of(indices).View, Of(table).View, rows, inner, count);
    }

    private static void ScatterRowsKernel(Index1D index, ArrayView<float> gy, ArrayView<float> indices, ArrayView<float> table, int rows, int inner, int count)
    {
        long at = TableElement(index, indices, rows, inner, count);
        if (at >= 0) Atomic.Add(ref table[at], gy[index]);
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, RowArgs>? normalizeDerivativeKernel;

    public void NormalizeVjp(DeviceTensor x, DeviceTensor scale, DeviceTensor gy, DeviceTensor gx, int rows, int cols, float epsilon, bool centered) =>
        NormalizeDerivative(x, scale, gy, gx, rows, cols, epsilon, centered, tangent: false);

    public void NormalizeJvp(DeviceTensor x, DeviceTensor scale, DeviceTensor tx, DeviceTensor ty, int rows, int cols, float epsilon, bool centered) =>
        NormalizeDerivative(x, scale, tx, ty, rows, cols, epsilon, centered, tangent: true);

    private void NormalizeDerivative(DeviceTensor x, DeviceTensor scale, DeviceTensor source, DeviceTensor target, int rows, int cols, float epsilon, bool centered, bool tangent)
    {
        if (rows == 0 || cols == 0) return;
        normalizeDerivativeKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, RowArgs>(NormalizeDerivativeKernel);
        var args = new RowArgs { Cols = cols, Centered = centered ? 1 : 0, Tangent = tangent ? 1 : 0, Epsilon = epsilon };
        normalizeDerivativeKernel(rows, Of(x).View, Of(scale).View, Of(source).View, Of(target).View, args);
    }

    /// <summary>
    /// One row: the statistics as <see cref="NormalizeKernel"/> computes them, then the projection that both derivatives
    /// share, P(v) = r·(v − mean(v) − x̂·mean(v·x̂)) (mean(v) only when centred): the VJP adds P(gy·scale) into gx, the JVP
    /// adds scale·P(tx) into ty.
    /// </summary>
    private static void NormalizeDerivativeKernel(Index1D row, ArrayView<float> x, ArrayView<float> scale, ArrayView<float> source, ArrayView<float> target, RowArgs p)
    {
        long start = (long)(int)row * p.Cols;
        var statistics = Statistics(x, start, p);
        float mean = statistics.Mean, inverse = statistics.Inverse;
        bool tangent = p.Tangent != 0;
        float meanV = 0f, meanVX = 0f;
        for (int j = 0; j < p.Cols; j++)
        {
            float v = tangent ? source[start + j] : source[start + j] * scale[j];
            meanV += v;
            meanVX += v * (x[start + j] - mean) * inverse;
        }
        meanV = p.Centered != 0 ? meanV / p.Cols : 0f;
        meanVX /= p.Cols;
        for (int j = 0; j < p.Cols; j++)
        {
            float xhat = (x[start + j] - mean) * inverse;
            float v = tangent ? source[start + j] : source[start + j] * scale[j];
            float projected = inverse * (v - meanV - xhat * meanVX);
            target[start + j] += tangent ? scale[j] * projected : projected;
        }
    }

    private Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? softmaxVjpKernel;

    public void SoftmaxVjp(DeviceTensor y, DeviceTensor gy, DeviceTensor gx, int rows, int cols)
    {
        if (rows == 0 || cols == 0) return;
        softmaxVjpKernel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(SoftmaxVjpKernel);
        softmaxVjpKernel(rows, Of(y).View, Of(gy).View, Of(gx).View, cols);
    }

    private static void SoftmaxVjpKernel(Index1D row, ArrayView<float> y, ArrayView<float> gy, ArrayView<float> gx, int cols)
    {
        long start = (long)(int)row * cols;
        float dot = 0f;
        for (int j = 0; j < cols; j++) dot += gy[start + j] * y[start + j];
        for (int j = 0; j < cols; j++) gx[start + j] += y[start + j] * (gy[start + j] - dot);
    }
}

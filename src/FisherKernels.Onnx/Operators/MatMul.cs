using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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

    public override bool WritesFreshGradients => true;

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
        if (Packable(a, b, d, out int rows, out int batches))
        {
            PackedForward(context, a.Data, b.Data, y.Data, batches, rows, d.K, d.N);
            return;
        }
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
        // A fresh gradient (nothing in it yet, OpContext.FreshGradients) is written; the backend path zeroes it first.
        bool freshA = (context.FreshGradients & 1) != 0, freshB = (context.FreshGradients & 2) != 0;
        if (Packable(a, b, d, out int rows, out int batches))
        {
            PackedVjp(context, a.Data, b.Data, gy.Data, inputGrads[0]?.Data, inputGrads[1]?.Data, batches, rows, d.K, d.N, freshA, freshB,
                      ConstantTransposed(context, b, inputGrads[0] is not null, batches, d.K, d.N));
            return;
        }
        if (freshA) inputGrads[0]?.Span.Clear();
        if (freshB) inputGrads[1]?.Span.Clear();
        if (inputGrads[0] is { } ga) Gemm(context.Backend, batch, gy.Data, batch, b.Data, batchB, ga.Data, batchA, d.M, d.K, d.N, false, true, 1);
        if (inputGrads[1] is { } gb) Gemm(context.Backend, batch, a.Data, batchA, gy.Data, batch, gb.Data, batchB, d.K, d.N, d.M, true, false, 1);
    }

    /// <summary>
    /// The packed VJP of a block of cotangents: per product, Bᵀ is packed (gA) and Aᵀ transposed (gB) once for the whole
    /// block, and each panel of Bᵀ multiplies every cotangent's gY while in cache: the block's products are one wide
    /// product in effect, with one fork-join. Each cotangent's result is the one-cotangent VJP's, bit for bit.
    /// </summary>
    public override unsafe bool VjpBlock(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                                         ReadOnlySpan<NdArray<float>?[]> outputGrads, ReadOnlySpan<NdArray<float>?[]> inputGrads)
    {
        var (a, b, _) = Operands(inputs, outputs);
        Dims.TryCreate(a.Shape, b.Shape, out var d);
        if (outputGrads[0][0] is null || !Packable(a, b, d, out int rows, out int batches)) return false;
        bool freshA = (context.FreshGradients & 1) != 0, freshB = (context.FreshGradients & 2) != 0;
        int count = outputGrads.Length;
        var handles = new System.Runtime.InteropServices.GCHandle[count * 3];
        try
        {
            nint[]? Pin(ReadOnlySpan<NdArray<float>?[]> grads, int index, int slot)
            {
                if (grads[0][index] is null) return null;
                var pointers = new nint[grads.Length];
                for (int c = 0; c < grads.Length; c++)
                {
                    handles[slot * count + c] = System.Runtime.InteropServices.GCHandle.Alloc(grads[c][index]!.Data, System.Runtime.InteropServices.GCHandleType.Pinned);
                    pointers[c] = handles[slot * count + c].AddrOfPinnedObject();
                }
                return pointers;
            }
            nint[] gy = Pin(outputGrads, 0, 0)!;
            nint[]? ga = Pin(inputGrads, 0, 1), gb = Pin(inputGrads, 1, 2);
            fixed (float* pa = a.Data, pb = b.Data)
                PackedVjp(context, pa, pb, gy, ga, gb, batches, rows, d.K, d.N, freshA, freshB, ConstantTransposed(context, b, ga is not null, batches, d.K, d.N));
        }
        finally
        {
            foreach (var handle in handles)
                if (handle.IsAllocated) handle.Free();
        }
        return true;
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        var (a, b, _) = Operands(inputs, outputs);
        Dims.TryCreate(a.Shape, b.Shape, out var d);
        if (Packable(a, b, d, out int rows, out int batches))
        {
            PackedJvp(context, a.Data, inputTangents[0]?.Data, b.Data, inputTangents[1]?.Data, ty.Data, batches, rows, d.K, d.N);
            return;
        }
        ReadOnlySpan<int> batch = d.Out[..d.Rank], batchA = d.A[..d.Rank], batchB = d.B[..d.Rank];
        float beta = 0;
        if (inputTangents[0] is { } ta) { Gemm(context.Backend, batch, ta.Data, batchA, b.Data, batchB, ty.Data, batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (inputTangents[1] is { } tb) { Gemm(context.Backend, batch, a.Data, batchA, tb.Data, batchB, ty.Data, batch, d.M, d.N, d.K, false, false, beta); beta = 1; }
        if (beta == 0) ty.Span.Clear();
    }

    /// <summary>
    /// Whether the products (forward and derivatives) go through the packed AVX-512 kernel (<see cref="PackedGemm"/>), with enough
    /// work per product to pay for packing an operand per call: B one [K×N] matrix (a weight) shared by
    /// every batch of A, whose batches stack into <paramref name="rows"/> (one product), or A and B with the
    /// same batches and no broadcasting (attention's products: one product of M rows per batch).
    /// </summary>
    private static bool Packable(NdArray<float> a, NdArray<float> b, in Dims d, out int rows, out int batches)
    {
        rows = a.Rank < 2 || d.K == 0 ? 0 : (int)(a.Length / d.K);
        batches = 1;
        if (!PackedGemm.IsSupported || a.Rank < 2) return false;
        if (b.Rank == 2) return 2L * rows * d.K * d.N >= 1 << 20;
        if (b.Rank < 3) return false;
        for (int i = 0; i < d.Rank; i++)
            if (d.A[i] != d.Out[i] || d.B[i] != d.Out[i]) return false;
        batches = rows / d.M;
        rows = d.M;
        return 2L * d.M * d.K * d.N >= 1 << 20;
    }

    /// <summary>
    /// Y = A·B by the packed kernel over <paramref name="batches"/> products (B per batch when there are several):
    /// each work item packs one column panel of one B and multiplies it at once, while the panel is in cache.
    /// B is packed on every call, never cached: in a derivative plan a weight is a variable and may change
    /// between runs (inference plans pack their constant weights once, in <see cref="PackedMatMul"/>).
    /// </summary>
    private static unsafe void PackedForward(OpContext context, float[] a, float[] b, float[] y, int batches, int rows, int k, int n)
    {
        const int w = PackedGemm.PanelWidth;
        int panels = PackedGemm.PanelCount(n);
        long panelLength = (long)k * w;
        fixed (float* pa = a, pb = b, py = y, packed = context.Scratch(batches * panels * panelLength))
        {
            nint sa = (nint)pa, sb = (nint)pb, sy = (nint)py, sp = (nint)packed;
            void Item(int item)
            {
                int i = item / panels, j = item % panels;
                float* panel = (float*)sp + (long)i * panels * panelLength;
                PackedGemm.Pack((float*)sb + (long)i * k * n + j * w, k, Math.Min(w, n - j * w), n, 1, panel + j * panelLength);
                PackedGemm.MultiplyPanels((float*)sa + (long)i * rows * k, k, rows, k, panel, n, null, (float*)sy + (long)i * rows * n, n, j, j + 1);
            }
            ParallelWork.For(batches * panels, context.Threads, Item);
        }
    }

    /// <summary>The packed VJP over <paramref name="batches"/> products of <paramref name="rows"/> rows (B per batch when there are several).</summary>
    private static unsafe void PackedVjp(OpContext context, float[] a, float[] b, float[] gy, float[]? ga, float[]? gb,
                                         int batches, int rows, int k, int n, bool freshA, bool freshB, float[]? packedBt)
    {
        fixed (float* pa = a, pb = b, pgy = gy, pga = ga, pgb = gb)
            PackedVjp(context, pa, pb, [(nint)pgy], pga == null ? null : [(nint)pga], pgb == null ? null : [(nint)pgb], batches, rows, k, n, freshA, freshB, packedBt);
    }

    /// <summary>
    /// Bᵀ packed as <see cref="PackedInputGradient"/> packs it, made once and kept, when B is an initializer
    /// (bit 1 of <see cref="OpContext.ConstantInputs"/>: its data stays the same from run to run, as the inference plans'
    /// packed weights assume) and gA is wanted; else null (packed on every call). A score runs one reverse pass a
    /// block of positions through the same weights: without this each pass transposes every weight again.
    /// </summary>
    private static float[]? ConstantTransposed(OpContext context, NdArray<float> b, bool wanted, int batches, int k, int n)
    {
        if (!wanted || batches != 1 || (context.ConstantInputs & 2) == 0) return null;
        lock (TransposedCache)
        {
            if (TransposedCache.TryGetValue(b.Data, out var packed) && packed.Length == TransposedLength(k, n)) return packed;
            packed = new float[TransposedLength(k, n)];
            unsafe
            {
                fixed (float* pb = b.Data, pp = packed)
                    for (int j = 0; j < PackedGemm.PanelCount(k); j++) PackTransposedPanel(pb, k, n, pp, j);
            }
            TransposedCache.AddOrUpdate(b.Data, packed);
            return packed;
        }
    }

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<float[], float[]> TransposedCache = [];

    private static long TransposedLength(int k, int n) => (long)PackedGemm.PanelCount(k) * n * PackedGemm.PanelWidth;

    /// <summary>Panel <paramref name="j"/> of Bᵀ ([N×K], B [K×N] row-major): the transpose of rows 32j.. of B, its columns past K zero.</summary>
    private static unsafe void PackTransposedPanel(float* b, int k, int n, float* packed, int j)
    {
        const int w = PackedGemm.PanelWidth;
        int columns = Math.Min(w, k - j * w);
        float* panel = packed + (long)j * n * w;
        Transpose(b + (long)j * w * n, columns, n, n, panel, w);
        if (columns < w)
            for (int r = 0; r < n; r++) new Span<float>(panel + (long)r * w + columns, w - columns).Clear();
    }

    /// <summary>
    /// The packed VJP of the cotangents whose gY, gA and gB start at <paramref name="gy"/>[c], <paramref name="ga"/>[c] and
    /// <paramref name="gb"/>[c] (pinned; gA or gB null: not wanted), over <paramref name="batches"/> products of
    /// <paramref name="rows"/> rows (B per batch when there are several).
    /// </summary>
    private static unsafe void PackedVjp(OpContext context, float* a, float* b, nint[] gy, nint[]? ga, nint[]? gb,
                                         int batches, int rows, int k, int n, bool freshA, bool freshB, float[]? packedBt)
    {
        static nint[] At(nint[] pointers, long offset) => Array.ConvertAll(pointers, p => (nint)((float*)p + offset));
        for (int i = 0; i < batches; i++)
        {
            long offsetA = (long)i * rows * k, offsetB = (long)i * k * n, offsetY = (long)i * rows * n;
            var gyi = batches == 1 ? gy : At(gy, offsetY);
            if (ga != null) PackedInputGradient(context, gyi, b + offsetB, batches == 1 ? ga : At(ga, offsetA), rows, k, n, accumulate: !freshA, packedBt);
            if (gb != null) PackedWeightGradient(context, a + offsetA, gyi, batches == 1 ? gb : At(gb, offsetB), rows, k, n, accumulate: !freshB);
        }
    }

    /// <summary>
    /// The packed JVP over <paramref name="batches"/> products (B per batch when there are several): per batch,
    /// tY = tA·B + A·tB in one kernel pass (the second product's tiles start from the first's, tY is written once);
    /// a missing tangent drops its product. One work item per batch and column panel, so the heads of attention
    /// share one fork-join. B is a constant weight's packing (bit 1 of <see cref="OpContext.ConstantInputs"/>,
    /// shared with the inference plans' PackedMatMul) or its panel is packed by the item that multiplies it, as
    /// tB's always is (still in cache for the product).
    /// </summary>
    private static unsafe void PackedJvp(OpContext context, float[] a, float[]? ta, float[] b, float[]? tb, float[] ty, int batches, int rows, int k, int n)
    {
        if (ta is null && tb is null) { ty.AsSpan().Clear(); return; }
        const int w = PackedGemm.PanelWidth;
        int panels = PackedGemm.PanelCount(n);
        float[]? constantB = ta is not null && batches == 1 && (context.ConstantInputs & 2) != 0 ? PackedWeights.For(b, k, n).Panels : null;
        bool packB = ta is not null && constantB is null;
        long panel = (long)k * w, slot = (packB ? panel : 0) + (tb is null ? 0 : panel);
        fixed (float* pa = a, pta = ta, pb = b, ptb = tb, pty = ty, pconstant = constantB, scratch = context.Scratch(batches * panels * slot))
        {
            nint na = (nint)pa, nta = (nint)pta, nb = (nint)pb, ntb = (nint)ptb, nty = (nint)pty, nconstant = (nint)pconstant, nscratch = (nint)scratch;
            void Item(int item)
            {
                int i = item / panels, j = item % panels, columns = Math.Min(w, n - j * w);
                float* own = (float*)nscratch + item * slot;
                float* ai = (float*)na + (long)i * rows * k, tai = nta == 0 ? null : (float*)nta + (long)i * rows * k;
                // MultiplyPanels and SecondProduct address panel j from the start of all panels.
                float* bPanels = (float*)nconstant;
                if (packB)
                {
                    PackedGemm.Pack((float*)nb + (long)i * k * n + j * w, k, columns, n, 1, own);
                    bPanels = own - j * panel;
                    own += panel;
                }
                var tangentProduct = default(PackedGemm.SecondProduct);
                if (ntb != 0)
                {
                    PackedGemm.Pack((float*)ntb + (long)i * k * n + j * w, k, columns, n, 1, own);
                    tangentProduct = new PackedGemm.SecondProduct(ai, k, k, own - j * panel);
                }
                PackedGemm.MultiplyPanels(tai, k, rows, tai == null ? 0 : k, bPanels, n, null, (float*)nty + (long)i * rows * n, n, j, j + 1, second: tangentProduct);
            }
            ParallelWork.For(batches * panels, context.Threads, Item);
        }
    }

    /// <summary>
    /// gA [rows×K] (+)= gY [rows×N]·Bᵀ for each cotangent's gY and gA, each panel of Bᵀ packed straight from B by 8×8
    /// transposes on the thread that multiplies it, once for every cotangent.
    /// </summary>
    private static unsafe void PackedInputGradient(OpContext context, nint[] gy, float* b, nint[] ga, int rows, int k, int n, bool accumulate, float[]? packedBt)
    {
        if (packedBt is not null)
        {
            fixed (float* packed = packedBt) MultiplyPacked(context, gy, n, rows, packed, k, ga, accumulate, static (_, _) => { });
            return;
        }
        // B' = Bᵀ is [N×K]: its panel j (columns 32j.. of Bᵀ) is the transpose of rows 32j.. of B.
        var scratch = context.Scratch(TransposedLength(k, n));
        fixed (float* packed = scratch)
        {
            nint pb = (nint)b, pp = (nint)packed;
            MultiplyPacked(context, gy, n, rows, packed, k, ga, accumulate, (j, c) => { if (c == 0) PackTransposedPanel((float*)pb, k, n, (float*)pp, j); });
        }
    }

    /// <summary>
    /// gB [K×N] (+)= Aᵀ·gY over the stacked rows for each cotangent's gY and gB: Aᵀ by 8×8 transposes (row blocks on the
    /// threads, once for every cotangent), each panel of gY packed by the thread that multiplies it.
    /// </summary>
    private static unsafe void PackedWeightGradient(OpContext context, float* a, nint[] gy, nint[] gb, int rows, int k, int n, bool accumulate)
    {
        const int w = PackedGemm.PanelWidth, block = 64;
        long packedLength = (long)PackedGemm.PanelCount(n) * rows * w;
        var scratch = context.Scratch(packedLength + (long)k * rows);
        fixed (float* s = scratch)
        {
            nint pa = (nint)a, pp = (nint)s, pt = (nint)(s + packedLength);
            void TransposeRows(int i)
            {
                int first = i * block;
                Transpose((float*)pa + (long)first * k, Math.Min(block, rows - first), k, k, (float*)pt + first, rows);
            }
            ParallelWork.For((rows + block - 1) / block, (long)rows * k >= 1 << 15 ? context.Threads : 1, TransposeRows);
            void Pack(int j, int c) => PackedGemm.Pack((float*)gy[c] + j * w, rows, Math.Min(w, n - j * w), n, 1, (float*)pp + (long)j * rows * w);
            MultiplyPacked(context, Array.ConvertAll(gb, _ => pt), rows, k, s, n, gb, accumulate, Pack);
        }
    }

    /// <summary>
    /// C[c] [m×n] = A[c]·B[c] for each cotangent c (A [m×depth] row-major, B packed with depth rows per panel), panels
    /// split over the threads; <paramref name="pack"/>(j, c) packs panel j of B[c] (or nothing, when B[c] is B[0]) on the
    /// thread that multiplies it (while in cache), the cotangents one after the other in one work item;
    /// with <paramref name="accumulate"/>, C += A·B by way of rows of a per-panel tile.
    /// </summary>
    /// <remarks>
    /// Derivatives are often zero in whole blocks: a causal mask's upper triangle (in dS, P and their
    /// transposes), and every row after the scored position in a score's reverse pass. Each 8-row tile of A
    /// and each panel of B gets the depth range outside which it is exactly zero, and a tile·panel product
    /// runs over the intersection only (an empty one writes zeros): the terms left out are 0·b, so the result
    /// is the same for finite operands, on any thread count.
    /// </remarks>
    private static unsafe void MultiplyPacked(OpContext context, nint[] a, int depth, int m, float* packed, int n, nint[] c, bool accumulate, Action<int, int> pack)
    {
        int panels = PackedGemm.PanelCount(n), tiles = (m + TileRows - 1) / TileRows, count = a.Length;
        // Per cotangent and tile: the depth range [lo, hi) outside which its rows are zero, and its rows [first, last) that
        // are not zero throughout (an empty depth range: none).
        var ranges = System.Buffers.ArrayPool<int>.Shared.Rent(RangeInts * tiles * count);
        try
        {
            for (int ct = 0; ct < tiles * count; ct++)
            {
                int t = ct % tiles, lo = depth, hi = 0, firstRow = -1, lastRow = -1;
                for (int r = t * TileRows; r < Math.Min(m, (t + 1) * TileRows); r++)
                {
                    float* row = (float*)a[ct / tiles] + (long)r * depth;
                    int first = Nonzero.First(row, depth);
                    if (first < 0) continue;
                    lo = Math.Min(lo, first);
                    hi = Math.Max(hi, Nonzero.Last(row, depth) + 1);
                    if (firstRow < 0) firstRow = r;
                    lastRow = r + 1;
                }
                var range = ranges.AsSpan(RangeInts * ct, RangeInts);
                range[0] = lo; range[1] = hi; range[2] = firstRow; range[3] = lastRow;
            }
            if (!accumulate)
                // Rows of A that are zero throughout give rows of C that are zero throughout: cleared here whole, a run of
                // them at once (the panels then multiply only the rows between, and clear nothing of them).
                for (int k = 0; k < count; k++)
                {
                    int cleared = 0;
                    void ClearTo(int row)
                    {
                        if (row > cleared) new Span<float>((float*)c[k] + (long)cleared * n, (row - cleared) * n).Clear();
                    }
                    for (int t = 0; t < tiles; t++)
                    {
                        var range = ranges.AsSpan(RangeInts * (k * tiles + t), RangeInts);
                        if (range[0] >= range[1]) continue;
                        ClearTo(range[2]);
                        cleared = range[3];
                    }
                    ClearTo(m);
                }
            nint pp = (nint)packed;
            void Panel(int j)
            {
                for (int k = 0; k < count; k++)
                {
                    pack(j, k);
                    MultiplyPanel((float*)a[k], depth, m, (float*)pp, n, (float*)c[k], accumulate, j, ranges, RangeInts * k * tiles, tiles);
                }
            }
            ParallelWork.For(panels, context.Threads, Panel);
        }
        finally { System.Buffers.ArrayPool<int>.Shared.Return(ranges); }
    }

    private const int TileRows = 8, RangeInts = 4;

    /// <summary>
    /// Panel <paramref name="j"/> of <see cref="MultiplyPacked"/>: runs of tiles with one depth range each go to the kernel
    /// together, only their rows that are not zero throughout (each row's sums are the same in any run: one chain of
    /// multiply-adds over the range).
    /// </summary>
    private static unsafe void MultiplyPanel(float* a, int depth, int m, float* packed, int n, float* c, bool accumulate, int j, int[] ranges, int rangeOffset, int tiles)
    {
        const int w = PackedGemm.PanelWidth;
        int columns = Math.Min(w, n - j * w);
        float* panel = packed + (long)j * depth * w;
        int first = Nonzero.First(panel, depth * w);
        int panelLo = first < 0 ? depth : first / w, panelHi = first < 0 ? 0 : Nonzero.Last(panel, depth * w) / w + 1;
        (int Lo, int Hi) Range(int t)
        {
            int at = rangeOffset + RangeInts * t;
            // (−1, −1): the tile of A is zero throughout, its rows of C already cleared by MultiplyPacked (or left when adding).
            if (ranges[at] >= ranges[at + 1]) return (-1, -1);
            int lo = Math.Max(ranges[at], panelLo), hi = Math.Min(ranges[at + 1], panelHi);
            return lo < hi ? (lo, hi) : (0, 0);
        }
        int FirstRow(int t) => ranges[rangeOffset + RangeInts * t + 2];
        int EndRow(int t) => ranges[rangeOffset + RangeInts * t + 3];
        float[]? block = accumulate ? System.Buffers.ArrayPool<float>.Shared.Rent(m * w) : null;
        try
        {
            for (int t = 0; t < tiles;)
            {
                var (lo, hi) = Range(t);
                int end = t + 1;
                // A run continues while its rows do: the tile before ends at its last row, the next starts at its first.
                while (end < tiles && Range(end) == (lo, hi) && (lo < 0 || EndRow(end - 1) == end * TileRows && FirstRow(end) == end * TileRows)) end++;
                int start = t;
                t = end;
                if (lo < 0) continue;
                int row0 = FirstRow(start), rows = EndRow(end - 1) - row0;
                float* target = c + (long)row0 * n + j * w;
                if (lo == hi)
                {
                    // Every term is 0·b: C's rows are zero (or unchanged when adding).
                    if (!accumulate)
                        for (int r = 0; r < rows; r++) new Span<float>(target + (long)r * n, columns).Clear();
                    continue;
                }
                float* tileA = a + (long)row0 * depth + lo;
                if (!accumulate)
                {
                    PackedGemm.MultiplyPanels(tileA, depth, rows, hi - lo, packed + (long)lo * w, n, null, c + (long)row0 * n, n, j, j + 1, packedDepth: depth);
                    continue;
                }
                // The kernel overwrites: compute the panel's columns into a private block, then add.
                fixed (float* pblock = block)
                {
                    PackedGemm.MultiplyPanels(tileA, depth, rows, hi - lo, packed + ((long)j * depth + lo) * w, columns, null, pblock, w, 0, 1, packedDepth: depth);
                    for (int r = 0; r < rows; r++)
                    {
                        var sum = new Span<float>(target + (long)r * n, columns);
                        System.Numerics.Tensors.TensorPrimitives.Add(sum, new ReadOnlySpan<float>(pblock + (long)r * w, columns), sum);
                    }
                }
            }
        }
        finally { if (block is not null) System.Buffers.ArrayPool<float>.Shared.Return(block); }
    }

    /// <summary>dst[c·dstStride + r] = src[r·srcStride + c] for r &lt; rows, c &lt; cols: 8×8 blocks in AVX registers, scalar edges.</summary>
    internal static unsafe void Transpose(float* src, int rows, int cols, long srcStride, float* dst, long dstStride)
    {
        int r = 0;
        if (System.Runtime.Intrinsics.X86.Avx.IsSupported)
            for (; r + 8 <= rows; r += 8)
            {
                int c = 0;
                for (; c + 8 <= cols; c += 8) Transpose8x8(src + r * srcStride + c, srcStride, dst + c * dstStride + r, dstStride);
                for (; c < cols; c++)
                    for (int i = r; i < r + 8; i++) dst[c * dstStride + i] = src[i * srcStride + c];
            }
        for (; r < rows; r++)
            for (int c = 0; c < cols; c++) dst[c * dstStride + r] = src[r * srcStride + c];
    }

    private static unsafe void Transpose8x8(float* src, long srcStride, float* dst, long dstStride)
    {
        var r0 = Avx.LoadVector256(src); var r1 = Avx.LoadVector256(src + srcStride);
        var r2 = Avx.LoadVector256(src + 2 * srcStride); var r3 = Avx.LoadVector256(src + 3 * srcStride);
        var r4 = Avx.LoadVector256(src + 4 * srcStride); var r5 = Avx.LoadVector256(src + 5 * srcStride);
        var r6 = Avx.LoadVector256(src + 6 * srcStride); var r7 = Avx.LoadVector256(src + 7 * srcStride);
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var s0 = Avx.Shuffle(t0, t2, 0x44); var s1 = Avx.Shuffle(t0, t2, 0xEE);
        var s2 = Avx.Shuffle(t1, t3, 0x44); var s3 = Avx.Shuffle(t1, t3, 0xEE);
        var s4 = Avx.Shuffle(t4, t6, 0x44); var s5 = Avx.Shuffle(t4, t6, 0xEE);
        var s6 = Avx.Shuffle(t5, t7, 0x44); var s7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(s0, s4, 0x20));
        Avx.Store(dst + dstStride, Avx.Permute2x128(s1, s5, 0x20));
        Avx.Store(dst + 2 * dstStride, Avx.Permute2x128(s2, s6, 0x20));
        Avx.Store(dst + 3 * dstStride, Avx.Permute2x128(s3, s7, 0x20));
        Avx.Store(dst + 4 * dstStride, Avx.Permute2x128(s0, s4, 0x31));
        Avx.Store(dst + 5 * dstStride, Avx.Permute2x128(s1, s5, 0x31));
        Avx.Store(dst + 6 * dstStride, Avx.Permute2x128(s2, s6, 0x31));
        Avx.Store(dst + 7 * dstStride, Avx.Permute2x128(s3, s7, 0x31));
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

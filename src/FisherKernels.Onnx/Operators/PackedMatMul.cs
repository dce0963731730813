using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// A constant right-hand matrix B [K×N] stored for <see cref="PackedGemm"/>: column panels of
/// <see cref="PackedGemm.PanelWidth"/>, panel j holding B[k, 32j..32j+32) for k = 0..K-1 contiguously
/// (the last panel zero-padded), so the kernel streams it linearly. Packed once per weight: plans for
/// other input shapes share it.
/// </summary>
internal sealed class PackedWeights
{
    private static readonly ConditionalWeakTable<float[], PackedWeights> Cache = [];

    private PackedWeights(float[] panels, int k, int n) => (Panels, K, N) = (panels, k, n);

    public float[] Panels { get; }
    public int K { get; }
    public int N { get; }
    public int PanelCount => PackedGemm.PanelCount(N);

    /// <summary>The packed form of the row-major [<paramref name="k"/>×<paramref name="n"/>] matrix in <paramref name="b"/> (made on first use).</summary>
    public static PackedWeights For(float[] b, int k, int n)
    {
        lock (Cache)
        {
            if (Cache.TryGetValue(b, out var packed) && packed.K == k && packed.N == n) return packed;
            packed = Pack(b, k, n);
            Cache.AddOrUpdate(b, packed);
            return packed;
        }
    }

    private static unsafe PackedWeights Pack(float[] b, int k, int n)
    {
        var panels = new float[checked((long)PackedGemm.PanelCount(n) * k * PackedGemm.PanelWidth)];
        fixed (float* pb = b, pp = panels) PackedGemm.Pack(pb, k, n, n, 1, pp);
        return new PackedWeights(panels, k, n);
    }
}

/// <summary>
/// C [M×N] = A [M×K]·B (+ bias) for a packed constant B, with AVX-512 register tiles of 8 rows × 32
/// columns (AVX2: 6 rows × 16 columns, two a panel): the weights are not repacked per call (as a BLAS sgemm must), the bias costs nothing (it
/// seeds the accumulators), and column panels are split across the threads.
/// </summary>
/// <summary>A function applied to the GEMM's result in place (fused GELU of a feed-forward layer).</summary>
internal enum Activation { None, GeluTanh, GeluErf }

internal static unsafe class PackedGemm
{
    public const int PanelWidth = 32;

    /// <summary>AVX-512: 8×32 tiles in 16 zmm accumulators. Otherwise (AVX2) each panel is two halves of 6×16 tiles in 12 ymm.</summary>
    private static readonly bool Wide = Vector512.IsHardwareAccelerated;

    private static readonly int TileRows = Wide ? 8 : 6;

    /// <summary>AVX2 depth block: 256 rows of a half panel are 256 cache lines, half the L1 of a Zen 3 core (128 measured the same).</summary>
    private const int DepthAvx2 = 256;

    /// <summary>Whether this machine runs the kernel (AVX-512, or AVX2 with FMA); otherwise callers use the backend's GEMM.</summary>
    public static bool IsSupported => Wide || (System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported);

    /// <summary>
    /// C = activation(A·B + bias) with A [m×K] row-major in <paramref name="a"/>, C [m×N] in <paramref name="c"/>,
    /// <paramref name="bias"/> null or padded to the panels (PanelCount·32, zeros past N).
    /// </summary>
    public static void Multiply(float[] a, int m, PackedWeights b, float[]? bias, Activation activation, float[] c, int threads)
    {
        int panels = b.PanelCount;
        long flops = 2L * m * b.N * b.K;
        // Below ~1 MFLOP a second thread costs more to wake than it saves. One panel per work item: on a
        // busy machine a thread that starts late takes fewer panels instead of holding the others up.
        if (threads <= 1 || flops < 1 << 20 || panels == 1) { Panels(a, m, b, bias, activation, c, 0, panels); return; }
        ParallelWork.For(panels, threads, j => Panels(a, m, b, bias, activation, c, j, j + 1));
    }

    private static void Panels(float[] a, int m, PackedWeights b, float[]? bias, Activation activation, float[] c, int from, int to)
    {
        fixed (float* pa = a, pb = b.Panels, pc = c, pbias = bias)
            MultiplyPanels(pa, b.K, m, b.K, pb, b.N, pbias, pc, b.N, from, to);
        if (activation == Activation.None) return;
        // While the panels' columns are still in cache.
        int start = from * PanelWidth, width = Math.Min(to * PanelWidth, b.N) - start;
        for (int row = 0; row < m; row++)
        {
            var y = c.AsSpan(row * b.N + start, width);
            if (activation == Activation.GeluTanh) FastMath.GeluTanh(y, y); else FastMath.GeluErf(y, y);
        }
    }

    public static int PanelCount(int n) => (n + PanelWidth - 1) / PanelWidth;

    /// <summary>
    /// Packs B [k×n], element (r, c) at b[r·rowStride + c·columnStride], into <paramref name="panels"/>
    /// (PanelCount(n)·k·32 floats, the last panel zero-padded). With <paramref name="panelRows"/> &gt; k the
    /// panels are that deep and B fills k rows of each (stacked operands pack one after the other).
    /// </summary>
    public static void Pack(float* b, int k, int n, long rowStride, long columnStride, float* panels, int panelRows = 0)
    {
        if (panelRows < k) panelRows = k;
        for (int j = 0; j < PanelCount(n); j++)
        {
            int columns = Math.Min(PanelWidth, n - j * PanelWidth);
            if (rowStride == 1 && columnStride != 1)
            {
                // B is the transpose of a row-major matrix (Kᵀ in attention): each panel is a block transpose.
                float* panel = panels + (long)j * panelRows * PanelWidth;
                MatMul.Transpose(b + (long)j * PanelWidth * columnStride, columns, k, columnStride, panel, PanelWidth);
                for (int row = 0; row < k && columns < PanelWidth; row++) new Span<float>(panel + (long)row * PanelWidth + columns, PanelWidth - columns).Clear();
                continue;
            }
            if (columnStride == 1 && columns == PanelWidth)
            {
                // A whole panel row is two vectors (a copy call per row costs as much as the copy).
                float* source = b + (long)j * PanelWidth, target = panels + (long)j * panelRows * PanelWidth;
                for (int row = 0; row < k; row++, source += rowStride, target += PanelWidth)
                {
                    Vector256.Store(Vector256.Load(source), target);
                    Vector256.Store(Vector256.Load(source + 8), target + 8);
                    Vector256.Store(Vector256.Load(source + 16), target + 16);
                    Vector256.Store(Vector256.Load(source + 24), target + 24);
                }
                continue;
            }
            for (int row = 0; row < k; row++)
            {
                float* source = b + row * rowStride + (long)j * PanelWidth * columnStride;
                float* target = panels + ((long)j * panelRows + row) * PanelWidth;
                if (columnStride == 1) new ReadOnlySpan<float>(source, columns).CopyTo(new Span<float>(target, columns));
                else for (int c = 0; c < columns; c++) target[c] = source[c * columnStride];
                new Span<float>(target + columns, PanelWidth - columns).Clear();
            }
        }
    }

    /// <summary>
    /// C = A·B + bias over the panels [from, to): A [m×k] with row stride <paramref name="lda"/>, B packed
    /// (n columns), C [m×n] with row stride <paramref name="ldc"/>, bias null or padded to the panels.
    /// <paramref name="packedDepth"/> (0: k) is the rows each panel was packed with, when only the first k are used.
    /// A <paramref name="second"/> product (k2 &gt; 0) adds A2·B2 in the same registers: C is written once.
    /// </summary>
    public static void MultiplyPanels(float* a, int lda, int m, int k, float* panels, int n, float* bias, float* c, int ldc, int from, int to,
                                      int packedDepth = 0, SecondProduct second = default)
    {
        int tileRows = TileRows;
        float* tile = stackalloc float[8 * PanelWidth];
        long panelLength = (long)(packedDepth == 0 ? k : packedDepth) * PanelWidth;
        for (int j = from; j < to; j++)
        {
            var first = new SecondProduct(a, lda, k, panels + j * panelLength);
            var other = second.Panel(j);
            float* panelBias = bias == null ? null : bias + j * PanelWidth;
            int columns = Math.Min(PanelWidth, n - j * PanelWidth);
            // AVX2: whole tiles by depth blocks (below); the rest, and every tile on AVX-512, one tile at a time here.
            int blocked = !Wide && columns == PanelWidth ? m / tileRows * tileRows : 0;
            if (blocked > 0)
            {
                float* target = c + j * PanelWidth;
                // The next panel, fetched while these tiles run (the weights usually come from L3 or memory); with
                // several threads another may take it, and then it is at least in the shared L3.
                float* nextPanel = j + 1 < PanelCount(n) ? first.Panels + panelLength : null;
                if (k > 0 || other.K == 0) DepthBlockedTiles(a, lda, k, first.Panels, panelBias, target, ldc, blocked, accumulate: false, other.K > 0 ? null : nextPanel);
                if (other.K > 0) DepthBlockedTiles(other.A, other.Lda, other.K, other.Panels, k > 0 ? null : panelBias, target, ldc, blocked, accumulate: k > 0, nextPanel);
            }
            for (int i = blocked; i < m; i += tileRows)
            {
                int rows = Math.Min(tileRows, m - i);
                float* target = c + (long)i * ldc + j * PanelWidth;
                if (rows == tileRows && columns == PanelWidth)
                {
                    // The second product's tile starts from the first's, still in L1: each runs the one-product loop.
                    if (k > 0 || other.K == 0) Tile(a + (long)i * lda, lda, k, first.Panels, panelBias, target, ldc, accumulate: false);
                    if (other.K > 0) Tile(other.A + (long)i * other.Lda, other.Lda, other.K, other.Panels, k > 0 ? null : panelBias, target, ldc, accumulate: k > 0);
                    continue;
                }
                // Edge tile: compute whole rows into the scratch tile, copy the valid part.
                int done = 0;
                if (!Wide)
                    for (; done + 1 < rows; done += 2)
                        TwoRows256(first.Rows(i + done), other.Rows(i + done), panelBias, tile + done * PanelWidth);
                for (int r = done; r < rows; r++)
                    if (Wide) Row(first.Rows(i + r), other.Rows(i + r), panelBias, tile + r * PanelWidth);
                    else Row256(first.Rows(i + r), other.Rows(i + r), panelBias, tile + r * PanelWidth);
                for (int r = 0; r < rows; r++) new ReadOnlySpan<float>(tile + r * PanelWidth, columns).CopyTo(new Span<float>(target + (long)r * ldc, columns));
            }
        }
    }

    /// <summary>
    /// A product A [m×K]·B added to another in one kernel pass: A with row stride <see cref="Lda"/>, B packed K rows
    /// deep (for <see cref="MultiplyPanels"/>, all panels from panel 0; inside the kernel, one panel).
    /// </summary>
    public readonly struct SecondProduct(float* a, int lda, int k, float* panels)
    {
        public readonly float* A = a, Panels = panels;
        public readonly int Lda = lda, K = k;

        public SecondProduct Rows(int row) => new(A + (long)row * Lda, Lda, K, Panels);

        public SecondProduct Panel(int j) => new(A, Lda, K, Panels + (long)j * K * PanelWidth);
    }

    /// <summary>
    /// AVX2: the tiles of <paramref name="rows"/> rows (a multiple of 6) of one panel, the panel's depth in blocks of
    /// <see cref="DepthAvx2"/> that stay in L1 across the row tiles (a deep panel would stream from L2 for every tile). C
    /// carries the sums from block to block exactly: the accumulators are float32 either way, so the bits are those of
    /// one pass. While a block runs, the next one (or <paramref name="next"/>, after the last) is prefetched a few cache
    /// lines a tile: the weights stream from L3 or memory, and the first tiles of a block would otherwise wait for them
    /// (measured on Zen 3, 128 × 256 × 1024 with cold weights: 91 → 96 GFLOP/s).
    /// </summary>
    private static void DepthBlockedTiles(float* a, int lda, int k, float* b, float* bias, float* c, int ldc, int rows, bool accumulate, float* next)
    {
        int tiles = rows / 6;
        for (int k0 = 0; k0 == 0 || k0 < k; k0 += DepthAvx2)
        {
            int depth = Math.Min(DepthAvx2, k - k0);
            float* ahead = k0 + depth < k ? b + (long)(k0 + depth) * PanelWidth : next;
            int lines = ahead == null ? 0 : Math.Min(DepthAvx2, k0 + depth < k ? k - k0 - depth : DepthAvx2) * PanelWidth / 16;
            int perTile = (lines + tiles - 1) / tiles;
            for (int i = 0, t = 0; i < rows; i += 6, t++)
            {
                for (int line = t * perTile, end = Math.Min(lines, line + perTile); line < end; line++)
                    System.Runtime.Intrinsics.X86.Sse.Prefetch0(ahead + line * 16);
                Tile(a + (long)i * lda + k0, lda, depth, b + (long)k0 * PanelWidth, k0 == 0 ? bias : null, c + (long)i * ldc, ldc, accumulate || k0 > 0);
            }
        }
    }

    private static void Tile(float* a, int lda, int k, float* b, float* bias, float* c, int ldc, bool accumulate)
    {
        if (Wide) { Tile8(a, lda, k, b, bias, c, ldc, accumulate); return; }
        Tile6x16(a, lda, k, b, bias, c, ldc, accumulate);
        Tile6x16(a, lda, k, b + 16, bias == null ? null : bias + 16, c + 16, ldc, accumulate);
    }

    /// <summary>
    /// The AVX2 tile: 6 rows × 16 columns (half a panel), 12 ymm accumulators, two B vectors per k and one broadcast
    /// of A per row (15 of the 16 registers); otherwise as <see cref="Tile8"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile6x16(float* a, int lda, int k, float* b, float* bias, float* c, int ldc, bool accumulate)
    {
        Vector256<float> s0 = bias == null ? default : Vector256.Load(bias), s1 = bias == null ? default : Vector256.Load(bias + 8);
        Vector256<float> c00 = s0, c01 = s1, c10 = s0, c11 = s1, c20 = s0, c21 = s1;
        Vector256<float> c30 = s0, c31 = s1, c40 = s0, c41 = s1, c50 = s0, c51 = s1;
        if (accumulate)
        {
            float* r = c;
            c00 = Vector256.Load(r); c01 = Vector256.Load(r + 8); r += ldc;
            c10 = Vector256.Load(r); c11 = Vector256.Load(r + 8); r += ldc;
            c20 = Vector256.Load(r); c21 = Vector256.Load(r + 8); r += ldc;
            c30 = Vector256.Load(r); c31 = Vector256.Load(r + 8); r += ldc;
            c40 = Vector256.Load(r); c41 = Vector256.Load(r + 8); r += ldc;
            c50 = Vector256.Load(r); c51 = Vector256.Load(r + 8);
        }
        float* a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda;
        for (int p = 0; p < k; p++, b += PanelWidth)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var x = Vector256.Create(a[p]); c00 = Vector256.FusedMultiplyAdd(x, b0, c00); c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(a1[p]); c10 = Vector256.FusedMultiplyAdd(x, b0, c10); c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(a2[p]); c20 = Vector256.FusedMultiplyAdd(x, b0, c20); c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(a3[p]); c30 = Vector256.FusedMultiplyAdd(x, b0, c30); c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(a4[p]); c40 = Vector256.FusedMultiplyAdd(x, b0, c40); c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(a5[p]); c50 = Vector256.FusedMultiplyAdd(x, b0, c50); c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
        }
        c00.Store(c); c01.Store(c + 8); c += ldc;
        c10.Store(c); c11.Store(c + 8); c += ldc;
        c20.Store(c); c21.Store(c + 8); c += ldc;
        c30.Store(c); c31.Store(c + 8); c += ldc;
        c40.Store(c); c41.Store(c + 8); c += ldc;
        c50.Store(c); c51.Store(c + 8);
    }

    /// <summary>
    /// One 8×32 tile of a single product: 16 accumulators, two B vectors per k, one broadcast of A per row; with
    /// <paramref name="accumulate"/> they start from C (a second product added). One loop for every product: its
    /// constant panel stride and few live pointers keep it in registers (a two-product loop ran 15–30% slower, measured).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile8(float* a, int lda, int k, float* b, float* bias, float* c, int ldc, bool accumulate = false)
    {
        Vector512<float> s0 = bias == null ? default : Vector512.Load(bias), s1 = bias == null ? default : Vector512.Load(bias + 16);
        Vector512<float> c00 = s0, c01 = s1, c10 = s0, c11 = s1, c20 = s0, c21 = s1, c30 = s0, c31 = s1;
        Vector512<float> c40 = s0, c41 = s1, c50 = s0, c51 = s1, c60 = s0, c61 = s1, c70 = s0, c71 = s1;
        if (accumulate)
        {
            float* r = c;
            c00 = Vector512.Load(r); c01 = Vector512.Load(r + 16); r += ldc;
            c10 = Vector512.Load(r); c11 = Vector512.Load(r + 16); r += ldc;
            c20 = Vector512.Load(r); c21 = Vector512.Load(r + 16); r += ldc;
            c30 = Vector512.Load(r); c31 = Vector512.Load(r + 16); r += ldc;
            c40 = Vector512.Load(r); c41 = Vector512.Load(r + 16); r += ldc;
            c50 = Vector512.Load(r); c51 = Vector512.Load(r + 16); r += ldc;
            c60 = Vector512.Load(r); c61 = Vector512.Load(r + 16); r += ldc;
            c70 = Vector512.Load(r); c71 = Vector512.Load(r + 16);
        }
        float* a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda, a6 = a5 + lda, a7 = a6 + lda;
        for (int p = 0; p < k; p++, b += PanelWidth)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[p]); c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a1[p]); c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a2[p]); c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a3[p]); c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a4[p]); c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a5[p]); c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a6[p]); c60 = Vector512.FusedMultiplyAdd(x, b0, c60); c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a7[p]); c70 = Vector512.FusedMultiplyAdd(x, b0, c70); c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
        }
        c00.Store(c); c01.Store(c + 16); c += ldc;
        c10.Store(c); c11.Store(c + 16); c += ldc;
        c20.Store(c); c21.Store(c + 16); c += ldc;
        c30.Store(c); c31.Store(c + 16); c += ldc;
        c40.Store(c); c41.Store(c + 16); c += ldc;
        c50.Store(c); c51.Store(c + 16); c += ldc;
        c60.Store(c); c61.Store(c + 16); c += ldc;
        c70.Store(c); c71.Store(c + 16);
    }

    /// <summary>One row of a panel (edge tiles): two accumulator pairs over even and odd k hide the FMA latency.</summary>
    private static void Row(SecondProduct first, SecondProduct second, float* bias, float* c)
    {
        Vector512<float> e0 = bias == null ? default : Vector512.Load(bias), e1 = bias == null ? default : Vector512.Load(bias + 16);
        Vector512<float> o0 = default, o1 = default;
        for (int term = 0; term < 2; term++)
        {
            var product = term == 0 ? first : second;
            float* a = product.A, b = product.Panels;
            int k = product.K, p = 0;
            for (; p + 1 < k; p += 2, b += 2 * PanelWidth)
            {
                var x = Vector512.Create(a[p]);
                e0 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b), e0); e1 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b + 16), e1);
                x = Vector512.Create(a[p + 1]);
                o0 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b + 32), o0); o1 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b + 48), o1);
            }
            if (p < k)
            {
                var x = Vector512.Create(a[p]);
                e0 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b), e0); e1 = Vector512.FusedMultiplyAdd(x, Vector512.Load(b + 16), e1);
            }
        }
        (e0 + o0).Store(c);
        (e1 + o1).Store(c + 16);
    }

    /// <summary>
    /// Two rows of a panel for AVX2 (edge tiles: 128 positions leave 2 rows past the 6-row tiles): eight accumulator
    /// chains, where one row's four wait on the FMA latency. Each element's sum runs in the same order as in the tiles.
    /// </summary>
    private static void TwoRows256(SecondProduct first, SecondProduct second, float* bias, float* c)
    {
        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default;
        if (bias != null) { e0 = Vector256.Load(bias); e1 = Vector256.Load(bias + 8); e2 = Vector256.Load(bias + 16); e3 = Vector256.Load(bias + 24); }
        Vector256<float> f0 = e0, f1 = e1, f2 = e2, f3 = e3;
        for (int term = 0; term < 2; term++)
        {
            var product = term == 0 ? first : second;
            float* a = product.A, a1 = product.A + product.Lda, b = product.Panels;
            for (int p = 0; p < product.K; p++, b += PanelWidth)
            {
                var b0 = Vector256.Load(b); var b1 = Vector256.Load(b + 8); var b2 = Vector256.Load(b + 16); var b3 = Vector256.Load(b + 24);
                var x = Vector256.Create(a[p]);
                e0 = Vector256.FusedMultiplyAdd(x, b0, e0); e1 = Vector256.FusedMultiplyAdd(x, b1, e1);
                e2 = Vector256.FusedMultiplyAdd(x, b2, e2); e3 = Vector256.FusedMultiplyAdd(x, b3, e3);
                x = Vector256.Create(a1[p]);
                f0 = Vector256.FusedMultiplyAdd(x, b0, f0); f1 = Vector256.FusedMultiplyAdd(x, b1, f1);
                f2 = Vector256.FusedMultiplyAdd(x, b2, f2); f3 = Vector256.FusedMultiplyAdd(x, b3, f3);
            }
        }
        e0.Store(c); e1.Store(c + 8); e2.Store(c + 16); e3.Store(c + 24);
        c += PanelWidth;
        f0.Store(c); f1.Store(c + 8); f2.Store(c + 16); f3.Store(c + 24);
    }

    /// <summary>
    /// <see cref="Row"/> for AVX2: the row's 32 columns in four ymm accumulators. (The even/odd split of the wide row
    /// is not needed: four independent chains already.)
    /// </summary>
    private static void Row256(SecondProduct first, SecondProduct second, float* bias, float* c)
    {
        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default;
        if (bias != null) { e0 = Vector256.Load(bias); e1 = Vector256.Load(bias + 8); e2 = Vector256.Load(bias + 16); e3 = Vector256.Load(bias + 24); }
        for (int term = 0; term < 2; term++)
        {
            var product = term == 0 ? first : second;
            float* a = product.A, b = product.Panels;
            for (int p = 0; p < product.K; p++, b += PanelWidth)
            {
                var x = Vector256.Create(a[p]);
                e0 = Vector256.FusedMultiplyAdd(x, Vector256.Load(b), e0); e1 = Vector256.FusedMultiplyAdd(x, Vector256.Load(b + 8), e1);
                e2 = Vector256.FusedMultiplyAdd(x, Vector256.Load(b + 16), e2); e3 = Vector256.FusedMultiplyAdd(x, Vector256.Load(b + 24), e3);
            }
        }
        e0.Store(c); e1.Store(c + 8); e2.Store(c + 16); e3.Store(c + 24);
    }
}

/// <summary>
/// MatMul by a constant 2-D weight, plus an optional constant bias over the last axis (the Add after it
/// folded in) and an optional GELU of the result: made by plan-time fusion in inference plans only (no
/// derivatives), inputs (A, W, bias?). The weight is packed once for <see cref="PackedGemm"/>; without
/// AVX-512 the backend's GEMM runs.
/// </summary>
internal sealed class PackedMatMul : Operator
{
    private readonly NdArray<float> weight;
    private readonly PackedWeights? packed;
    private readonly float[]? bias; // padded to the panels when packed
    private readonly Activation activation;

    public Activation Activation => activation;

    public PackedMatMul(OperatorNode node, NdArray<float> weight, NdArray<float>? bias, Activation activation = Activation.None) : base(node)
    {
        this.activation = activation;
        if (weight.Rank != 2) throw new FisherKernelsException(ErrorKind.Internal, $"{node}: the weight must be 2-D");
        this.weight = weight;
        int n = weight.Shape[1];
        if (bias is not null && bias.Length != n) throw new FisherKernelsException(ErrorKind.Internal, $"{node}: the bias must have {n} elements");
        if (PackedGemm.IsSupported)
        {
            packed = PackedWeights.For(weight.Data, weight.Shape[0], n);
            if (bias is not null)
            {
                this.bias = new float[packed.PanelCount * PackedGemm.PanelWidth];
                bias.Data.CopyTo(this.bias, 0);
            }
        }
        else this.bias = bias?.Data;
    }

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var a = RequiredFloat(inputs, 0, "A");
        if (a.Shape.Length < 2 || a.Shape[^1] != weight.Shape[0]) throw Error($"A [{ShapeUtil.Format(a.Shape)}] does not match the weight [{ShapeUtil.Format(weight.Shape)}]");
        return [new TensorInfo(ElementType.Float32, [.. a.Shape[..^1], weight.Shape[1]])];
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        var a = Tensors.Float(inputs[0], Node, "A");
        var y = Tensors.Float(outputs[0], Node, "Y");
        int k = weight.Shape[0], n = weight.Shape[1], m = checked((int)(a.Length / k));
        if (packed is not null) { PackedGemm.Multiply(a.Data, m, packed, bias, activation, y.Data, context.Threads); return; }
        context.Backend.Gemm(new Backends.GemmShape(m, n, k), a.Data, weight.Data, y.Data);
        if (bias is not null)
            for (int row = 0; row < m; row++) System.Numerics.Tensors.TensorPrimitives.Add(y.Data.AsSpan(row * n, n), bias, y.Data.AsSpan(row * n, n));
        if (activation == Activation.GeluTanh) FastMath.GeluTanh(y.Data, y.Data);
        else if (activation == Activation.GeluErf) FastMath.GeluErf(y.Data, y.Data);
    }
}

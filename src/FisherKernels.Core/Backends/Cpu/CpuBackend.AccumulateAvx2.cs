using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FisherKernels.Backends.Cpu;

/// <summary>
/// The AVX2 + FMA accumulation <c>F ← β·F + α·X̃ᵀX̃</c>, blocked as GEMM libraries block for a 32 KB L1 and a 512 KB L2
/// (Zen 3, Haswell): blocks of <see cref="Avx2BlockRows"/> active rows are packed once into 16-column panels (the
/// tile's vector side, 16 KB, held in L1 while a tile row runs) and 6-column slivers (its broadcast side, streamed
/// from L2), both contiguous; then the upper triangle's 96 × 96 tiles run a 6 × 16 register tile.
/// </summary>
public sealed partial class CpuBackend
{
    private const int Avx2BlockRows = 256, Avx2TileRows = 6, Avx2TileCols = 16;

    /// <summary>A sliver's length: 8 floats past its rows, since a packed row is one 8-wide store that runs 2 past it.</summary>
    private const int Avx2SliverStride = Avx2BlockRows * Avx2TileRows + 8;

    private const int Avx2PanelLength = Avx2BlockRows * Avx2TileCols;

    private unsafe void AccumulateAvx2(ReadOnlySpan<float> x, int rows, int cols, bool appendOne, int active, float alpha, float beta,
                                       Span<float> factor, ReadOnlySpan<byte> rowMask, bool mirror, int threads)
    {
        int n = cols + (appendOne ? 1 : 0);
        int panels = (n + Avx2TileCols - 1) / Avx2TileCols, slivers = (n + Avx2TileRows - 1) / Avx2TileRows;
        int tilesPerSide = (n + TileSize - 1) / TileSize;
        int tileCount = tilesPerSide * (tilesPerSide + 1) / 2;
        // 16 floats of slack to start the panels on a cache line.
        var packed = ArrayPool<float>.Shared.Rent(panels * Avx2PanelLength + slivers * Avx2SliverStride + 16);
        var blockRowIndex = ArrayPool<int>.Shared.Rent(Avx2BlockRows);
        // Small problems run on one thread: the fork/join costs more than it saves.
        if ((long)active * n * n <= 1L << 22) threads = 1;
        // Packing splits the block's rows into chunks, a few a thread; each chunk boundary needs its sliver heads restored.
        int chunks = threads == 1 ? 1 : 4 * threads;
        try
        {
            fixed (float* px = x, pf = factor, pbuf = packed)
            fixed (byte* pm = rowMask)
            fixed (int* pr = blockRowIndex)
            {
                float* panelBase = (float*)(((nint)pbuf + 63) & ~(nint)63);
                var job = new Avx2Job(px, cols, appendOne, n, panelBase, panelBase + (long)panels * Avx2PanelLength, pf, alpha,
                                      tilesPerSide, pr, chunks);
                Action<int> pack = job.PackChunk, update = job.UpdateTile;
                int nextRow = 0, blocks = (active + Avx2BlockRows - 1) / Avx2BlockRows;
                for (int block = 0; block < blocks; block++)
                {
                    int count = 0;
                    for (; count < Avx2BlockRows && nextRow < rows; nextRow++)
                        if (pm == null || pm[nextRow] != 0) blockRowIndex[count++] = nextRow;
                    job.BlockRowCount = count;
                    job.Beta = block == 0 ? beta : 1f;
                    job.Mirror = mirror && block == blocks - 1;
                    ParallelWork.For(chunks, threads, pack);
                    for (int c = 1; c < chunks; c++) job.RestoreSliverHeads(c * count / chunks);
                    ParallelWork.For(tileCount, threads, update);
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(packed);
            ArrayPool<int>.Shared.Return(blockRowIndex);
        }
    }

    /// <summary>The state of one AVX2 accumulation, shared by the workers of each block.</summary>
    private sealed unsafe class Avx2Job(float* x, int cols, bool appendOne, int n, float* panels, float* slivers, float* factor,
                                        float alpha, int tilesPerSide, int* rowIndex, int chunks)
    {
        /// <summary>Active rows in this block; their indices into X are rowIndex[0..BlockRowCount).</summary>
        public int BlockRowCount;
        public float Beta;
        public bool Mirror;

        /// <summary>
        /// Packs a chunk of the block's rows, each row read once, front to back (the hardware prefetchers follow it),
        /// into every panel and sliver. A sliver row is one 8-wide store: its 2 extra floats land where the next row's
        /// store overwrites them, so rows go in order and the first row of the next chunk is restored afterwards.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void PackChunk(int chunk)
        {
            int end = (chunk + 1) * BlockRowCount / chunks;
            for (int k = chunk * BlockRowCount / chunks; k < end; k++) PackRow(k);
        }

        private void PackRow(int k)
        {
            float* s = x + (long)rowIndex[k] * cols;
            float* panel = panels + k * Avx2TileCols;
            float* sliver = slivers + k * Avx2TileRows;
            const int ps = Avx2PanelLength, ss = Avx2SliverStride;
            int c0 = 0;
            // 48 columns at a time: 3 panels and 8 slivers; the last sliver's 8-wide load reads 2 past them.
            for (; c0 + 50 <= cols; c0 += 48, panel += 3 * ps, sliver += 8 * ss)
            {
                var v0 = Vector256.Load(s + c0); var v1 = Vector256.Load(s + c0 + 8); var v2 = Vector256.Load(s + c0 + 16);
                var v3 = Vector256.Load(s + c0 + 24); var v4 = Vector256.Load(s + c0 + 32); var v5 = Vector256.Load(s + c0 + 40);
                v0.Store(panel); v1.Store(panel + 8); v2.Store(panel + ps); v3.Store(panel + ps + 8); v4.Store(panel + 2 * ps); v5.Store(panel + 2 * ps + 8);
                v0.Store(sliver); Vector256.Load(s + c0 + 6).Store(sliver + ss); Vector256.Load(s + c0 + 12).Store(sliver + 2 * ss);
                Vector256.Load(s + c0 + 18).Store(sliver + 3 * ss); v3.Store(sliver + 4 * ss); Vector256.Load(s + c0 + 30).Store(sliver + 5 * ss);
                Vector256.Load(s + c0 + 36).Store(sliver + 6 * ss); Vector256.Load(s + c0 + 42).Store(sliver + 7 * ss);
            }
            // The rest one value at a time: the homogeneous column, zero padding past n.
            int panelColumns = (n + Avx2TileCols - 1) / Avx2TileCols * Avx2TileCols, sliverColumns = (n + Avx2TileRows - 1) / Avx2TileRows * Avx2TileRows;
            for (int c = c0; c < panelColumns; c++) panels[(long)(c / Avx2TileCols) * ps + k * Avx2TileCols + c % Avx2TileCols] = Value(s, c);
            for (int c = c0; c < sliverColumns; c++) slivers[(long)(c / Avx2TileRows) * ss + k * Avx2TileRows + c % Avx2TileRows] = Value(s, c);
        }

        private float Value(float* row, int column) => column < cols ? row[column] : appendOne && column == cols ? 1f : 0f;

        /// <summary>Rewrites the first 2 floats of row k in every sliver, which the packing of row k − 1 (another chunk's) overran.</summary>
        public void RestoreSliverHeads(int k)
        {
            if (k <= 0 || k >= BlockRowCount) return;
            float* s = x + (long)rowIndex[k] * cols;
            int count = (n + Avx2TileRows - 1) / Avx2TileRows;
            for (int q = 0; q < count; q++)
            {
                float* d = slivers + (long)q * Avx2SliverStride + k * Avx2TileRows;
                d[0] = Value(s, q * Avx2TileRows);
                d[1] = Value(s, q * Avx2TileRows + 1);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void UpdateTile(int tile)
        {
            var (i0, i1, j0, j1) = UpperTile(tile, tilesPerSide, n);
            float* edge = stackalloc float[Avx2TileRows * Avx2TileCols];
            for (int jb = j0; jb < j1; jb += Avx2TileCols)
            {
                float* b = panels + (long)(jb / Avx2TileCols) * Avx2PanelLength;
                int jEnd = Math.Min(jb + Avx2TileCols, j1);
                if (Mirror) PrefetchMirror(i0, i1, jb, jEnd);
                // The panel stays in L1 while the tile's slivers stream past it; slivers wholly below the diagonal are skipped.
                for (int ib = i0; ib < i1 && ib < jb + Avx2TileCols; ib += Avx2TileRows)
                {
                    float* a = slivers + (long)(ib / Avx2TileRows) * Avx2SliverStride;
                    if (ib + Avx2TileRows <= n && jb + Avx2TileCols <= n)
                        Kernel6x16Avx2(a, b, BlockRowCount, factor + (long)ib * n + jb, n, alpha, Beta);
                    else
                    {
                        Kernel6x16Avx2(a, b, BlockRowCount, edge, Avx2TileCols, 1f, 0f);
                        for (int r = 0; r < Math.Min(Avx2TileRows, n - ib); r++)
                        {
                            float* f = factor + (long)(ib + r) * n + jb;
                            for (int c = 0; c < Math.Min(Avx2TileCols, n - jb); c++)
                                f[c] = alpha * edge[r * Avx2TileCols + c] + (Beta == 0 ? 0 : Beta * f[c]);
                        }
                    }
                }
                if (Mirror) MirrorTile(factor, n, i0, i1, jb, jEnd);
            }
        }

        /// <summary>
        /// Fetches the lower-triangle rows [j0, j1) × [i0, i1) that the mirror will write once these columns are done: they
        /// are usually in memory, and prefetched while the tiles run the writes no longer wait for them.
        /// </summary>
        private void PrefetchMirror(int i0, int i1, int j0, int j1)
        {
            for (int j = Math.Max(j0, i0 + 1); j < j1; j++)
            {
                float* row = factor + (long)j * n;
                for (int i = i0, end = Math.Min(i1, j); i < end; i += 16) Sse.Prefetch0(row + i);
                Sse.Prefetch0(row + Math.Min(i1, j) - 1);
            }
        }
    }

    /// <summary>
    /// c[r, 0..16) ← scale·Σ_k a[6k + r]·b[16k + 0..16) + β·c (β = 0: c not read), r &lt; 6: 12 ymm accumulators,
    /// 2 loads and 6 broadcasts a row step (16 registers in all). C's rows are prefetched first: with F larger than the
    /// caches they come from memory, and the loads would otherwise stall the store at the end.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel6x16Avx2(float* a, float* b, int kc, float* c, int ldc, float scale, float beta)
    {
        for (int r = 0; r < Avx2TileRows; r++) { Sse.Prefetch0(c + (long)r * ldc); Sse.Prefetch0(c + (long)r * ldc + 15); }
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int k = 0; k < kc; k++, a += Avx2TileRows, b += Avx2TileCols)
        {
            var b0 = Vector256.Load(b); var b1 = Vector256.Load(b + 8);
            var s = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(s, b0, c00); c01 = Vector256.FusedMultiplyAdd(s, b1, c01);
            s = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(s, b0, c10); c11 = Vector256.FusedMultiplyAdd(s, b1, c11);
            s = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(s, b0, c20); c21 = Vector256.FusedMultiplyAdd(s, b1, c21);
            s = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(s, b0, c30); c31 = Vector256.FusedMultiplyAdd(s, b1, c31);
            s = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(s, b0, c40); c41 = Vector256.FusedMultiplyAdd(s, b1, c41);
            s = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(s, b0, c50); c51 = Vector256.FusedMultiplyAdd(s, b1, c51);
        }
        var vs = Vector256.Create(scale); var vb = Vector256.Create(beta);
        StoreRow256(c, vs, vb, beta, c00, c01); c += ldc;
        StoreRow256(c, vs, vb, beta, c10, c11); c += ldc;
        StoreRow256(c, vs, vb, beta, c20, c21); c += ldc;
        StoreRow256(c, vs, vb, beta, c30, c31); c += ldc;
        StoreRow256(c, vs, vb, beta, c40, c41); c += ldc;
        StoreRow256(c, vs, vb, beta, c50, c51);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreRow256(float* c, Vector256<float> scale, Vector256<float> vBeta, float beta,
                                           Vector256<float> x0, Vector256<float> x1)
    {
        if (beta == 0)
        {
            (x0 * scale).Store(c); (x1 * scale).Store(c + 8);
        }
        else
        {
            Vector256.FusedMultiplyAdd(x0, scale, vBeta * Vector256.Load(c)).Store(c);
            Vector256.FusedMultiplyAdd(x1, scale, vBeta * Vector256.Load(c + 8)).Store(c + 8);
        }
    }
}

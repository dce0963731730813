using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using FisherKernels.Native;

namespace FisherKernels.Backends.Cpu;

/// <summary>The inner kernel of <see cref="CpuBackend.AccumulateFactor"/>; tests pin each one, <c>Auto</c> picks.</summary>
internal enum AccumulateKernel { Auto, Avx512, Avx2, Scalar, Ssyrk }

public sealed partial class CpuBackend
{
    /// <summary>Forces one accumulation kernel (tests and benchmarks); <c>Auto</c> picks the fastest available.</summary>
    internal AccumulateKernel AccumulateKernel { get; init; }

    // Packed layout of one block of rows: column panels of PanelWidth, each [BlockRows × PanelWidth]
    // row-major, zero-padded past the last column. Both operands of X̃ᵀX̃ read the same packed block.
    // BlockRows: 512 measured faster than 128/256/384/768 on Zen 5 (fewer passes over F, still L2-resident).
    private const int PanelWidth = 48, TileSize = 2 * PanelWidth, BlockRows = 512;

    // Below this many columns the 48-wide panels are largely padding and OpenBLAS ssyrk measured faster
    // (0.5–0.8× at 32–64 columns, 1.4× at 96, on Zen 5).
    private const int SsyrkBelowColumns = 80;

    /// <summary>
    /// Kernel family 1: <c>F ← β·F + α·X̃ᵀX̃</c>. F is symmetric on entry and only its upper
    /// triangle is read (as BLAS ssyrk); both triangles are written unless <paramref name="upperOnly"/>.
    /// </summary>
    public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                 float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false)
        => Accumulate(x, rows, cols, appendOne, alpha, beta, factor, rowMask, upperOnly, Threads);

    /// <summary>
    /// Side by side, one factor a thread, largest first: a batch of a few hundred rows gives one factor too little work to
    /// split well across threads. Each factor is exactly what <see cref="AccumulateFactor"/> gives (a tile's result does
    /// not depend on the thread count).
    /// </summary>
    public void AccumulateFactors(IReadOnlyList<FactorAccumulation> updates)
    {
        var order = updates.OrderByDescending(u => u.Size).ToArray();
        int threads = order.Length > 1 ? 1 : Threads;
        ParallelWork.For(order.Length, Threads, i =>
        {
            var u = order[i];
            Accumulate(u.X, u.Rows, u.Cols, u.AppendOne, u.Alpha, u.Beta, u.Factor, u.RowMask, u.UpperOnly, threads);
        });
    }

    private void Accumulate(ReadOnlySpan<float> x, int rows, int cols, bool appendOne, float alpha, float beta,
                            Span<float> factor, ReadOnlySpan<byte> rowMask, bool upperOnly, int threads)
    {
        int n = BackendArguments.CheckAccumulate(x.Length, rows, cols, appendOne, factor.Length, rowMask.Length);
        if (n == 0) return;

        int active = rowMask.IsEmpty ? rows : rows - rowMask.Count((byte)0);
        if (active == 0 || alpha == 0)
        {
            if (beta == 0) factor.Clear(); else if (beta != 1) TensorPrimitives.Multiply(factor, beta, factor);
            if (beta != 0 && !upperOnly) MirrorUpper(factor, n); // β·F is symmetric only if F's lower triangle matched
            return;
        }
        var kernel = ChooseKernel(n);
        if (kernel == AccumulateKernel.Ssyrk) AccumulateWithSsyrk(x, rows, cols, appendOne, alpha, beta, factor, rowMask, threads);
        else if (kernel == AccumulateKernel.Avx2) AccumulateAvx2(x, rows, cols, appendOne, active, alpha, beta, factor, rowMask, mirror: !upperOnly, threads);
        else AccumulateTiled(kernel, x, rows, cols, appendOne, active, alpha, beta, factor, rowMask, mirror: !upperOnly, threads);
        if (!upperOnly && kernel == AccumulateKernel.Ssyrk) MirrorUpper(factor, n);
    }

    private unsafe AccumulateKernel ChooseKernel(int n)
    {
        var kernel = AccumulateKernel;
        if (kernel == AccumulateKernel.Auto)
        {
            if (UsesNativeBlas && n < SsyrkBelowColumns) return AccumulateKernel.Ssyrk;
            return Vector512.IsHardwareAccelerated && Avx512F.IsSupported ? AccumulateKernel.Avx512
                 : Avx2.IsSupported && Fma.IsSupported ? AccumulateKernel.Avx2
                 : UsesNativeBlas ? AccumulateKernel.Ssyrk : AccumulateKernel.Scalar;
        }
        bool available = kernel switch
        {
            AccumulateKernel.Avx512 => Avx512F.IsSupported,
            AccumulateKernel.Avx2 => Avx2.IsSupported && Fma.IsSupported,
            AccumulateKernel.Ssyrk => UsesNativeBlas && Blas.Ssyrk != null,
            _ => true,
        };
        return available ? kernel : throw FisherKernelsException.Unsupported($"accumulation kernel {kernel} is not available on this machine");
    }

    /// <summary>
    /// Blocks of <see cref="BlockRows"/> active rows are packed into column panels (mask, homogeneous
    /// column and zero padding applied while packing); then the upper-triangle tiles of F are updated in
    /// parallel, α and β fused into the microkernel's store; the last block mirrors each finished tile (unless the caller keeps the upper triangle only).
    /// </summary>
    private unsafe void AccumulateTiled(AccumulateKernel kernel, ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                        int active, float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask, bool mirror, int threads)
    {
        int n = cols + (appendOne ? 1 : 0);
        int panels = (n + PanelWidth - 1) / PanelWidth;
        int tilesPerSide = (n + TileSize - 1) / TileSize;
        int tileCount = tilesPerSide * (tilesPerSide + 1) / 2;
        int blockRows = BlockRows;
        int blocks = (active + blockRows - 1) / blockRows;
        var packed = ArrayPool<float>.Shared.Rent(panels * blockRows * PanelWidth);
        var blockRowIndex = ArrayPool<int>.Shared.Rent(blockRows);
        // Small problems run on one thread: the fork/join costs more than it saves.
        bool parallel = threads > 1 && (long)active * n * n > 1L << 22;
        try
        {
            fixed (float* px = x, pf = factor, pp = packed)
            fixed (byte* pm = rowMask)
            fixed (int* pr = blockRowIndex)
            {
                var job = new TiledJob(kernel, px, cols, appendOne, n, pp, pf, alpha, tilesPerSide, pr, blockRows);
                int nextRow = 0;
                for (int block = 0; block < blocks; block++)
                {
                    int count = 0;
                    for (; count < blockRows && nextRow < rows; nextRow++)
                        if (pm == null || pm[nextRow] != 0) blockRowIndex[count++] = nextRow;
                    job.BlockRowCount = count;
                    job.Beta = block == 0 ? beta : 1f;
                    job.Mirror = mirror && block == blocks - 1;
                    if (parallel)
                    {
                        Parallel.For(0, panels, Parallelism, job.PackPanel);
                        Parallel.For(0, tileCount, Parallelism, job.UpdateTile);
                    }
                    else
                    {
                        for (int p = 0; p < panels; p++) job.PackPanel(p);
                        for (int t = 0; t < tileCount; t++) job.UpdateTile(t);
                    }
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(packed);
            ArrayPool<int>.Shared.Return(blockRowIndex);
        }
    }

    /// <summary>The state of one tiled accumulation, shared by the workers of each block.</summary>
    private sealed unsafe class TiledJob(AccumulateKernel kernel, float* x, int cols, bool appendOne, int n,
                                         float* packed, float* factor, float alpha, int tilesPerSide, int* rowIndex, int blockRows)
    {
        /// <summary>Active rows in this block; their indices into X are rowIndex[0..BlockRowCount).</summary>
        public int BlockRowCount;
        public float Beta;
        public bool Mirror;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void PackPanel(int panel)
        {
            int c0 = panel * PanelWidth;
            int copy = Math.Clamp(cols - c0, 0, PanelWidth); // 0 for a panel holding only the ones column
            int onesAt = appendOne ? cols - c0 : -1;
            float* dst = packed + (long)panel * blockRows * PanelWidth;
            for (int k = 0; k < BlockRowCount; k++, dst += PanelWidth)
            {
                Buffer.MemoryCopy(x + (long)rowIndex[k] * cols + c0, dst, PanelWidth * sizeof(float), copy * sizeof(float));
                if (copy == PanelWidth) continue;
                new Span<float>(dst + copy, PanelWidth - copy).Clear();
                if ((uint)onesAt < PanelWidth) dst[onesAt] = 1;
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void UpdateTile(int tile)
        {
            var (i0, i1, j0, j1) = UpperTile(tile, tilesPerSide, n);
            const int mr = 8, nr = 48;
            float* edge = stackalloc float[8 * 48];
            for (int jb = j0; jb < j1; jb += nr)
            {
                float* b = Panel(jb);
                for (int ib = i0; ib < i1; ib += mr)
                {
                    if (jb + nr <= ib) continue; // wholly below the diagonal
                    float* a = Panel(ib);
                    if (ib + mr <= n && jb + nr <= n) Run(a, b, factor + (long)ib * n + jb, n, alpha, Beta);
                    else
                    {
                        Run(a, b, edge, nr, 1f, 0f);
                        StoreEdge(edge, nr, ib, jb, Math.Min(mr, n - ib), Math.Min(nr, n - jb));
                    }
                }
            }
            if (Mirror) MirrorTile(factor, n, i0, i1, j0, j1);
        }

        private float* Panel(int column) =>
            packed + (long)(column / PanelWidth) * blockRows * PanelWidth + column % PanelWidth;

        private void Run(float* a, float* b, float* c, int ldc, float scale, float beta)
        {
            switch (kernel)
            {
                case AccumulateKernel.Avx512: Kernel8x48Avx512(a, b, BlockRowCount, c, ldc, scale, beta); break;
                default: Kernel8x48Scalar(a, b, BlockRowCount, c, ldc, scale, beta); break;
            }
        }

        private void StoreEdge(float* edge, int ldEdge, int ib, int jb, int validRows, int validCols)
        {
            for (int r = 0; r < validRows; r++)
            {
                float* f = factor + (long)(ib + r) * n + jb;
                float* e = edge + r * ldEdge;
                for (int c = 0; c < validCols; c++) f[c] = alpha * e[c] + (Beta == 0 ? 0 : Beta * f[c]);
            }
        }
    }

    /// <summary>
    /// c[r, 0..48) ← scale·Σ_k a[k·48 + r]·b[k·48 + 0..48) + β·c (β = 0: c not read), r &lt; 8.
    /// 24 zmm accumulators, 3 loads and one broadcast per row step: FMA-bound on Zen 4/5.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel8x48Avx512(float* a, float* b, int kc, float* c, int ldc, float scale, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
        Vector512<float> c40 = default, c41 = default, c42 = default, c50 = default, c51 = default, c52 = default;
        Vector512<float> c60 = default, c61 = default, c62 = default, c70 = default, c71 = default, c72 = default;
        for (int k = 0; k < kc; k++, a += PanelWidth, b += PanelWidth)
        {
            var b0 = Vector512.Load(b); var b1 = Vector512.Load(b + 16); var b2 = Vector512.Load(b + 32);
            var s = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(s, b0, c00); c01 = Vector512.FusedMultiplyAdd(s, b1, c01); c02 = Vector512.FusedMultiplyAdd(s, b2, c02);
            s = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(s, b0, c10); c11 = Vector512.FusedMultiplyAdd(s, b1, c11); c12 = Vector512.FusedMultiplyAdd(s, b2, c12);
            s = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(s, b0, c20); c21 = Vector512.FusedMultiplyAdd(s, b1, c21); c22 = Vector512.FusedMultiplyAdd(s, b2, c22);
            s = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(s, b0, c30); c31 = Vector512.FusedMultiplyAdd(s, b1, c31); c32 = Vector512.FusedMultiplyAdd(s, b2, c32);
            s = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(s, b0, c40); c41 = Vector512.FusedMultiplyAdd(s, b1, c41); c42 = Vector512.FusedMultiplyAdd(s, b2, c42);
            s = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(s, b0, c50); c51 = Vector512.FusedMultiplyAdd(s, b1, c51); c52 = Vector512.FusedMultiplyAdd(s, b2, c52);
            s = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(s, b0, c60); c61 = Vector512.FusedMultiplyAdd(s, b1, c61); c62 = Vector512.FusedMultiplyAdd(s, b2, c62);
            s = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(s, b0, c70); c71 = Vector512.FusedMultiplyAdd(s, b1, c71); c72 = Vector512.FusedMultiplyAdd(s, b2, c72);
        }
        var vs = Vector512.Create(scale); var vb = Vector512.Create(beta);
        StoreRow512(c, vs, vb, beta, c00, c01, c02); c += ldc;
        StoreRow512(c, vs, vb, beta, c10, c11, c12); c += ldc;
        StoreRow512(c, vs, vb, beta, c20, c21, c22); c += ldc;
        StoreRow512(c, vs, vb, beta, c30, c31, c32); c += ldc;
        StoreRow512(c, vs, vb, beta, c40, c41, c42); c += ldc;
        StoreRow512(c, vs, vb, beta, c50, c51, c52); c += ldc;
        StoreRow512(c, vs, vb, beta, c60, c61, c62); c += ldc;
        StoreRow512(c, vs, vb, beta, c70, c71, c72);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreRow512(float* c, Vector512<float> scale, Vector512<float> vBeta, float beta,
                                           Vector512<float> x0, Vector512<float> x1, Vector512<float> x2)
    {
        if (beta == 0)
        {
            (x0 * scale).Store(c); (x1 * scale).Store(c + 16); (x2 * scale).Store(c + 32);
        }
        else
        {
            Vector512.FusedMultiplyAdd(x0, scale, vBeta * Vector512.Load(c)).Store(c);
            Vector512.FusedMultiplyAdd(x1, scale, vBeta * Vector512.Load(c + 16)).Store(c + 16);
            Vector512.FusedMultiplyAdd(x2, scale, vBeta * Vector512.Load(c + 32)).Store(c + 32);
        }
    }

    /// <summary>The portable kernel over the same packed layout (any CPU; slow but simple).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel8x48Scalar(float* a, float* b, int kc, float* c, int ldc, float scale, float beta)
    {
        float* sum = stackalloc float[8 * 48];
        new Span<float>(sum, 8 * 48).Clear();
        for (int k = 0; k < kc; k++, a += PanelWidth, b += PanelWidth)
            for (int r = 0; r < 8; r++)
            {
                float s = a[r];
                float* row = sum + r * 48;
                for (int j = 0; j < 48; j++) row[j] += s * b[j];
            }
        for (int r = 0; r < 8; r++)
            for (int j = 0; j < 48; j++)
                c[(long)r * ldc + j] = scale * sum[r * 48 + j] + (beta == 0 ? 0 : beta * c[(long)r * ldc + j]);
    }

    /// <summary>The rows [I0, I1) and columns [J0, J1) of an upper-triangle tile, numbered row by row: (ti, tj) with ti ≤ tj.</summary>
    private static (int I0, int I1, int J0, int J1) UpperTile(int tile, int tilesPerSide, int n)
    {
        int ti = 0, rest = tile;
        while (rest >= tilesPerSide - ti) { rest -= tilesPerSide - ti; ti++; }
        int i0 = ti * TileSize, j0 = (ti + rest) * TileSize;
        return (i0, Math.Min(i0 + TileSize, n), j0, Math.Min(j0 + TileSize, n));
    }

    /// <summary>
    /// Copies the strict upper triangle of the tile [i0, i1) × [j0, j1) onto its mirror image, one row of the lower
    /// triangle at a time: the tile just written is in cache, the mirror usually is not, and row-wise writes let the
    /// prefetchers fetch it (column-wise writes were latency-bound: 3 of 54 ms at 4096 × 1024 on Zen 3).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void MirrorTile(float* f, int n, int i0, int i1, int j0, int j1)
    {
        for (int j = Math.Max(j0, i0 + 1); j < j1; j++)
        {
            float* row = f + (long)j * n, column = f + j;
            for (int i = i0, end = Math.Min(i1, j); i < end; i++) row[i] = column[(long)i * n];
        }
    }

    private static unsafe void MirrorUpper(Span<float> factor, int n)
    {
        fixed (float* f = factor)
            for (int i0 = 0; i0 < n; i0 += TileSize)
                for (int j0 = i0; j0 < n; j0 += TileSize)
                    MirrorTile(f, n, i0, Math.Min(i0 + TileSize, n), j0, Math.Min(j0 + TileSize, n));
    }

    /// <summary>
    /// The OpenBLAS path (baseline, and the choice for very narrow factors): plain X goes to ssyrk as
    /// is; with a mask or the homogeneous column, X̃ is built block by block in a scratch buffer.
    /// </summary>
    private unsafe void AccumulateWithSsyrk(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                            float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask, int threads)
    {
        int n = cols + (appendOne ? 1 : 0);
        using var native = NativeThreads(threads);
        fixed (float* px = x, pf = factor)
        {
            if (!appendOne && rowMask.IsEmpty)
            {
                Blas.Ssyrk(Blas.RowMajor, Blas.Upper, Blas.Trans, n, rows, alpha, px, Math.Max(1, cols), beta, pf, n);
            }
            else
            {
                int chunk = Math.Max(1, (1 << 20) / n);
                var scratch = ArrayPool<float>.Shared.Rent(chunk * n);
                try
                {
                    fixed (float* ps = scratch)
                    {
                        int next = 0;
                        bool first = true;
                        while (next < rows)
                        {
                            int count = 0;
                            for (; count < chunk && next < rows; next++)
                            {
                                if (!rowMask.IsEmpty && rowMask[next] == 0) continue;
                                float* dst = ps + (long)count * n;
                                new ReadOnlySpan<float>(px + (long)next * cols, cols).CopyTo(new Span<float>(dst, cols));
                                if (appendOne) dst[cols] = 1;
                                count++;
                            }
                            if (count == 0) break;
                            Blas.Ssyrk(Blas.RowMajor, Blas.Upper, Blas.Trans, n, count, alpha, ps, n, first ? beta : 1f, pf, n);
                            first = false;
                        }
                    }
                }
                finally { ArrayPool<float>.Shared.Return(scratch); }
            }
        }
    }

    /// <summary>
    /// Kernel family 3: <c>dy = x·dWᵀ + dx·Wᵀ + db</c> as two GEMMs into dy, the bias fused by
    /// starting dy from db in every row (β = 1) instead of a separate pass.
    /// </summary>
    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
    {
        BackendArguments.CheckLinearJvp(x.Length, dx.Length, w.Length, dw.Length, db.Length, dy.Length, rows, inFeatures, outFeatures);
        dy = dy[..(rows * outFeatures)];
        if (db.IsEmpty) dy.Clear();
        else for (int r = 0; r < rows; r++) db.CopyTo(dy.Slice(r * outFeatures, outFeatures));
        var shape = new GemmShape(rows, outFeatures, inFeatures, TransB: true, Beta: 1f);
        Gemm(shape, x, dw, dy);
        Gemm(shape, dx, w, dy);
    }
}

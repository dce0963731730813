using FisherKernels.Backends.Cpu;
using ILGPU;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>Kernel family 3: the tiled GEMM (batched, transposed operands, α/β, broadcast strides) and the linear-layer JVP on top of it.</summary>
public sealed partial class IlgpuBackend
{
    /// <summary>Kernel parameters of one GEMM launch (a struct: kernels take few arguments well).</summary>
    internal struct GemmArgs
    {
        public int M, N, K, TransA, TransB, BatchOffset;
        public float Alpha, Beta;
        public long StrideA, StrideB, StrideC;
    }

    /// <summary>CUDA's limit on the grid's z dimension, which carries the batch.</summary>
    private const int MaxGridZ = 65535;

    private readonly DeviceBuffer<float> gemmA, gemmB, gemmC, jvpBias;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>> gemmKernel;
    private readonly Lazy<Action<Index1D, ArrayView<float>, ArrayView<float>, int>> biasRowsKernel;

    public void Gemm(in GemmShape s, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c)
    {
        CpuBackend.CheckGemm(s, a.Length, b.Length, c.Length);
        if (s.M == 0 || s.N == 0) return;
        long last = s.BatchCount - 1;
        long cLength = last * s.StrideC + (long)s.M * s.N;
        var stream = accelerator.DefaultStream;
        var aView = gemmA.Upload(a[..checked((int)(last * s.StrideA + (long)s.M * s.K))]);
        var bView = gemmB.Upload(b[..checked((int)(last * s.StrideB + (long)s.K * s.N))]);
        var cView = s.Beta == 0 ? gemmC.Take(cLength) : gemmC.Upload(c[..checked((int)cLength)]);
        LaunchGemm(s, aView, bView, cView);
        Download(cView, c[..(int)cLength], stream);
        Synchronize();
    }

    /// <summary>Launches C ← α·op(A)·op(B) + β·C on device views (C is not read when β = 0).</summary>
    private void LaunchGemm(in GemmShape s, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c)
    {
        var args = new GemmArgs
        {
            M = s.M, N = s.N, K = s.K, TransA = s.TransA ? 1 : 0, TransB = s.TransB ? 1 : 0,
            Alpha = s.Alpha, Beta = s.Beta, StrideA = s.StrideA, StrideB = s.StrideB, StrideC = s.StrideC,
        };
        var group = new Index3D(Tiling.Threads, Tiling.Threads, 1);
        for (int first = 0; first < s.BatchCount; first += MaxGridZ)
        {
            args.BatchOffset = first;
            var grid = new Index3D(Tiling.TileCount(s.N), Tiling.TileCount(s.M), Math.Min(MaxGridZ, s.BatchCount - first));
            gemmKernel.Value(new KernelConfig(grid, group), a, b, c, args);
        }
    }

    /// <summary>
    /// One group computes one [Tile × Tile] tile of C for batch Grid.IdxZ: operand tiles are staged
    /// depth-major in shared memory (loads coalesced along each operand's contiguous axis), then
    /// every thread accumulates its 4×4 register tile.
    /// </summary>
    private static void GemmKernel(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, GemmArgs p)
    {
        var aTile = SharedMemory.Allocate<float>(Tiling.TileFloats);
        var bTile = SharedMemory.Allocate<float>(Tiling.TileFloats);
        int tx = Group.IdxX, ty = Group.IdxY, thread = ty * Tiling.Threads + tx;
        int row0 = Grid.IdxY * Tiling.Tile, col0 = Grid.IdxX * Tiling.Tile;
        long batch = Grid.IdxZ + p.BatchOffset;
        long aBase = batch * p.StrideA, bBase = batch * p.StrideB, cBase = batch * p.StrideC;
        var acc = new RegisterTile();
        for (int k0 = 0; k0 < p.K; k0 += Tiling.Depth)
        {
            for (int e = thread; e < Tiling.TileFloats; e += Tiling.GroupSize)
            {
                // op(A)[i, k]: A is [M × K] (contiguous along k) or, transposed, [K × M] (contiguous along i).
                int i = p.TransA != 0 ? e % Tiling.Tile : e / Tiling.Depth;
                int depth = p.TransA != 0 ? e / Tiling.Tile : e % Tiling.Depth;
                int gi = row0 + i, gk = k0 + depth;
                aTile[depth * Tiling.Tile + i] = gi < p.M && gk < p.K
                    ? a[aBase + (p.TransA != 0 ? (long)gk * p.M + gi : (long)gi * p.K + gk)] : 0f;
                // op(B)[k, j]: B is [K × N] (contiguous along j) or, transposed, [N × K] (contiguous along k).
                int j = p.TransB != 0 ? e / Tiling.Depth : e % Tiling.Tile;
                depth = p.TransB != 0 ? e % Tiling.Depth : e / Tiling.Tile;
                int gj = col0 + j;
                gk = k0 + depth;
                bTile[depth * Tiling.Tile + j] = gj < p.N && gk < p.K
                    ? b[bBase + (p.TransB != 0 ? (long)gj * p.K + gk : (long)gk * p.N + gj)] : 0f;
            }
            Group.Barrier();
            for (int depth = 0; depth < Tiling.Depth; depth++) acc.Multiply(aTile, bTile, depth, tx, ty);
            Group.Barrier();
        }
        for (int i = 0; i < Tiling.PerThread; i++)
        {
            int gi = row0 + ty + i * Tiling.Threads;
            if (gi >= p.M) break;
            for (int j = 0; j < Tiling.PerThread; j++)
            {
                int gj = col0 + tx + j * Tiling.Threads;
                if (gj >= p.N) break;
                long at = cBase + (long)gi * p.N + gj;
                c[at] = p.Beta == 0 ? p.Alpha * acc.Get(i, j) : p.Alpha * acc.Get(i, j) + p.Beta * c[at];
            }
        }
    }

    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
    {
        BackendArguments.CheckLinearJvp(x.Length, dx.Length, w.Length, dw.Length, db.Length, dy.Length, rows, inFeatures, outFeatures);
        if (rows == 0 || outFeatures == 0) return;
        var stream = accelerator.DefaultStream;
        var output = gemmC.Take((long)rows * outFeatures);
        // dy starts as db broadcast over rows (or zero), then dy += x·dWᵀ and dy += dx·Wᵀ.
        if (db.IsEmpty) output.MemSetToZero(stream);
        else biasRowsKernel.Value(output.IntExtent, jvpBias.Upload(db), output, outFeatures);
        var shape = new GemmShape(rows, outFeatures, inFeatures, TransB: true, Beta: 1f);
        LaunchGemm(shape, gemmA.Upload(x[..(rows * inFeatures)]), gemmB.Upload(dw[..(outFeatures * inFeatures)]), output);
        LaunchGemm(shape, gemmA.Upload(dx[..(rows * inFeatures)]), gemmB.Upload(w[..(outFeatures * inFeatures)]), output);
        Download(output, dy[..(rows * outFeatures)], stream);
        Synchronize();
    }

    /// <summary>dst[i] = bias[i mod cols]: a bias broadcast over the rows of a row-major matrix.</summary>
    private static void BroadcastRowsKernel(Index1D index, ArrayView<float> bias, ArrayView<float> dst, int cols)
        => dst[index] = bias[index % cols];
}

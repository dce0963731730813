using ILGPU;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>Kernel family 1: Kronecker factor accumulation F ← β·F + α·X̃ᵀX̃ over the upper-triangle tiles.</summary>
public sealed partial class IlgpuBackend
{
    internal struct AccumulateArgs
    {
        public int Rows, Cols, Dim, HasMask, TileCount;
        public float Alpha, Beta;
    }

    private readonly DeviceBuffer<float> accumulateX, accumulateFactor;
    private readonly DeviceBuffer<byte> accumulateMask;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<byte>, ArrayView<float>, AccumulateArgs>> accumulateKernel;

    public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                 float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false)
    {
        // Both triangles are always written (upperOnly allows the lower one to be anything).
        int dim = BackendArguments.CheckAccumulate(x.Length, rows, cols, appendOne, factor.Length, rowMask.Length);
        if (dim == 0) return;

        var stream = accelerator.DefaultStream;
        int tiles = Tiling.TileCount(dim);
        var f = beta == 0 ? accumulateFactor.Take((long)dim * dim) : accumulateFactor.Upload(factor);
        var args = new AccumulateArgs
        {
            Rows = rows, Cols = cols, Dim = dim, HasMask = rowMask.IsEmpty ? 0 : 1, TileCount = tiles,
            Alpha = alpha, Beta = beta,
        };
        var config = new KernelConfig(new Index3D(tiles * (tiles + 1) / 2, 1, 1), new Index3D(Tiling.Threads, Tiling.Threads, 1));
        accumulateKernel.Value(config, accumulateX.Upload(x[..(rows * cols)]), accumulateMask.Upload(rowMask), f, args);
        Download(f, factor, stream);
        Synchronize();
    }

    /// <summary>
    /// One group per upper-triangle tile pair (ti ≤ tj): the rows of X̃ stream through shared memory
    /// <see cref="Tiling.Depth"/> at a time (masked rows and rows past the end read as zero, the
    /// homogeneous column as one), each thread accumulates its 4×4 register tile, and the result is
    /// written to both triangles. Only the upper triangle of F is read (for β), so the mirrored writes
    /// never race with a read.
    /// </summary>
    private static void AccumulateKernel(ArrayView<float> x, ArrayView<byte> mask, ArrayView<float> f, AccumulateArgs p)
    {
        var aTile = SharedMemory.Allocate<float>(Tiling.TileFloats);
        var bTile = SharedMemory.Allocate<float>(Tiling.TileFloats);
        int tx = Group.IdxX, ty = Group.IdxY, thread = ty * Tiling.Threads + tx;
        // Linear group index → (ti, tj) over the rows of the upper triangle of the tile grid.
        int ti = 0, tj = Grid.IdxX, rowLength = p.TileCount;
        while (tj >= rowLength) { tj -= rowLength; ti++; rowLength--; }
        tj += ti;
        int i0 = ti * Tiling.Tile, j0 = tj * Tiling.Tile;
        var acc = new RegisterTile();
        for (int r0 = 0; r0 < p.Rows; r0 += Tiling.Depth)
        {
            for (int e = thread; e < Tiling.TileFloats; e += Tiling.GroupSize)
            {
                int row = r0 + e / Tiling.Tile, column = e % Tiling.Tile;
                aTile[e] = Element(x, mask, p, row, i0 + column);
                bTile[e] = Element(x, mask, p, row, j0 + column);
            }
            Group.Barrier();
            for (int depth = 0; depth < Tiling.Depth; depth++) acc.Multiply(aTile, bTile, depth, tx, ty);
            Group.Barrier();
        }
        for (int i = 0; i < Tiling.PerThread; i++)
        {
            int gi = i0 + ty + i * Tiling.Threads;
            if (gi >= p.Dim) break;
            for (int j = 0; j < Tiling.PerThread; j++)
            {
                int gj = j0 + tx + j * Tiling.Threads;
                if (gj >= p.Dim) break;
                if (gi > gj) continue;
                long upper = (long)gi * p.Dim + gj;
                float value = p.Beta == 0 ? p.Alpha * acc.Get(i, j) : p.Alpha * acc.Get(i, j) + p.Beta * f[upper];
                f[upper] = value;
                f[(long)gj * p.Dim + gi] = value;
            }
        }
    }

    /// <summary>X̃[row, column]: zero past the last row or in a masked row, one in the homogeneous column.</summary>
    private static float Element(ArrayView<float> x, ArrayView<byte> mask, AccumulateArgs p, int row, int column)
    {
        if (row >= p.Rows || column >= p.Dim || (p.HasMask != 0 && mask[row] == 0)) return 0f;
        return column == p.Cols ? 1f : x[(long)row * p.Cols + column];
    }
}

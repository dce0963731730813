using ILGPU;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// The shared-memory tiling of the matrix-product kernels (GEMM and factor accumulation): a group of
/// <see cref="Threads"/>×<see cref="Threads"/> threads computes a <see cref="Tile"/>×<see cref="Tile"/>
/// output tile, <see cref="PerThread"/>² outputs per thread held in registers, stepping through the
/// inner dimension <see cref="Depth"/> at a time. Thread (tx, ty) owns rows ty + Threads·i and columns
/// tx + Threads·j, so its shared-memory reads are broadcast or consecutive (no bank conflicts) and its
/// global stores are coalesced along tx.
/// </summary>
internal static class Tiling
{
    public const int Threads = 16;
    public const int PerThread = 4;
    public const int Tile = Threads * PerThread;
    public const int Depth = 16;
    public const int GroupSize = Threads * Threads;
    /// <summary>Floats in one operand tile ([Depth × Tile], depth-major).</summary>
    public const int TileFloats = Depth * Tile;

    public static int TileCount(int length) => (length + Tile - 1) / Tile;
}

/// <summary>
/// One thread's 4×4 block of accumulators, kept in registers (sixteen scalars: ILGPU has no
/// register arrays). <see cref="Multiply"/> consumes one depth step of two operand tiles.
/// </summary>
internal struct RegisterTile
{
    private float c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33;

    /// <summary>acc += aTile[depth, rows of ty] ⊗ bTile[depth, columns of tx].</summary>
    public void Multiply(ArrayView<float> aTile, ArrayView<float> bTile, int depth, int tx, int ty)
    {
        int ai = depth * Tiling.Tile + ty, bi = depth * Tiling.Tile + tx;
        float a0 = aTile[ai], a1 = aTile[ai + Tiling.Threads], a2 = aTile[ai + 2 * Tiling.Threads], a3 = aTile[ai + 3 * Tiling.Threads];
        float b0 = bTile[bi], b1 = bTile[bi + Tiling.Threads], b2 = bTile[bi + 2 * Tiling.Threads], b3 = bTile[bi + 3 * Tiling.Threads];
        c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
        c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
        c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
        c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
    }

    /// <summary>The accumulator of row ty + Threads·i, column tx + Threads·j.</summary>
    public readonly float Get(int i, int j) => (i * Tiling.PerThread + j) switch
    {
        0 => c00, 1 => c01, 2 => c02, 3 => c03,
        4 => c10, 5 => c11, 6 => c12, 7 => c13,
        8 => c20, 9 => c21, 10 => c22, 11 => c23,
        12 => c30, 13 => c31, 14 => c32, _ => c33,
    };
}

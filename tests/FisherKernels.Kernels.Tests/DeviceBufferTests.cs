using FisherKernels.Backends;
using FisherKernels.Backends.Ilgpu;

namespace FisherKernels.Tests;

public sealed class DeviceBufferTests
{
    [Fact]
    public void Repeated_calls_of_the_same_or_smaller_sizes_allocate_no_device_memory()
    {
        using var backend = IlgpuBackend.CreateCpuEmulator();
        var basis = KronEigenbasis.Create(backend, DiagonallyDominant(7), 7, DiagonallyDominant(5), 5, positions: 10, priorPrecision: 1);
        RunEveryOperation(backend, basis, scale: 2);
        int warm = backend.DeviceAllocations;
        Assert.True(warm > 0);
        RunEveryOperation(backend, basis, scale: 2);
        RunEveryOperation(backend, basis, scale: 1);
        Assert.Equal(warm, backend.DeviceAllocations);
    }

    private static void RunEveryOperation(IComputeBackend backend, KronEigenbasis basis, int scale)
    {
        int n = 20 * scale;
        var rng = new Random(scale);
        float[] Random(int length) => Enumerable.Range(0, length).Select(_ => (float)rng.NextDouble()).ToArray();
        backend.Gemm(new GemmShape(n, n + 3, n - 1, TransB: true, BatchCount: 2, StrideA: n * (n - 1), StrideB: 0, StrideC: n * (n + 3)),
                     Random(2 * n * (n - 1)), Random((n + 3) * (n - 1)), new float[2 * n * (n + 3)]);
        backend.AccumulateFactor(Random(n * 9), n, 9, true, 0.5f, 0.5f, new float[100], Enumerable.Repeat((byte)1, n).ToArray());
        backend.LinearJvp(Random(n * 6), Random(n * 6), Random(4 * 6), Random(4 * 6), Random(4), n, 6, 4, new float[n * 4]);
        backend.KronQuadratic(basis, Random(scale * 35), scale, new float[scale]);
        var d = Random(n).Select(v => v + 1).ToArray();
        backend.WoodburyApply(d, Random(n * 3), Random(3), n, 3, Random(n * 2), 2, new float[n * 2]);
    }

    private static float[] DiagonallyDominant(int n)
    {
        var m = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) m[i * n + j] = i == j ? n : 0.5f / (1 + Math.Abs(i - j));
        return m;
    }
}

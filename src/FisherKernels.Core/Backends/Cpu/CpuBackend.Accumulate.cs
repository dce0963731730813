namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne,
                                 float alpha, float beta, Span<float> factor, ReadOnlySpan<byte> rowMask = default)
        => throw new NotImplementedException();

    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
        => throw new NotImplementedException();
}

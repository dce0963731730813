namespace FisherKernels.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => throw new NotImplementedException();

    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
        => throw new NotImplementedException();

    public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                              ReadOnlySpan<float> b, int k, Span<float> output)
        => throw new NotImplementedException();
}

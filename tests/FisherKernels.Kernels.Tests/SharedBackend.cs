using FisherKernels.Backends;

namespace FisherKernels.Tests;

/// <summary>
/// A backend shared by every test of a conformance class: xunit makes one class instance per test and
/// the suite disposes its backend after each, but opening an ILGPU accelerator (context, emulator
/// threads, kernel compilation) costs seconds. Dispose does nothing; the process owns the backend.
/// </summary>
internal sealed class SharedBackend(IComputeBackend inner) : IComputeBackend
{
    public string Name => inner.Name;
    public string Device => inner.Device;

    public void AccumulateFactor(ReadOnlySpan<float> x, int rows, int cols, bool appendOne, float alpha, float beta,
                                 Span<float> factor, ReadOnlySpan<byte> rowMask = default, bool upperOnly = false)
        => inner.AccumulateFactor(x, rows, cols, appendOne, alpha, beta, factor, rowMask, upperOnly);

    public void Gemm(in GemmShape shape, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c) => inner.Gemm(shape, a, b, c);

    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
        => inner.LinearJvp(x, dx, w, dw, db, rows, inFeatures, outFeatures, dy);

    public void SymmetricEigen(ReadOnlySpan<double> a, int n, Span<double> eigenvalues, Span<double> eigenvectors)
        => inner.SymmetricEigen(a, n, eigenvalues, eigenvectors);

    public void KronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, Span<float> output)
        => inner.KronQuadratic(basis, xs, count, output);

    public void WoodburyApply(ReadOnlySpan<float> d, ReadOnlySpan<float> u, ReadOnlySpan<float> s, int n, int r,
                              ReadOnlySpan<float> b, int k, Span<float> output)
        => inner.WoodburyApply(d, u, s, n, r, b, k, output);

    public void Dispose() { }
}

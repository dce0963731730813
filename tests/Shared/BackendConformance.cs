using FisherKernels.Backends;

namespace FisherKernels.Tests;

/// <summary>
/// The backend conformance suite (ARCHITECTURE.md, "The backend seam"): every backend runs the same
/// cases against the same float64 references on the same seeded random inputs. One partial file per
/// kernel family; each backend's test project derives a sealed class that supplies the backend.
/// </summary>
public abstract partial class BackendConformance : IDisposable
{
    protected BackendConformance(IComputeBackend backend) => Backend = backend;

    protected IComputeBackend Backend { get; }

    /// <summary>Largest dimension the "large" cases use; the ILGPU CPU emulator lowers it.</summary>
    protected virtual int LargeDim => 257;

    /// <summary>Most rows an accumulation case streams (the emulator lowers it; the column shapes are kept).</summary>
    protected virtual int MaxAccumulateRows => int.MaxValue;

    public void Dispose()
    {
        Backend.Dispose();
        GC.SuppressFinalize(this);
    }

    protected static float[] RandomArray(Random rng, long length, float scale = 1f)
    {
        var data = new float[length];
        for (long i = 0; i < length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return data;
    }

    /// <summary>
    /// Scale-aware agreement of a float32 result with a float64 reference: every element within
    /// <paramref name="relative"/>·(max|ref| + tiny) scaled by √(terms summed), the error growth of a float32 dot product.
    /// </summary>
    protected static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, long termsSummed, string what, double relative = 2e-6)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 1e-30;
        foreach (double v in expected) scale = Math.Max(scale, Math.Abs(v));
        double tolerance = relative * scale * Math.Sqrt(Math.Max(1, termsSummed)) * 4;
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(expected[i] - actual[i]);
            if (!(error <= tolerance))
                Assert.Fail($"{what}: element {i} is {actual[i]}, reference {expected[i]} (|Δ| {error:E3} > tolerance {tolerance:E3})");
        }
    }
}

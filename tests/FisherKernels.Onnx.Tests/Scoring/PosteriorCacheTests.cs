using FisherKernels.Backends.Cpu;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Scoring;

/// <summary>The posterior cache behind the C ABI's fk_model_score: decomposed once per curvature file and options.</summary>
public class PosteriorCacheTests
{
    /// <summary>vec(X)ᵀ Σ vec(X) of the first layer for X of all ones: a fingerprint of the factors the posterior was built from.</summary>
    static float Probe(KfacPosterior posterior)
    {
        LayerPosterior layer = posterior.Layers[0];
        var x = new float[layer.GDim * layer.ADim];
        Array.Fill(x, 1f);
        var result = new float[1];
        layer.Quadratic(x, 1, result);
        return result[0];
    }

    [Fact]
    public void ASecondCallReusesThePosteriorAndAChangedFileOrOptionsRebuildIt()
    {
        using var temp = new TempFolder();
        string path = temp.File("c.safetensors");
        File.Copy(Fixtures.Path("gpt2_tiny.kfac.safetensors"), path);
        var lm = LanguageModel.Load(Fixtures.Path("gpt2_tiny.onnx"));
        using var backend = new CpuBackend(threads: 1);
        var cache = new PosteriorCache(lm, backend);
        var options = new PosteriorOptions();

        KfacPosterior first = cache.Get(path, options);
        Assert.Equal(1, cache.Builds);
        Assert.Same(first, cache.Get(path, options));
        Assert.Same(first, cache.Get(path, new PosteriorOptions())); // options compare by value
        Assert.Equal(1, cache.Builds);

        Assert.Equal(2, cache.Get(path, options with { PriorPrecision = 2 }).PriorPrecision);
        Assert.Equal(2, cache.Builds);
        Assert.Contains(cache.Get(path, options with { MemoryBudgetBytes = 20 << 10, Rank = 24 }).Layers, l => l.IsLowRank);
        Assert.Equal(3, cache.Builds);
        float before = Probe(cache.Get(path, options));
        Assert.Equal(4, cache.Builds);

        // Rewritten with other factors of the same model: reloaded, and the new factors are the ones used.
        File.WriteAllBytes(path, File.ReadAllBytes(Fixtures.Path("gpt2_tiny.kfac_targets.safetensors")));
        float after = Probe(cache.Get(path, options));
        Assert.Equal(5, cache.Builds);
        Assert.NotEqual(before, after);
        // Rounding may differ in the last digits (LAPACK's threads are process-wide and other test classes run alongside).
        float expected = Probe(KfacScoring.LoadPosterior(lm, Fixtures.Path("gpt2_tiny.kfac_targets.safetensors"), options, backend, TextWriter.Null).Posterior);
        Assert.True(Math.Abs(after - expected) <= 1e-6f * Math.Abs(expected), $"{after} vs {expected}");
        Assert.True(Math.Abs(after - before) > 1e-5f * Math.Abs(expected), $"{after} vs {before}");

        // Same length and bytes, only a newer write time: rebuilt all the same (the stamp is the key, not the content).
        File.SetLastWriteTimeUtc(path, File.GetLastWriteTimeUtc(path).AddSeconds(1));
        cache.Get(path, options);
        Assert.Equal(6, cache.Builds);
        Assert.Same(cache.Get(path, options), cache.Get(path, options));
        Assert.Equal(6, cache.Builds);

        // A file that went away is an error naming it, never a stale posterior.
        File.Delete(path);
        Assert.Contains(path, Assert.Throws<FisherKernelsException>(() => cache.Get(path, options)).Message);
    }
}

using FisherKernels.Backends.Cpu;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>
/// <see cref="PosteriorCacheFile.LoadOrBuild"/> (SPEC §5): the posterior built once and cached beside the curvature, the same
/// bit for bit when read back (dense and Woodbury layers), and a changed curvature, a truncated or unfitting cache rebuilt.
/// </summary>
public sealed class PosteriorCacheLoadTests : IDisposable
{
    readonly string dir = IO.TestArrays.TempFolder();
    readonly CpuBackend backend = new(threads: 1);

    /// <summary>Small enough that the 3 × 40 layer takes the low-rank (Woodbury) form, the 5 × 4 one the dense form.</summary>
    static readonly PosteriorOptions Options = new() { PriorPrecision = 0.3, Rank = 3, MemoryBudgetBytes = 5000 };

    public void Dispose()
    {
        backend.Dispose();
        Directory.Delete(dir, true);
    }

    static float[] Psd(Random rng, int n, int rank)
    {
        var rows = Enumerable.Range(0, rank).Select(_ => Enumerable.Range(0, n).Select(_ => rng.NextDouble() - 0.5).ToArray()).ToArray();
        var f = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) f[i * n + j] = (float)(rows.Sum(r => r[i] * r[j]) / rank);
        return f;
    }

    string Curvature(int seed, string name = "c.safetensors")
    {
        var rng = new Random(seed);
        string path = Path.Combine(dir, name);
        var dense = new KroneckerBlock("dense", new NdArray<float>([5, 5], Psd(rng, 5, 7)), new NdArray<float>([4, 4], Psd(rng, 4, 7)), true, 7);
        var wide = new KroneckerBlock("wide", new NdArray<float>([3, 3], Psd(rng, 3, 7)), new NdArray<float>([40, 40], Psd(rng, 40, 7)), false, 7);
        new KfacCurvature([dense, wide], "sampled", new string('a', 64), "test").Save(path);
        return path;
    }

    (KfacPosterior Posterior, string Log) Open(string curvature, PosteriorOptions? options = null)
    {
        var log = new StringWriter();
        var posterior = PosteriorCacheFile.LoadOrBuild(KfacCurvature.Load(curvature, null), backend, options ?? Options, log);
        return (posterior, log.ToString());
    }

    /// <summary>Every layer's quadratic form of fixed random X, its log-determinant and one posterior draw: a fingerprint of Σ.</summary>
    static float[] Fingerprint(KfacPosterior posterior)
    {
        var result = new List<float>();
        var rng = new Random(5);
        foreach (LayerPosterior l in posterior.Layers)
        {
            var xs = Enumerable.Range(0, 3 * l.GDim * l.ADim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var q = new float[3];
            l.Quadratic(xs, 3, q);
            var delta = new float[l.GDim * l.ADim];
            l.SamplePerturbation(seed: 1, sample: 0, delta);
            result.AddRange(q);
            result.AddRange(delta);
            result.Add((float)l.LogDeterminant());
        }
        return result.ToArray();
    }

    static string[] Lines(string log) => log.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public void TheFirstRunCachesAndTheNextReadsTheSamePosteriorBitForBit()
    {
        string c = Curvature(1);
        var (built, log) = Open(c);
        Assert.StartsWith($"posterior: decompositions cached in '{c}.posterior' (", Assert.Single(Lines(log)));
        Assert.Equal([false, true], built.Layers.Select(l => l.IsLowRank));
        var (read, log2) = Open(c);
        Assert.StartsWith($"posterior: decompositions read from '{c}.posterior' (", Assert.Single(Lines(log2)));
        Assert.Equal(Fingerprint(built), Fingerprint(read));
        Assert.Equal(Fingerprint(new KfacPosterior(KfacCurvature.Load(c, null), backend, Options)), Fingerprint(read));
        Assert.Equal(built.Describe(), read.Describe());
        // τ is not part of the key: another τ reads the same cache and equals a fresh build under that τ.
        var (otherTau, log3) = Open(c, Options with { PriorPrecision = 2 });
        Assert.StartsWith("posterior: decompositions read from", log3);
        Assert.Equal(Fingerprint(new KfacPosterior(KfacCurvature.Load(c, null), backend, Options with { PriorPrecision = 2 })), Fingerprint(otherTau));
        Assert.NotEqual(Fingerprint(read), Fingerprint(otherTau));
    }

    [Fact]
    public void AChangedCurvatureATruncatedOrAnUnfittingCacheIsRebuilt()
    {
        string c = Curvature(1);
        float[] before = Fingerprint(Open(c).Posterior);
        Curvature(2); // new factors under the same name
        var (changed, log) = Open(c);
        Assert.Equal($"posterior cache '{c}.posterior' belongs to another curvature: rebuilt", Lines(log)[0]);
        Assert.StartsWith($"posterior: decompositions cached in '{c}.posterior' (built in ", Assert.Single(Lines(log)[1..]));
        float[] fresh = Fingerprint(new KfacPosterior(KfacCurvature.Load(c, null), backend, Options));
        Assert.Equal(fresh, Fingerprint(changed));
        Assert.NotEqual(before, fresh);

        string cache = PosteriorCacheFile.PathFor(c);
        byte[] bytes = File.ReadAllBytes(cache);
        File.WriteAllBytes(cache, bytes[..(bytes.Length / 2)]);
        var (truncated, log2) = Open(c);
        Assert.StartsWith($"posterior cache '{c}.posterior' is unreadable", log2);
        Assert.Contains(": rebuilt", log2);
        Assert.Equal(fresh, Fingerprint(truncated));
        Assert.StartsWith("posterior: decompositions read from", Open(c).Log); // rewritten whole

        // Intact and keyed right, but not this curvature's shapes (a cache written by a buggy or foreign tool): rebuilt.
        PosteriorCacheFile.Save(cache, PosteriorCacheFile.TensorDataSha256(c), Options, [new("dense.QA", new NdArray<float>([2, 2], [1, 0, 0, 1]))]);
        var (unfitting, log3) = Open(c);
        Assert.StartsWith($"posterior cache '{c}.posterior' does not fit the curvature (posterior cache tensor 'dense.QA' has shape [2, 2], not [5, 5]): rebuilt", log3);
        Assert.Equal(fresh, Fingerprint(unfitting));
    }

    [Fact]
    public void ACacheThatCannotBeWrittenCostsOneLineAndAGivenCacheOfAnotherCurvatureIsRefused()
    {
        string c = Curvature(1);
        Directory.CreateDirectory(PosteriorCacheFile.PathFor(c)); // the cache's place is taken: it cannot be written
        var (posterior, log) = Open(c);
        string line = Assert.Single(Lines(log));
        Assert.StartsWith($"posterior: not cached (cannot write '{c}.posterior'", line);
        Assert.Equal(Fingerprint(new KfacPosterior(KfacCurvature.Load(c, null), backend, Options)), Fingerprint(posterior));

        string other = Curvature(2, "other.safetensors");
        string otherCache = Path.Combine(dir, "other.posterior");
        Open(other, Options with { CachePath = otherCache });
        byte[] kept = File.ReadAllBytes(otherCache);
        var e = Assert.Throws<FisherKernelsException>(() => Open(c, Options with { CachePath = otherCache }));
        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.StartsWith($"--posterior-cache '{otherCache}' belongs to another curvature (curvature_sha256 {PosteriorCacheFile.TensorDataSha256(other)}; '{c}' has ", e.Message);
        Assert.Equal(kept, File.ReadAllBytes(otherCache)); // not overwritten
    }

    /// <summary>With two threads the layers are decomposed side by side, each on one thread: the same bits as each layer alone on one thread.</summary>
    [Fact]
    public void LayersDecomposedSideBySideEqualEachLayerDecomposedAlone()
    {
        KfacCurvature curvature = KfacCurvature.Load(Curvature(3), null);
        using var two = new CpuBackend(threads: 2);
        var sideBySide = new KfacPosterior(curvature, two, Options).Decompositions().ToList();
        var alone = curvature.Layers.SelectMany(b => new KfacPosterior(new KfacCurvature([b], "sampled", new string('a', 64), "test"), backend, Options).Decompositions()).ToList();
        Assert.Equal(alone.Select(t => t.Key), sideBySide.Select(t => t.Key));
        for (int i = 0; i < alone.Count; i++)
            Assert.Equal(RawArrays.Bytes(alone[i].Value).ToArray(), RawArrays.Bytes(sideBySide[i].Value).ToArray());
    }

    /// <summary>A vocabulary-sized side (50,257² entries, past int and past any .NET array) is one clear line, before any allocation.</summary>
    [Fact]
    public void AnEigendecompositionTooLargeForAnArrayIsRefusedInOneLine()
    {
        var e = Assert.Throws<FisherKernelsException>(() => FisherKernels.Linalg.SymmetricEigensolver.Decompose(ReadOnlySpan<double>.Empty, 50257, default, default, useNative: true));
        Assert.StartsWith("eigendecomposition of [50257 × 50257]: 2525766049 entries exceed", e.Message);
        e = Assert.Throws<FisherKernelsException>(() => FisherKernels.Linalg.SymmetricEigensolver.Decompose(ReadOnlySpan<float>.Empty, 50257, default, default, useNative: true));
        Assert.StartsWith("eigendecomposition of [50257 × 50257]: 2525766049 entries exceed", e.Message);
    }
}

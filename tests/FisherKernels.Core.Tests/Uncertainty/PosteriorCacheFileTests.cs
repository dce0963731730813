using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Uncertainty;

namespace FisherKernels.Tests.Uncertainty;

/// <summary>SPEC §5's posterior cache: keyed by the curvature's tensor data and the options; stale or corrupt ones are never trusted.</summary>
public sealed class PosteriorCacheFileTests : IDisposable
{
    readonly string dir = IO.TestArrays.TempFolder();

    public void Dispose() => Directory.Delete(dir, true);

    static readonly NdArray<float> Basis = new([2, 2], [1, 0, 0, 1]);

    string Curvature(float scale, double? beta = null)
    {
        string path = Path.Combine(dir, "c.safetensors");
        var block = new KroneckerBlock("w", new NdArray<float>([2, 2], [scale, 0, 0, scale]), new NdArray<float>([1, 1], [scale]), true, 10);
        var curvature = new KfacCurvature([block], "sampled", new string('a', 64), "test");
        (beta is double b ? curvature.WithCalibrationBeta(b) : curvature).Save(path);
        return path;
    }

    [Fact]
    public void AFreshCacheLoadsAndMetadataChangesKeepIt()
    {
        string c = Curvature(2);
        var options = new PosteriorOptions();
        string sha = PosteriorCacheFile.TensorDataSha256(c), cache = PosteriorCacheFile.PathFor(c);
        Assert.Null(PosteriorCacheFile.TryLoad(cache, sha, options, out string reason, out _));
        Assert.StartsWith("no posterior cache", reason);
        PosteriorCacheFile.Save(cache, sha, options, [new("w.QA", Basis)]);
        var loaded = PosteriorCacheFile.TryLoad(cache, sha, options, out _, out _);
        Assert.NotNull(loaded);
        Assert.Equal(Basis.Data, ((NdArray<float>)loaded["w.QA"]).Data);
        // calibrate rewrites the curvature's metadata, not its tensors: the cache stays valid. τ is not part of the key.
        Curvature(2, beta: 0.5);
        Assert.NotNull(PosteriorCacheFile.TryLoad(cache, PosteriorCacheFile.TensorDataSha256(c), options with { PriorPrecision = 3 }, out _, out _));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp")); // written atomically
    }

    [Fact]
    public void AnotherCurvatureOtherOptionsOrATruncatedOrAlteredCacheAreNotTrusted()
    {
        string c = Curvature(2), cache = PosteriorCacheFile.PathFor(c);
        var options = new PosteriorOptions { Rank = 8, MemoryBudgetBytes = 1 << 20 };
        string sha = PosteriorCacheFile.TensorDataSha256(c);
        PosteriorCacheFile.Save(cache, sha, options, [new("w.QA", Basis)]);
        Assert.Null(PosteriorCacheFile.TryLoad(cache, sha, options with { Rank = 9 }, out string reason, out _));
        Assert.Equal($"posterior cache '{c}.posterior' was built with --rank 8 --memory-budget 1048576", reason);
        Assert.Null(PosteriorCacheFile.TryLoad(cache, sha, options with { MemoryBudgetBytes = 2 << 20 }, out _, out _));

        Curvature(3); // the curvature changed
        string changed = PosteriorCacheFile.TensorDataSha256(c);
        Assert.Null(PosteriorCacheFile.TryLoad(cache, changed, options, out reason, out string? other));
        Assert.Equal($"posterior cache '{c}.posterior' belongs to another curvature", reason);
        Assert.Equal(sha, other);

        PosteriorCacheFile.Save(cache, changed, options, [new("w.QA", Basis)]);
        byte[] bytes = File.ReadAllBytes(cache);
        File.WriteAllBytes(cache, bytes[..^3]); // truncated
        Assert.Null(PosteriorCacheFile.TryLoad(cache, changed, options, out reason, out _));
        Assert.StartsWith($"posterior cache '{c}.posterior' is unreadable", reason);
        bytes[^1] ^= 0x10; // one data bit flipped: the file still parses
        File.WriteAllBytes(cache, bytes);
        Assert.Null(PosteriorCacheFile.TryLoad(cache, changed, options, out reason, out _));
        Assert.Equal($"posterior cache '{c}.posterior' is corrupt (its tensors do not hash to its content_sha256)", reason);
    }

    [Fact]
    public void TheTensorHashIgnoresTheHeaderAndSeesEveryDataByte()
    {
        string c = Curvature(2);
        string first = PosteriorCacheFile.TensorDataSha256(c);
        Curvature(2, beta: 1.5);
        Assert.Equal(first, PosteriorCacheFile.TensorDataSha256(c));
        byte[] bytes = File.ReadAllBytes(c);
        bytes[^1] ^= 1;
        File.WriteAllBytes(c, bytes);
        Assert.NotEqual(first, PosteriorCacheFile.TensorDataSha256(c));
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes.AsSpan(8 + (int)BitConverter.ToUInt64(bytes, 0)))),
                     PosteriorCacheFile.TensorDataSha256(c));
    }
}

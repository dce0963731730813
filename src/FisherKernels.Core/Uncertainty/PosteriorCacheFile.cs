using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.IO;

namespace FisherKernels.Uncertainty;

/// <summary>
/// The on-disk posterior cache of SPEC §5: the eigendecompositions a curvature <c>C.safetensors</c> needs, written once,
/// atomically, beside it as <c>C.safetensors.posterior</c> (safetensors), tagged with the SHA-256 of the curvature's
/// tensor data (not its metadata, which <c>calibrate</c> rewrites), the options they depend on (<c>--rank</c>,
/// <c>--memory-budget</c>; not τ, which only enters the denominators rebuilt on load) and the SHA-256 of its own tensors.
/// A missing, stale (another curvature or other options), truncated or corrupt cache is rebuilt, never trusted; the
/// tensors themselves are each <see cref="LayerPosterior"/>'s business (<see cref="LayerPosterior.Decomposition"/>).
/// </summary>
public static class PosteriorCacheFile
{
    /// <summary>The cache's format tag; /2 since factors of 512 or more are decomposed in float32 (a /1 cache, all float64, is rebuilt so that a cached run and a fresh one give the same bits).</summary>
    public const string Format = "fisherkernels-posterior/2";

    /// <summary>The cache path beside <paramref name="curvaturePath"/>.</summary>
    public static string PathFor(string curvaturePath) => curvaturePath + ".posterior";

    /// <summary>
    /// The posterior of <paramref name="curvature"/> under <paramref name="options"/>: its decompositions read from the cache
    /// (<see cref="PosteriorOptions.CachePath"/>, else beside the curvature file) when that cache belongs to this curvature and
    /// these options and is intact, else computed and written there. A curvature not read from a file has no cache. A cache
    /// that cannot be written (a read-only folder) costs one line on <paramref name="log"/> and nothing else; a cache given
    /// explicitly that belongs to another curvature is an error (it is someone else's, and is not overwritten).
    /// </summary>
    public static KfacPosterior LoadOrBuild(KfacCurvature curvature, IComputeBackend backend, PosteriorOptions options, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(curvature);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(log);
        options.Validate();
        if (curvature.Source is not { } curvaturePath) return new KfacPosterior(curvature, backend, options);
        string path = options.CachePath ?? PathFor(curvaturePath);
        string curvatureSha = TensorDataSha256(curvaturePath);
        var cached = TryLoad(path, curvatureSha, options, out string reason, out string? otherCurvature);
        if (options.CachePath is not null && otherCurvature is not null)
            throw FisherKernelsException.Argument($"--posterior-cache '{path}' belongs to another curvature (curvature_sha256 {otherCurvature}; '{curvaturePath}' has {curvatureSha}): give this curvature's cache or a new path");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        if (cached is not null)
        {
            try
            {
                var posterior = new KfacPosterior(curvature, backend, options, cached);
                log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"posterior: decompositions read from '{path}' ({clock.Elapsed.TotalSeconds:F1} s)"));
                return posterior;
            }
            catch (FisherKernelsException e)
            {
                reason = $"posterior cache '{path}' does not fit the curvature ({e.Message})";
            }
        }
        // Said only after the build, so that a build that fails (a bad option, a bad factor) leaves its error as the one line.
        string? rebuilt = File.Exists(path) ? $"{reason}: rebuilt" : null;
        clock.Restart();
        var built = new KfacPosterior(curvature, backend, options);
        double seconds = clock.Elapsed.TotalSeconds;
        if (rebuilt is not null) log.WriteLine(rebuilt);
        try
        {
            Save(path, curvatureSha, options, built.Decompositions());
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"posterior: decompositions cached in '{path}' (built in {seconds:F1} s, written in {clock.Elapsed.TotalSeconds - seconds:F1} s)"));
        }
        catch (FisherKernelsException e) when (e.Kind == ErrorKind.Io)
        {
            log.WriteLine($"posterior: not cached ({e.Message}); the next run decomposes again");
        }
        return built;
    }

    /// <summary>
    /// Hex SHA-256 of a safetensors file's data section (everything after its header), streamed: two files with the same
    /// tensors in the same order hash alike whatever their metadata says.
    /// </summary>
    public static string TensorDataSha256(string safetensorsPath)
    {
        using var stream = RawArrays.OpenRead(safetensorsPath);
        Span<byte> lengthField = stackalloc byte[8];
        RawArrays.ReadExactly(stream, lengthField, safetensorsPath, "the header length");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthField);
        if (headerLength > SafetensorsFile.MaxHeaderLength || (long)headerLength > stream.Length - 8)
            throw FisherKernelsException.Format($"{safetensorsPath}: not a safetensors file (header length {headerLength})");
        stream.Seek(8 + (long)headerLength, SeekOrigin.Begin);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/>, atomically, as the cache of the curvature whose tensor data
    /// hashes to <paramref name="curvatureSha256"/> under <paramref name="options"/>.
    /// </summary>
    public static void Save(string path, string curvatureSha256, PosteriorOptions options, IEnumerable<KeyValuePair<string, NdArray>> tensors)
    {
        ArgumentNullException.ThrowIfNull(options);
        var list = tensors.ToList();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = Format,
            ["curvature_sha256"] = curvatureSha256,
            ["rank"] = options.Rank.ToString(CultureInfo.InvariantCulture),
            ["memory_budget"] = options.MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture),
            ["content_sha256"] = ContentSha256(list),
        };
        SafetensorsFile.Write(path, list, metadata);
    }

    /// <summary>
    /// The cached tensors at <paramref name="path"/> for the curvature hashing to <paramref name="curvatureSha256"/> under
    /// <paramref name="options"/>, or null with <paramref name="reason"/> saying why not (no cache, another curvature — its hash
    /// in <paramref name="otherCurvature"/> —, other options, an unreadable, truncated or altered file).
    /// </summary>
    public static IReadOnlyDictionary<string, NdArray>? TryLoad(string path, string curvatureSha256, PosteriorOptions options, out string reason, out string? otherCurvature)
    {
        ArgumentNullException.ThrowIfNull(options);
        otherCurvature = null;
        if (!File.Exists(path))
        {
            reason = $"no posterior cache '{path}'";
            return null;
        }
        SafetensorsFile file;
        try { file = SafetensorsFile.Read(path); }
        catch (FisherKernelsException e)
        {
            reason = $"posterior cache '{path}' is unreadable ({e.Message})";
            return null;
        }
        var meta = file.Metadata;
        string Meta(string key) => meta.TryGetValue(key, out string? v) ? v : "";
        if (Meta("format") != Format) reason = $"posterior cache '{path}' has format '{Meta("format")}', not '{Format}'";
        else if (Meta("curvature_sha256") != curvatureSha256)
        {
            otherCurvature = Meta("curvature_sha256");
            reason = $"posterior cache '{path}' belongs to another curvature";
        }
        else if (Meta("rank") != options.Rank.ToString(CultureInfo.InvariantCulture) || Meta("memory_budget") != options.MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture))
            reason = $"posterior cache '{path}' was built with --rank {Meta("rank")} --memory-budget {Meta("memory_budget")}";
        else if (Meta("content_sha256") != ContentSha256(file.Tensors))
            reason = $"posterior cache '{path}' is corrupt (its tensors do not hash to its content_sha256)";
        else
        {
            reason = "";
            return file.Tensors;
        }
        return null;
    }

    /// <summary>SHA-256 over every tensor in name order: its name, element type, shape and bytes (independent of the file's layout).</summary>
    static string ContentSha256(IEnumerable<KeyValuePair<string, NdArray>> tensors)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, array) in tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            hash.AppendData(Encoding.UTF8.GetBytes($"{name}\0{array.ElementType}\0{ShapeUtil.Format(array.Shape)}\0"));
            hash.AppendData(RawArrays.Bytes(array));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}

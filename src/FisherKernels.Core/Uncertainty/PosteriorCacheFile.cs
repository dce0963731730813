using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using FisherKernels.IO;

namespace FisherKernels.Uncertainty;

/// <summary>
/// The on-disk posterior cache of SPEC §5: the eigendecompositions a curvature <c>C.safetensors</c> needs, written once,
/// atomically, beside it as <c>C.safetensors.posterior</c> (safetensors), tagged with the SHA-256 of the curvature's
/// tensor data (not its metadata, which <c>calibrate</c> rewrites) and the options they depend on (<c>--rank</c>,
/// <c>--memory-budget</c>; not τ). <see cref="TryLoad"/> answers null, with the reason, for a missing, stale (another
/// curvature or other options) or corrupt cache: it is rebuilt, never trusted. What the tensors are is the posterior's
/// business; this class only keys, writes and checks them.
/// </summary>
public static class PosteriorCacheFile
{
    public const string Format = "fisherkernels-posterior/1";

    /// <summary>The cache path beside <paramref name="curvaturePath"/>.</summary>
    public static string PathFor(string curvaturePath) => curvaturePath + ".posterior";

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

    /// <summary>Writes <paramref name="tensors"/> as the cache of <paramref name="curvaturePath"/> for <paramref name="options"/>, atomically.</summary>
    public static void Save(string curvaturePath, PosteriorOptions options, IEnumerable<KeyValuePair<string, NdArray>> tensors)
    {
        ArgumentNullException.ThrowIfNull(options);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = Format,
            ["curvature_sha256"] = TensorDataSha256(curvaturePath),
            ["rank"] = options.Rank.ToString(CultureInfo.InvariantCulture),
            ["memory_budget"] = options.MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture),
        };
        SafetensorsFile.Write(PathFor(curvaturePath), tensors, metadata);
    }

    /// <summary>
    /// The cached tensors of <paramref name="curvaturePath"/> for <paramref name="options"/>, or null with
    /// <paramref name="reason"/> saying why not (no cache, another curvature, other options, an unreadable file).
    /// </summary>
    public static IReadOnlyDictionary<string, NdArray>? TryLoad(string curvaturePath, PosteriorOptions options, out string reason)
    {
        ArgumentNullException.ThrowIfNull(options);
        string path = PathFor(curvaturePath);
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
        else if (Meta("curvature_sha256") != TensorDataSha256(curvaturePath)) reason = $"posterior cache '{path}' belongs to another curvature";
        else if (Meta("rank") != options.Rank.ToString(CultureInfo.InvariantCulture) || Meta("memory_budget") != options.MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture))
            reason = $"posterior cache '{path}' was built with --rank {Meta("rank")} --memory-budget {Meta("memory_budget")}";
        else
        {
            reason = "";
            return file.Tensors;
        }
        return null;
    }
}

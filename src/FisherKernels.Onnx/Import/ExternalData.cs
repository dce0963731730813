using System.IO.MemoryMappedFiles;
using FisherKernels.Onnx.Proto;

namespace FisherKernels.Onnx.Import;

/// <summary>
/// Tensor data stored outside the model (<c>data_location = EXTERNAL</c>): files are resolved
/// against the model's folder, must stay inside it, and are memory-mapped once each while the
/// model is imported.
/// </summary>
internal sealed class ExternalData(string modelPath) : IDisposable
{
    private readonly string folder = Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
    private readonly Dictionary<string, (MemoryMappedFile File, MemoryMappedViewAccessor View, long Length)> files = [];

    public unsafe ReadOnlySpan<byte> Read(TensorProto tensor, string what, long expectedBytes)
    {
        string? location = null;
        long offset = 0, length = -1;
        foreach (var entry in tensor.ExternalData)
        {
            switch (entry.Key)
            {
                case "location": location = entry.Value; break;
                case "offset": offset = ParseNumber(entry.Value, "offset", what); break;
                case "length": length = ParseNumber(entry.Value, "length", what); break;
            }
        }
        if (string.IsNullOrEmpty(location))
            throw FisherKernelsException.Format($"{what}: external data without a location");
        if (length < 0) length = expectedBytes;
        if (length != expectedBytes)
            throw FisherKernelsException.Format($"{what}: external data length {length} does not match its shape ({expectedBytes} bytes)");

        string path = Resolve(location, what);
        var (_, view, fileLength) = Open(path, location, what);
        if (offset + length > fileLength)
            throw FisherKernelsException.Format($"{what}: external data '{location}' holds {fileLength} bytes, the tensor needs bytes {offset}..{offset + length} (truncated file?)");
        if (length > int.MaxValue)
            throw FisherKernelsException.Unsupported($"{what}: external tensor of {length} bytes is larger than 2 GiB");
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        try { return new ReadOnlySpan<byte>(pointer + view.PointerOffset + offset, (int)length).ToArray(); }
        finally { view.SafeMemoryMappedViewHandle.ReleasePointer(); }
    }

    private string Resolve(string location, string what)
    {
        string full;
        try
        {
            if (Path.IsPathRooted(location)) throw new ArgumentException("absolute path");
            full = Path.GetFullPath(Path.Combine(folder, location));
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw FisherKernelsException.Format($"{what}: external data location '{location}' is not a relative path inside the model's folder (outside paths are refused)");
        }
        string root = folder.EndsWith(Path.DirectorySeparatorChar) ? folder : folder + Path.DirectorySeparatorChar;
        if (!full.StartsWith(root, StringComparison.Ordinal))
            throw FisherKernelsException.Format($"{what}: external data location '{location}' points outside the model's folder '{folder}'");
        // A link inside the folder could still lead out of it.
        var info = new FileInfo(full);
        if (info.Exists && info.LinkTarget is not null)
        {
            string target = info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
            if (!target.StartsWith(root, StringComparison.Ordinal))
                throw FisherKernelsException.Format($"{what}: external data location '{location}' is a link to '{target}', outside the model's folder");
        }
        return full;
    }

    private (MemoryMappedFile, MemoryMappedViewAccessor, long) Open(string path, string location, string what)
    {
        if (files.TryGetValue(path, out var open)) return open;
        if (!File.Exists(path))
            throw FisherKernelsException.Io($"{what}: external data file '{path}' not found (location '{location}')");
        try
        {
            long length = new FileInfo(path).Length;
            if (length == 0)
                throw FisherKernelsException.Format($"{what}: external data file '{path}' is empty");
            var file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            var view = file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            files[path] = (file, view, length);
            return (file, view, length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw FisherKernelsException.Io($"{what}: cannot read external data file '{path}': {e.Message}", e);
        }
    }

    private static long ParseNumber(string text, string key, string what) =>
        long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long v)
            ? v : throw FisherKernelsException.Format($"{what}: external data {key} '{text}' is not a non-negative integer");

    public void Dispose()
    {
        foreach (var (file, view, _) in files.Values) { view.Dispose(); file.Dispose(); }
        files.Clear();
    }
}

namespace FisherKernels.IO;

/// <summary>
/// Writes an output file so that an interrupted run leaves either the old file or the complete new
/// one, never a half-written file (SPEC §5): the content goes to a temporary file in the destination
/// folder (same file system, so the rename is atomic) and is renamed into place when complete.
/// </summary>
public static class AtomicFile
{
    /// <summary>
    /// Calls <paramref name="write"/> with a stream on a temporary file beside <paramref name="path"/>,
    /// flushes it to disk and renames it to <paramref name="path"/> (replacing an existing file).
    /// On any exception the temporary file is deleted and the exception propagates; I/O failures
    /// become <see cref="ErrorKind.Io"/> errors naming <paramref name="path"/>.
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        string fullPath = CheckDestination(path);
        string folder = Path.GetDirectoryName(fullPath)!;
        string temp = Path.Combine(folder, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, fullPath, overwrite: true);
        }
        catch (Exception e)
        {
            TryDelete(temp);
            if (e is IOException or UnauthorizedAccessException or System.Security.SecurityException)
                throw FisherKernelsException.Io($"cannot write '{path}': {e.Message}", e);
            throw;
        }
    }

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/> atomically.</summary>
    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        byte[] copy = bytes.ToArray();
        Write(path, s => s.Write(copy));
    }

    static string CheckDestination(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw FisherKernelsException.Argument("output path is empty");
        string fullPath;
        try { fullPath = Path.GetFullPath(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw FisherKernelsException.Io($"cannot write '{path}': invalid path ({e.Message})", e);
        }
        if (Directory.Exists(fullPath)) throw FisherKernelsException.Io($"cannot write '{path}': it is a folder");
        string? folder = Path.GetDirectoryName(fullPath);
        if (folder is null || !Directory.Exists(folder))
            throw FisherKernelsException.Io($"cannot write '{path}': folder '{folder ?? path}' does not exist");
        return fullPath;
    }

    static void TryDelete(string temp)
    {
        try { File.Delete(temp); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace FisherKernels.Text;

/// <summary>
/// <c>--text FILE|-</c> (SPEC §1): strict UTF-8, then each non-empty line is one sequence (taken as it is, without its line
/// break; "\r\n" is one line break) or, with <c>--document</c>, the whole text is one.
/// </summary>
public static class TextInput
{
    /// <summary>Reads <paramref name="path"/> ("-" = standard input) as UTF-8; invalid bytes are an error naming their offset.</summary>
    public static string Read(string path, Stream? standardInput = null)
    {
        string name = path == "-" ? "standard input" : $"'{path}'";
        byte[] bytes;
        try
        {
            if (path == "-")
            {
                using var buffer = new MemoryStream();
                (standardInput ?? Console.OpenStandardInput()).CopyTo(buffer);
                bytes = buffer.ToArray();
            }
            else bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw FisherKernelsException.Io($"--text {name}: {e.Message}", e);
        }
        return Decode(bytes, name);
    }

    /// <summary>Strict UTF-8 decoding (a leading byte-order mark is dropped).</summary>
    public static string Decode(ReadOnlySpan<byte> bytes, string name)
    {
        int offset = bytes.StartsWith("\uFEFF"u8) ? 3 : 0;
        var chars = new char[bytes.Length];
        var status = Utf8.ToUtf16(bytes[offset..], chars, out int read, out int written, replaceInvalidSequences: false);
        if (status != OperationStatus.Done)
            throw FisherKernelsException.Format($"--text {name}: invalid UTF-8 at byte offset {offset + read} (byte 0x{bytes[offset + read]:X2})");
        return new string(chars, 0, written);
    }

    /// <summary>The sequences of <paramref name="text"/>: its non-empty lines, or the whole text with <paramref name="document"/>.</summary>
    public static IReadOnlyList<string> Sequences(string text, bool document, string name)
    {
        var result = document ? (text.Length > 0 ? [text] : new List<string>())
            : text.Split('\n').Select(line => line.EndsWith('\r') ? line[..^1] : line).Where(line => line.Length > 0).ToList();
        if (result.Count == 0)
            throw FisherKernelsException.Argument($"--text {(name == "-" ? "standard input" : $"'{name}'")}: no text ({(text.Length == 0 ? "the file is empty" : "only empty lines")})");
        return result;
    }
}

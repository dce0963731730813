using System.Text;

namespace FisherKernels.Text.Tokenization;

/// <summary>GPT-2's byte-to-character table: byte-level vocabularies spell each UTF-8 byte as one printable char.</summary>
public static class ByteLevelSymbols
{
    static readonly char[] ByteToChar = Build();
    static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    static char[] Build()
    {
        var map = new char[256];
        var taken = new bool[256];
        foreach (var (from, to) in new[] { ('!', '~'), ('\u00A1', '\u00AC'), ('\u00AE', '\u00FF') })
            for (int b = from; b <= to; b++) { map[b] = (char)b; taken[b] = true; }
        int next = 0;
        for (int b = 0; b < 256; b++)
            if (!taken[b]) map[b] = (char)(256 + next++);
        return map;
    }

    public static char Of(byte b) => ByteToChar[b];

    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    public static string Encode(string text) => Encode(Encoding.UTF8.GetBytes(text));

    /// <summary>The bytes a byte-level symbol string stands for; false when a char is not one of the 256 symbols.</summary>
    public static bool TryDecode(string symbols, List<byte> bytes)
    {
        foreach (char c in symbols)
        {
            if (!CharToByte.TryGetValue(c, out byte b)) return false;
            bytes.Add(b);
        }
        return true;
    }
}

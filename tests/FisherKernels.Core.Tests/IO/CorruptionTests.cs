using System.Buffers.Binary;
using System.Text;
using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

/// <summary>Damaged files never crash or hang a reader: they are read (when the damage leaves a valid file) or refused with a FisherKernelsException.</summary>
public class CorruptionTests
{
    static byte[] ValidNpy(int version = 1)
    {
        using var s = new MemoryStream();
        NpyFile.Write(s, new NdArray<float>([3, 2], [1, 2, 3, 4, 5, 6]));
        byte[] v1 = s.ToArray();
        if (version == 1) return v1;
        // Versions 2 and 3 differ only in a 4-byte header length.
        int headerLength = v1[8] | v1[9] << 8;
        var bytes = new byte[v1.Length + 2];
        v1.AsSpan(0, 8).CopyTo(bytes);
        bytes[6] = (byte)version;
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), (uint)headerLength);
        v1.AsSpan(10).CopyTo(bytes.AsSpan(12));
        return bytes;
    }

    static byte[] ValidSafetensors()
    {
        using var s = new MemoryStream();
        SafetensorsFile.Write(s, new Dictionary<string, NdArray>
        {
            ["a.A"] = new NdArray<float>([2, 2], [1, 2, 2, 5]),
            ["b"] = new NdArray<long>([3], [7, -8, 9]),
            ["c"] = new NdArray<Half>([0, 4]),
        }, new Dictionary<string, string> { ["format"] = "fisherkernels/1" });
        return s.ToArray();
    }

    static void ReadOrRefuse(Func<Stream, object> read, byte[] bytes, string what)
    {
        try { read(new MemoryStream(bytes, writable: false)); }
        catch (FisherKernelsException e) when (e.Kind is ErrorKind.Format or ErrorKind.Unsupported or ErrorKind.Io) { }
        catch (Exception e) { Assert.Fail($"{what}: {e.GetType().Name}: {e.Message}"); }
    }

    static readonly Func<Stream, object> ReadNpy = s => NpyFile.Read(s, "c.npy");
    static readonly Func<Stream, object> ReadSafetensors = s => SafetensorsFile.Read(s, "c.safetensors");

    [Fact]
    public void EveryTruncationIsRefused()
    {
        foreach (var (read, valid) in new[] { (ReadNpy, ValidNpy(1)), (ReadNpy, ValidNpy(2)), (ReadNpy, ValidNpy(3)), (ReadSafetensors, ValidSafetensors()) })
        {
            read(new MemoryStream(valid));
            for (int length = 0; length < valid.Length; length++)
            {
                var e = Assert.Throws<FisherKernelsException>(() => read(new MemoryStream(valid, 0, length)));
                Assert.True(e.Kind is ErrorKind.Format or ErrorKind.Unsupported, $"truncated at {length}: {e.Kind} {e.Message}");
            }
        }
    }

    [Fact]
    public void RandomByteDamageNeverCrashes()
    {
        var rng = new Random(7);
        foreach (var (read, valid) in new[] { (ReadNpy, ValidNpy(1)), (ReadNpy, ValidNpy(3)), (ReadSafetensors, ValidSafetensors()) })
        {
            for (int trial = 0; trial < 3000; trial++)
            {
                byte[] bytes = (byte[])valid.Clone();
                int flips = rng.Next(1, 4);
                for (int f = 0; f < flips; f++)
                {
                    // Mostly the header, where damage changes the meaning.
                    int at = rng.Next(3) == 0 ? rng.Next(bytes.Length) : rng.Next(Math.Min(bytes.Length, 160));
                    bytes[at] = rng.Next(2) == 0 ? (byte)rng.Next(256) : (byte)(bytes[at] ^ (1 << rng.Next(8)));
                }
                ReadOrRefuse(read, bytes, $"trial {trial}");
            }
        }
    }

    [Fact]
    public void HeaderGarbageNeverCrashes()
    {
        var rng = new Random(11);
        const string alphabet = "{}[](),:'\" 0123456789-.eE\nLTrueFalsdscrhpotyF32I64BF16_metadata\\\u00e9";
        for (int trial = 0; trial < 3000; trial++)
        {
            var text = new StringBuilder();
            int length = rng.Next(0, 80);
            for (int i = 0; i < length; i++) text.Append(alphabet[rng.Next(alphabet.Length)]);
            byte[] header = Encoding.UTF8.GetBytes(text.ToString());
            byte[] data = new byte[rng.Next(0, 40)];

            var npy = new MemoryStream();
            npy.WriteByte(0x93); npy.Write("NUMPY"u8); npy.WriteByte(1); npy.WriteByte(0);
            npy.WriteByte((byte)header.Length); npy.WriteByte(0);
            npy.Write(header); npy.Write(data);
            ReadOrRefuse(ReadNpy, npy.ToArray(), $"npy header '{text}'");

            ReadOrRefuse(ReadSafetensors, SafetensorsFileTests.Build(text.ToString(), data), $"safetensors header '{text}'");
        }
    }

    [Fact]
    public void HugeClaimsAreRefusedWithoutAllocating()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        string[] npyHeaders =
        [
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2147483647, 2147483647), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000), }",
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2147483647,), }",
        ];
        foreach (string header in npyHeaders)
        {
            var s = new MemoryStream();
            s.WriteByte(0x93); s.Write("NUMPY"u8); s.WriteByte(1); s.WriteByte(0);
            s.WriteByte((byte)header.Length); s.WriteByte(0);
            s.Write(Encoding.ASCII.GetBytes(header));
            s.Write(new byte[16]);
            Assert.Equal(ErrorKind.Format, Assert.Throws<FisherKernelsException>(() => NpyFile.Read(new MemoryStream(s.ToArray()))).Kind);
        }
        string[] safetensorsHeaders =
        [
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1000000,1000],\"data_offsets\":[0,4000000000]}}",
            "{\"x\":{\"dtype\":\"U8\",\"shape\":[2147483647],\"data_offsets\":[0,2147483647]}}",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[9223372036854775799,9223372036854775807]}}",
        ];
        foreach (string header in safetensorsHeaders)
            Assert.Equal(ErrorKind.Format, Assert.Throws<FisherKernelsException>(() => SafetensorsFile.Read(new MemoryStream(SafetensorsFileTests.Build(header, new byte[16])))).Kind);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 10_000_000, "a refused header must not allocate what it claims");
    }
}

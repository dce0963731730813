using System.Text;
using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

public class NpyFileTests
{
    [Fact]
    public void RandomArraysRoundTripThroughStreams()
    {
        var rng = new Random(1234);
        for (int trial = 0; trial < 400; trial++)
        {
            ElementType type = TestArrays.StorableTypes[trial % TestArrays.StorableTypes.Length];
            NdArray array = TestArrays.Random(rng, type);
            using var stream = new MemoryStream();
            NpyFile.Write(stream, array);
            Assert.Equal(0, (stream.Length - array.Length * ElementTypes.SizeOf(type)) % 64);
            stream.Position = 0;
            TestArrays.AssertIdentical(array, NpyFile.Read(stream), $"trial {trial} {type}");
        }
    }

    [Fact]
    public void FileRoundTripAndConvertingReaders()
    {
        string dir = TestArrays.TempFolder();
        try
        {
            string path = Path.Combine(dir, "a.npy");
            var halves = new NdArray<Half>([2, 3], [(Half)1.5, (Half)(-2), (Half)0.25, Half.MaxValue, (Half)0, (Half)3]);
            NpyFile.Write(path, halves);
            TestArrays.AssertIdentical(halves, NpyFile.Read(path));
            NdArray<float> f = NpyFile.ReadFloat32(path);
            Assert.Equal([1.5f, -2f, 0.25f, 65504f, 0f, 3f], f.Data);

            NpyFile.Write(path, new NdArray<double>([3], [1e-3, -7.25, 1e300]));
            Assert.Equal([1e-3f, -7.25f, float.PositiveInfinity], NpyFile.ReadFloat32(path).Data);

            NpyFile.Write(path, new NdArray<int>([1, 3], [-100, 5, int.MaxValue]));
            NdArray<long> tokens = NpyFile.ReadInt64(path);
            Assert.Equal([1, 3], tokens.Shape);
            Assert.Equal([-100L, 5L, int.MaxValue], tokens.Data);

            var e = Assert.Throws<FisherKernelsException>(() => NpyFile.ReadFloat32(path));
            Assert.Contains(path, e.Message);
            Assert.Contains("Int32", e.Message);

            NpyFile.Write(path, new NdArray<float>([2], [1, 2]));
            e = Assert.Throws<FisherKernelsException>(() => NpyFile.ReadInt64(path));
            Assert.Equal(ErrorKind.Format, e.Kind);
            Assert.Contains(path, e.Message);
            Assert.Contains("Float32", e.Message);
            Assert.DoesNotContain(Directory.GetFiles(dir), p => p.EndsWith(".tmp", StringComparison.Ordinal));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Blocks of rows (a fit's batches) equal the same rows of the whole array, int32 widened; bad ranges and types are refused.</summary>
    [Fact]
    public void RowBlocksAreTheRowsOfTheWholeArray()
    {
        string dir = TestArrays.TempFolder();
        try
        {
            string path = Path.Combine(dir, "t.npy");
            var whole = new NdArray<int>([5, 3], Enumerable.Range(0, 15).Select(i => i * 7 - 20).ToArray());
            NpyFile.Write(path, whole);
            using (NpyRows rows = NpyFile.OpenRows(path))
            {
                Assert.Equal([5, 3], rows.Shape);
                foreach (var (first, count) in new[] { (0, 2), (2, 2), (4, 1), (1, 4), (5, 0), (0, 5) })
                {
                    NdArray<long> block = rows.ReadInt64(first, count);
                    Assert.Equal([count, 3], block.Shape);
                    Assert.Equal(whole.Data[(first * 3)..((first + count) * 3)].Select(v => (long)v), block.Data);
                }
                Assert.Contains("rows 4..5 are outside its 5 rows", Assert.Throws<FisherKernelsException>(() => rows.ReadInt64(4, 2)).Message);
                Assert.Contains(path, Assert.Throws<FisherKernelsException>(() => rows.ReadInt64(-1, 1)).Message);
            }
            NpyFile.Write(path, new NdArray<long>([2, 2], [long.MaxValue, -100, 0, 1]));
            using (NpyRows rows = NpyFile.OpenRows(path)) Assert.Equal([0L, 1L], rows.ReadInt64(1, 1).Data);

            NpyFile.Write(path, new NdArray<float>([2], [1, 2]));
            var e = Assert.Throws<FisherKernelsException>(() => NpyFile.OpenRows(path));
            Assert.Equal($"{path}: expected an int32 or int64 array, found Float32", e.Message);
            File.WriteAllBytes(path, File.ReadAllBytes(path)[..^1]);
            Assert.Contains("needs 8 data bytes, the file has 7", Assert.Throws<FisherKernelsException>(() => NpyFile.OpenRows(path)).Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void HeaderIsWhatNumpyWrites()
    {
        using var stream = new MemoryStream();
        NpyFile.Write(stream, new NdArray<float>([2, 3]));
        byte[] bytes = stream.ToArray();
        Assert.Equal(1, bytes[6]);
        Assert.Equal(0, bytes[7]);
        int length = bytes[8] | bytes[9] << 8;
        string header = Encoding.ASCII.GetString(bytes, 10, length);
        Assert.StartsWith("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", header);
        Assert.EndsWith("\n", header);
        Assert.Equal(0, (10 + length) % 64);
        Assert.Equal(10 + length + 24, bytes.Length);
    }

    static byte[] Npy(string header, int version = 1, int dataBytes = 0)
    {
        byte[] h = Encoding.Latin1.GetBytes(header);
        var s = new MemoryStream();
        s.WriteByte(0x93); s.Write("NUMPY"u8);
        s.WriteByte((byte)version);
        s.WriteByte(0);
        if (version == 1) { s.WriteByte((byte)h.Length); s.WriteByte((byte)(h.Length >> 8)); }
        else s.Write(BitConverter.GetBytes(h.Length));
        s.Write(h);
        s.Write(new byte[dataBytes]);
        return s.ToArray();
    }

    static FisherKernelsException Refuse(byte[] file)
    {
        using var stream = new MemoryStream(file);
        return Assert.Throws<FisherKernelsException>(() => NpyFile.Read(stream, "x.npy"));
    }

    [Fact]
    public void ReadsVersions2And3AndHeaderVariants()
    {
        foreach (int version in new[] { 1, 2, 3 })
        {
            using var s = new MemoryStream(Npy("{\"shape\": (2L,), \"fortran_order\": False, \"descr\": \"<i8\"}\n", version, 16));
            NdArray a = NpyFile.Read(s);
            Assert.Equal(ElementType.Int64, a.ElementType);
            Assert.Equal([2], a.Shape);
        }
        using var fortranVector = new MemoryStream(Npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 3, 1), }", 1, 12));
        Assert.Equal([1, 3, 1], NpyFile.Read(fortranVector).Shape);
        using var scalar = new MemoryStream(Npy("{'descr': '|b1', 'fortran_order': False, 'shape': ()}", 1, 1));
        Assert.Equal(0, NpyFile.Read(scalar).Rank);
    }

    [Theory]
    [InlineData("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, ErrorKind.Unsupported, "Fortran")]
    [InlineData("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", 16, ErrorKind.Unsupported, "big-endian")]
    [InlineData("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 2), }", 32, ErrorKind.Unsupported, "<c8")]
    [InlineData("{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }", 32, ErrorKind.Unsupported, "|O")]
    [InlineData("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, ErrorKind.Unsupported, "structured")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 15, ErrorKind.Format, "needs 16 data bytes")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 17, ErrorKind.Format, "needs 16 data bytes")]
    [InlineData("{'descr': '<f4', 'fortran_order': False}", 4, ErrorKind.Format, "must contain")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", 4, ErrorKind.Format, "unexpected key 'extra'")]
    [InlineData("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 4, ErrorKind.Format, "twice")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", 4, ErrorKind.Format, "non-negative")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (4)}", 16, ErrorKind.Format, "trailing comma")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999,)}", 4, ErrorKind.Format, "too large")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2147483647, 2147483647, 2147483647)}", 4, ErrorKind.Format, "too large")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2147483647, 1000000)}", 4, ErrorKind.Format, "needs 8589934588000000 data bytes")]
    [InlineData("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", 4, ErrorKind.Format, "True or False")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk", 4, ErrorKind.Format, "after the header")]
    [InlineData("{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", 4, ErrorKind.Format, "header")]
    [InlineData("", 0, ErrorKind.Format, "expected '{'")]
    public void RefusesBadHeaders(string header, int dataBytes, ErrorKind kind, string messagePart)
    {
        var e = Refuse(Npy(header, 1, dataBytes));
        Assert.Equal(kind, e.Kind);
        Assert.Contains(messagePart, e.Message);
        Assert.Contains("x.npy", e.Message);
    }

    [Fact]
    public void RefusesBadPrefixes()
    {
        byte[] good = Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 1, 4);
        byte[] badMagic = (byte[])good.Clone(); badMagic[1] = (byte)'n';
        Assert.Contains("magic", Refuse(badMagic).Message);
        byte[] badVersion = (byte[])good.Clone(); badVersion[6] = 4;
        Assert.Equal(ErrorKind.Unsupported, Refuse(badVersion).Kind);
        byte[] hugeHeader = Npy("{}", 2);
        BitConverter.GetBytes(uint.MaxValue).CopyTo(hugeHeader, 8);
        Assert.Contains("header length", Refuse(hugeHeader).Message);
        Assert.Contains("not an .npy file", Refuse([0x93, (byte)'N']).Message);
        var e = Assert.Throws<FisherKernelsException>(() => NpyFile.Read("/nonexistent/folder/t.npy"));
        Assert.Equal(ErrorKind.Io, e.Kind);
        Assert.Contains("/nonexistent/folder/t.npy", e.Message);
    }

    [Fact]
    public void NonzeroBoolBytesReadAsTrue()
    {
        byte[] file = Npy("{'descr': '|b1', 'fortran_order': False, 'shape': (3,)}", 1, 3);
        file[^3] = 0; file[^2] = 7; file[^1] = 255;
        using var s = new MemoryStream(file);
        var a = (NdArray<bool>)NpyFile.Read(s);
        Assert.Equal([false, true, true], a.Data);
        Assert.True(a.Data[1] == a.Data[2]);
    }
}

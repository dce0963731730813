using System.Buffers.Binary;
using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

/// <summary>The chunked paths that keep arrays over 2 GiB working, exercised with tiny chunks.</summary>
public class RawArraysTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(12)]
    [InlineData(1 << 20)]
    public void ChunkedWriteAndReadMatchTheBytes(int chunkBytes)
    {
        var rng = new Random(chunkBytes);
        foreach (ElementType type in TestArrays.StorableTypes)
        {
            NdArray array = TestArrays.Random(rng, type, [rng.Next(1, 40), 3]);
            var stream = new MemoryStream();
            RawArrays.Write(stream, array, chunkBytes);
            Assert.Equal(RawArrays.Bytes(array).ToArray(), stream.ToArray());
            stream.Position = 0;
            NdArray back = RawArrays.Allocate(type, array.Shape);
            RawArrays.Read(stream, back, "s", "data", chunkBytes);
            TestArrays.AssertIdentical(array, back);
            var e = Assert.Throws<FisherKernelsException>(() => RawArrays.Read(new MemoryStream(stream.ToArray()[..^1]), back, "s", "data", chunkBytes));
            Assert.Contains("truncated", e.Message);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(1 << 20)]
    public void ChunkedBFloat16WidensExactly(int chunkBytes)
    {
        var rng = new Random(3);
        var expected = new float[101];
        var bytes = new byte[2 * expected.Length];
        for (int i = 0; i < expected.Length; i++)
        {
            ushort bits = (ushort)rng.Next(0, 0x7F80);
            BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), bits);
            expected[i] = BitConverter.UInt32BitsToSingle((uint)bits << 16);
        }
        var target = new float[expected.Length];
        RawArrays.ReadBFloat16(new MemoryStream(bytes), target, "s", "data", chunkBytes);
        Assert.Equal(expected, target);
    }
}

using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

/// <summary>Random arrays of every storable type and shape, and exact comparison of arrays.</summary>
internal static class TestArrays
{
    public static readonly ElementType[] StorableTypes =
    [
        ElementType.Float32, ElementType.Float64, ElementType.Float16, ElementType.Int32,
        ElementType.Int64, ElementType.Bool, ElementType.UInt8, ElementType.Int8,
    ];

    /// <summary>Rank 0..4, dimensions 0..5 (zero-length dims included), random bytes (bools 0/1).</summary>
    public static NdArray Random(Random rng, ElementType type)
    {
        int rank = rng.Next(0, 5);
        var shape = new int[rank];
        for (int i = 0; i < rank; i++) shape[i] = rng.Next(0, 10) == 0 ? 0 : rng.Next(1, 6);
        return Random(rng, type, shape);
    }

    public static NdArray Random(Random rng, ElementType type, int[] shape)
    {
        NdArray array = RawArrays.Allocate(type, shape);
        Span<byte> bytes = RawArrays.Bytes(array);
        rng.NextBytes(bytes);
        RawArrays.NormalizeBools(array);
        return array;
    }

    /// <summary>Same type, same shape, same bytes (so NaN payloads count too).</summary>
    public static void AssertIdentical(NdArray expected, NdArray actual, string what = "")
    {
        Assert.Equal(expected.ElementType, actual.ElementType);
        Assert.True(expected.Shape.AsSpan().SequenceEqual(actual.Shape), $"{what}: shape [{ShapeUtil.Format(expected.Shape)}] read back as [{ShapeUtil.Format(actual.Shape)}]");
        Assert.True(RawArrays.Bytes(expected).SequenceEqual(RawArrays.Bytes(actual)), $"{what}: data differs");
    }

    public static string TempFolder()
    {
        string dir = Path.Combine(Path.GetTempPath(), "fk-io-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}

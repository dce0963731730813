using FisherKernels.Curvature;

namespace FisherKernels.Tests.Curvature;

public class KroneckerBlockTests
{
    /// <summary>Float64 reference: (1/M) Σ r rᵀ over the given rows, with a trailing 1 when <paramref name="appendOne"/>.</summary>
    internal static double[] MeanOuter(double[][] rows, bool appendOne)
    {
        int n = rows[0].Length + (appendOne ? 1 : 0);
        var sum = new double[n * n];
        var r = new double[n];
        foreach (double[] row in rows)
        {
            row.CopyTo(r, 0);
            if (appendOne) r[n - 1] = 1;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    sum[i * n + j] += r[i] * r[j];
        }
        for (int k = 0; k < sum.Length; k++) sum[k] /= rows.Length;
        return sum;
    }

    internal static NdArray<float> ToFloat(double[] m)
    {
        int n = (int)Math.Round(Math.Sqrt(m.Length));
        return new NdArray<float>([n, n], m.Select(x => (float)x).ToArray());
    }

    internal static double[][] RandomRows(Random rng, int count, int width, double scale) =>
        Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, width).Select(_ => scale * (2 * rng.NextDouble() - 1)).ToArray()).ToArray();

    internal static KroneckerBlock FromRows(string layer, double[][] inputs, double[][] gradients, bool hasBias) =>
        new(layer, ToFloat(MeanOuter(inputs, hasBias)), ToFloat(MeanOuter(gradients, false)), hasBias, inputs.Length);

    static double RelativeError(double[] reference, NdArray<float> actual)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            diff += Math.Pow(actual.Data[i] - reference[i], 2);
            norm += reference[i] * reference[i];
        }
        return Math.Sqrt(diff / norm);
    }

    [Theory]
    [InlineData(true, 1)]
    [InlineData(false, 2)]
    [InlineData(true, 3)]
    public void MergeEqualsTheBlockOfAllRows(bool hasBias, int seed)
    {
        var rng = new Random(seed);
        int n1 = rng.Next(1, 40), n2 = rng.Next(1, 200), inDim = rng.Next(1, 9), outDim = rng.Next(1, 7);
        double[][] x = RandomRows(rng, n1 + n2, inDim, 3.0), g = RandomRows(rng, n1 + n2, outDim, 1e-3);

        KroneckerBlock merged = FromRows("w", x[..n1], g[..n1], hasBias).Merge(FromRows("w", x[n1..], g[n1..], hasBias));

        Assert.Equal(n1 + n2, merged.Positions);
        Assert.Equal(hasBias, merged.HasBias);
        Assert.Equal(inDim, merged.InFeatures);
        Assert.Equal(outDim, merged.OutFeatures);
        // Each part was rounded to float32 once and merged in float64: a few float32 ulps.
        Assert.True(RelativeError(MeanOuter(x, hasBias), merged.A) < 1e-6);
        Assert.True(RelativeError(MeanOuter(g, false), merged.G) < 1e-6);
    }

    [Fact]
    public void MergeIsAssociativeAndCommutativeUpToRounding()
    {
        var rng = new Random(4);
        var parts = Enumerable.Range(0, 3).Select(_ => FromRows("w", RandomRows(rng, rng.Next(1, 30), 4, 1), RandomRows(rng, 5, 3, 1), true)).ToArray();
        KroneckerBlock left = parts[0].Merge(parts[1]).Merge(parts[2]), right = parts[2].Merge(parts[1].Merge(parts[0]));
        Assert.Equal(left.Positions, right.Positions);
        for (int i = 0; i < left.A.Data.Length; i++) Assert.Equal(left.A.Data[i], right.A.Data[i], 1e-6f);
    }

    [Fact]
    public void MergeRefusesDifferentLayersOrShapes()
    {
        var a = new KroneckerBlock("w1", Identity(3), Identity(2), true, 5);
        Assert.Contains("'w2'", Assert.Throws<FisherKernelsException>(() => a.Merge(new KroneckerBlock("w2", Identity(3), Identity(2), true, 5))).Message);
        Assert.Contains("w1", Assert.Throws<FisherKernelsException>(() => a.Merge(new KroneckerBlock("w1", Identity(3), Identity(2), false, 5))).Message);
        Assert.Contains("w1", Assert.Throws<FisherKernelsException>(() => a.Merge(new KroneckerBlock("w1", Identity(3), Identity(4), true, 5))).Message);
    }

    [Fact]
    public void ZeroPositionsMergeToThePlainMean()
    {
        var a = new KroneckerBlock("w", Identity(2), Identity(1), false, 0);
        var b = new KroneckerBlock("w", new NdArray<float>([2, 2], [3, 0, 0, 3]), Identity(1), false, 0);
        Assert.Equal([2f, 0, 0, 2], a.Merge(b).A.Data);
        Assert.Equal(0, a.Merge(b).Positions);
    }

    internal static NdArray<float> Identity(int n)
    {
        var m = new NdArray<float>(n, n);
        for (int i = 0; i < n; i++) m.Data[i * n + i] = 1;
        return m;
    }

    [Fact]
    public void ConstructorRefusesInvalidFactorsNamingTheLayer()
    {
        void Refuses(Func<KroneckerBlock> make, string part)
        {
            var e = Assert.Throws<FisherKernelsException>(() => make());
            Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
            Assert.Contains("'dense'", e.Message);
            Assert.Contains(part, e.Message);
        }
        var nan = Identity(3); nan.Data[4] = float.NaN;
        Refuses(() => new KroneckerBlock("dense", nan, Identity(2), false, 1), "non-finite");
        var inf = Identity(2); inf.Data[0] = float.PositiveInfinity;
        Refuses(() => new KroneckerBlock("dense", Identity(2), inf, false, 1), "non-finite");
        Refuses(() => new KroneckerBlock("dense", new NdArray<float>(2, 3), Identity(2), false, 1), "square");
        Refuses(() => new KroneckerBlock("dense", new NdArray<float>(4), Identity(2), false, 1), "square");
        var skew = Identity(2); skew.Data[1] = 0.5f;
        Refuses(() => new KroneckerBlock("dense", skew, Identity(2), false, 1), "symmetric");
        Refuses(() => new KroneckerBlock("dense", Identity(1), Identity(2), true, 1), "at least 2x2");
        Refuses(() => new KroneckerBlock("dense", Identity(2), Identity(2), false, -1), "positions");
        Refuses(() => new KroneckerBlock("dense", Identity(2), Identity(2), false, double.NaN), "positions");
    }
}

using FisherKernels.Linalg;

namespace FisherKernels.Backends;

/// <summary>
/// Argument checks shared by every backend, so that each refuses the same bad calls with the same
/// message (the conformance suite checks the messages).
/// </summary>
internal static class BackendArguments
{
    /// <summary>Checks an <see cref="IComputeBackend.AccumulateFactor"/> call; returns the factor's side n = cols + appendOne.</summary>
    public static int CheckAccumulate(int xLength, int rows, int cols, bool appendOne, int factorLength, int maskLength)
    {
        if (rows < 0 || cols < 0) throw FisherKernelsException.Argument($"AccumulateFactor: invalid shape {rows}×{cols}");
        int n = cols + (appendOne ? 1 : 0);
        if (xLength < (long)rows * cols)
            throw FisherKernelsException.Argument($"AccumulateFactor: X needs {(long)rows * cols} elements ({rows}×{cols}), got {xLength}");
        if (factorLength != (long)n * n)
            throw FisherKernelsException.Argument($"AccumulateFactor: the factor needs {(long)n * n} elements ({n}×{n}), got {factorLength}");
        if (maskLength != 0 && maskLength != rows)
            throw FisherKernelsException.Argument($"AccumulateFactor: the row mask has {maskLength} entries for {rows} rows");
        return n;
    }

    /// <summary>Checks a <see cref="IComputeBackend.KronQuadratic"/> call (count gradients of [G × A], finite); returns one gradient's size.</summary>
    public static long CheckKronQuadratic(KronEigenbasis basis, ReadOnlySpan<float> xs, int count, int outputLength)
    {
        ArgumentNullException.ThrowIfNull(basis);
        int g = basis.GDim, a = basis.ADim;
        long size = (long)g * a;
        if (count < 0) throw FisherKernelsException.Argument($"KronQuadratic: negative count {count}");
        if (xs.Length != count * size)
            throw FisherKernelsException.Argument($"KronQuadratic: {count} gradients [{g} × {a}] need {count * size} elements, got {xs.Length}");
        if (outputLength != count) throw FisherKernelsException.Argument($"KronQuadratic: {count} gradients need {count} outputs, got {outputLength}");
        Finite.Require(xs, "KronQuadratic: the gradients X");
        return size;
    }

    /// <summary>Checks a <see cref="IComputeBackend.LinearJvp"/> call (db may be empty: no bias).</summary>
    public static void CheckLinearJvp(int xLength, int dxLength, int wLength, int dwLength, int dbLength, int dyLength,
                                      int rows, int inFeatures, int outFeatures)
    {
        if (rows < 0 || inFeatures < 0 || outFeatures < 0)
            throw FisherKernelsException.Argument($"LinearJvp: invalid shape rows={rows} in={inFeatures} out={outFeatures}");
        Need("x", xLength, (long)rows * inFeatures);
        Need("dx", dxLength, (long)rows * inFeatures);
        Need("W", wLength, (long)outFeatures * inFeatures);
        Need("dW", dwLength, (long)outFeatures * inFeatures);
        Need("dy", dyLength, (long)rows * outFeatures);
        if (dbLength != 0 && dbLength != outFeatures)
            throw FisherKernelsException.Argument($"LinearJvp: db has {dbLength} elements for {outFeatures} outputs");

        static void Need(string name, int length, long needed)
        {
            if (length < needed) throw FisherKernelsException.Argument($"LinearJvp: {name} needs {needed} elements, got {length}");
        }
    }
}

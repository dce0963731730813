using System.Runtime.CompilerServices;

namespace FisherKernels.Onnx.Operators;

/// <summary>Receives the runs of a <see cref="Broadcast"/>: offsets of one innermost run in the output and each operand.</summary>
internal interface IRunAction
{
    void Run(int output, int operand0, int operand1, int operand2, int length);
}

/// <summary>
/// Numpy/ONNX multidirectional broadcasting of up to three operands against an output shape, with
/// dimensions of size 1 dropped and mergeable neighbours coalesced, so that a bias add over
/// [rows, n] is `rows` runs of n and a same-shape op is one run. Within a run operand k advances by
/// <see cref="Step0"/>/<see cref="Step1"/>/<see cref="Step2"/> (1, or 0 when broadcast). No allocation.
/// </summary>
internal struct Broadcast
{
    public const int MaxRank = 8;

    [InlineArray(MaxRank)] private struct Dims { private int element; }

    private Dims dims, stride0, stride1, stride2;
    private int rank;

    public int Step0, Step1, Step2;
    public int RunLength;
    public long RunCount;

    /// <summary>The broadcast of two shapes, or null when they are incompatible.</summary>
    public static int[]? Shape(ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        int rank = Math.Max(a.Length, b.Length);
        var result = new int[rank];
        for (int i = 0; i < rank; i++)
        {
            int da = i < rank - a.Length ? 1 : a[i - (rank - a.Length)];
            int db = i < rank - b.Length ? 1 : b[i - (rank - b.Length)];
            if (da != db && da != 1 && db != 1) return null;
            result[i] = da == 1 ? db : da;
        }
        return result;
    }

    /// <summary>Layout of operands (empty span = unused operand) broadcast to <paramref name="output"/>, which must be their broadcast.</summary>
    public static Broadcast Create(ReadOnlySpan<int> output, ReadOnlySpan<int> shape0, ReadOnlySpan<int> shape1 = default, ReadOnlySpan<int> shape2 = default)
    {
        if (output.Length > MaxRank) throw FisherKernelsException.Unsupported($"rank {output.Length} is above the supported {MaxRank}");
        var b = new Broadcast();
        Span<int> s0 = stackalloc int[MaxRank], s1 = stackalloc int[MaxRank], s2 = stackalloc int[MaxRank];
        Strides(output, shape0, s0); Strides(output, shape1, s1); Strides(output, shape2, s2);
        int r = 0;
        for (int i = 0; i < output.Length; i++)
        {
            if (output[i] == 1) continue;
            if (r > 0 && s0[i] * output[i] == b.stride0[r - 1] && s1[i] * output[i] == b.stride1[r - 1] && s2[i] * output[i] == b.stride2[r - 1])
            {
                b.dims[r - 1] *= output[i];
                b.stride0[r - 1] = s0[i]; b.stride1[r - 1] = s1[i]; b.stride2[r - 1] = s2[i];
                continue;
            }
            b.dims[r] = output[i]; b.stride0[r] = s0[i]; b.stride1[r] = s1[i]; b.stride2[r] = s2[i];
            r++;
        }
        b.rank = r;
        long total = ShapeUtil.Product(output);
        if (r == 0)
        {
            b.RunLength = 1; b.RunCount = total; // a single element (every dimension is 1)
            return b;
        }
        b.RunLength = b.dims[r - 1];
        b.RunCount = b.RunLength == 0 ? 0 : total / b.RunLength;
        b.Step0 = b.stride0[r - 1]; b.Step1 = b.stride1[r - 1]; b.Step2 = b.stride2[r - 1];
        return b;
    }

    /// <summary>Element strides of an operand right-aligned to the output; 0 where it is broadcast.</summary>
    private static void Strides(ReadOnlySpan<int> output, ReadOnlySpan<int> shape, Span<int> strides)
    {
        int offset = output.Length - shape.Length, stride = 1;
        for (int i = output.Length - 1; i >= 0; i--)
        {
            int d = i < offset ? 1 : shape[i - offset];
            strides[i] = d == 1 ? 0 : stride;
            stride *= d;
        }
    }

    /// <summary>Calls <paramref name="action"/> once per innermost run, in output order.</summary>
    public readonly void ForEachRun<T>(ref T action) where T : struct, IRunAction
    {
        Span<int> index = stackalloc int[MaxRank];
        int o0 = 0, o1 = 0, o2 = 0, output = 0;
        for (long run = 0; run < RunCount; run++)
        {
            action.Run(output, o0, o1, o2, RunLength);
            output += RunLength;
            for (int d = rank - 2; d >= 0; d--)
            {
                o0 += stride0[d]; o1 += stride1[d]; o2 += stride2[d];
                if (++index[d] < dims[d]) break;
                o0 -= stride0[d] * dims[d]; o1 -= stride1[d] * dims[d]; o2 -= stride2[d] * dims[d];
                index[d] = 0;
            }
        }
    }
}

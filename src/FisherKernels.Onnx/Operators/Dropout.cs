namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Dropout. In inference (no <c>training_mode</c> input, or it is false, or the ratio is 0; always below opset 12)
/// output 0 is the input and the optional mask is all true. In training mode each element is kept when a uniform
/// draw u ∈ [0, 1) satisfies u ≥ ratio, and scaled by 1/(1 − ratio): y = mask·x/(1 − ratio).
/// The draws are those of numpy's <c>RandomState(seed).uniform(0, 1, shape)</c> (the Mersenne Twister MT19937 seeded
/// with the node's <c>seed</c> attribute, the low 32 bits of it), which is what ONNX's own test cases compute their
/// expected outputs with. Without a <c>seed</c> one is drawn when the model loads. Every run, and every derivative
/// pass, draws the same mask from the seed again, so forward, VJP and JVP agree; the derivative is mask/(1 − ratio).
/// A node that may train is not a view (it writes its output); the others alias their input as
/// <see cref="View"/> does.
/// </summary>
internal sealed class Dropout : Operator
{
    private readonly uint seed;

    public Dropout(OperatorNode node) : base(node)
    {
        RequireInputs(1, node.Opset >= 12 ? 3 : 1);
        seed = node.Attributes.GetIntOrNull("seed") is long s ? unchecked((uint)s) : (uint)Random.Shared.Next();
    }

    /// <summary>A node with a training_mode input (opset 12+) may drop; one whose mask is wanted writes it.</summary>
    private bool MayTrain => Node.Opset >= 12 && Node.InputCount > 2;

    public override bool IsView => !MayTrain && Node.OutputCount < 2;

    public override bool IsDifferentiable(int input) => input == 0;

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs)
    {
        var x = Required(inputs, 0, "data");
        if (x.Type != ElementType.Float32 && MayTrain) throw UnsupportedError($"training mode needs float data, got {x.Type}");
        if (inputs.Length > 1 && inputs[1] is { } r && r.Value is not null) Ratio(r.Value);
        var output = IsView && x.Value is not null ? new TensorInfo(x.Type, x.Shape, x.Value) : new TensorInfo(x.Type, x.Shape);
        return Node.OutputCount > 1 ? [output, new TensorInfo(ElementType.Bool, x.Shape)] : [output];
    }

    /// <summary>The ratio input (0.5 when absent), which must lie in [0, 1).</summary>
    private float Ratio(NdArray? ratio)
    {
        if (ratio is null) return 0.5f;
        if (ratio is not NdArray<float> { Data: [var r] }) throw Error($"ratio must be one float, got {ratio.ElementType}[{ShapeUtil.Format(ratio.Shape)}]");
        if (!(r >= 0 && r < 1)) throw Error($"ratio {r} is outside [0, 1)");
        return r;
    }

    /// <summary>The ratio this run drops with: 0 in inference.</summary>
    private float DropRatio(ReadOnlySpan<NdArray?> inputs)
    {
        if (!MayTrain || inputs[2] is not NdArray<bool> { Data: [true] }) return 0;
        return Ratio(inputs[1]);
    }

    /// <summary>Which elements a run with <paramref name="ratio"/> keeps (all when it is 0).</summary>
    private bool[] Mask(int length, float ratio)
    {
        var keep = new bool[length];
        if (ratio == 0) { keep.AsSpan().Fill(true); return keep; }
        var random = new MersenneTwister(seed);
        for (int i = 0; i < keep.Length; i++) keep[i] = random.NextDouble() >= ratio;
        return keep;
    }

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs)
    {
        float ratio = DropRatio(inputs);
        if (ratio == 0) Tensors.CopyElements(inputs[0]!, outputs[0]);
        else
        {
            var x = ((NdArray<float>)inputs[0]!).Data;
            var y = ((NdArray<float>)outputs[0]).Data;
            var keep = Mask(x.Length, ratio);
            float scale = 1 / (1 - ratio);
            for (int i = 0; i < x.Length; i++) y[i] = keep[i] ? x[i] * scale : 0;
            if (outputs.Length > 1) keep.AsSpan().CopyTo(((NdArray<bool>)outputs[1]).Data);
            return;
        }
        if (outputs.Length > 1) ((NdArray<bool>)outputs[1]).Span.Fill(true);
    }

    public override void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        float ratio = DropRatio(inputs);
        if (ratio == 0) { PassThroughVjp(outputGrads, inputGrads); return; }
        if (outputGrads[0] is not { } gy || inputGrads[0] is not { } gx) return;
        var keep = Mask(gy.Data.Length, ratio);
        float scale = 1 / (1 - ratio);
        for (int i = 0; i < keep.Length; i++) if (keep[i]) gx.Data[i] += gy.Data[i] * scale;
    }

    public override void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                             ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        float ratio = DropRatio(inputs);
        if (ratio == 0) { PassThroughJvp(inputTangents, outputTangents); return; }
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is not { } tx) { ty.Span.Clear(); return; }
        var keep = Mask(ty.Data.Length, ratio);
        float scale = 1 / (1 - ratio);
        for (int i = 0; i < keep.Length; i++) ty.Data[i] = keep[i] ? tx.Data[i] * scale : 0;
    }
}

/// <summary>
/// The Mersenne Twister MT19937 (Matsumoto and Nishimura, 1998) with its 32-bit integer seeding, and doubles in
/// [0, 1) from 53 bits of two outputs: the generator and the <c>random_sample</c> of numpy's legacy RandomState.
/// </summary>
internal sealed class MersenneTwister
{
    private const int N = 624, M = 397;
    private readonly uint[] state = new uint[N];
    private int next = N;

    public MersenneTwister(uint seed)
    {
        state[0] = seed;
        for (int i = 1; i < N; i++) state[i] = unchecked(1812433253u * (state[i - 1] ^ (state[i - 1] >> 30)) + (uint)i);
    }

    public uint NextUInt32()
    {
        if (next >= N) Twist();
        uint y = state[next++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        return y ^ (y >> 18);
    }

    /// <summary>(a·2²⁶ + b)/2⁵³ from the top 27 bits a and top 26 bits b of two outputs.</summary>
    public double NextDouble()
    {
        uint a = NextUInt32() >> 5, b = NextUInt32() >> 6;
        return (a * 67108864.0 + b) / 9007199254740992.0;
    }

    private void Twist()
    {
        for (int i = 0; i < N; i++)
        {
            uint y = (state[i] & 0x80000000u) | (state[(i + 1) % N] & 0x7fffffffu);
            state[i] = state[(i + M) % N] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908b0dfu : 0);
        }
        next = 0;
    }
}

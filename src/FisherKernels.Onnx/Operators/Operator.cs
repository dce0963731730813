using FisherKernels.Backends;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Type and concrete shape of a value when a plan is built (plans are per input shape, so every
/// dimension is known). <see cref="Value"/> is the value itself when it is known at plan time
/// (initializers, folded constants, <c>Shape</c> outputs); operators that need an input's value to
/// size their output (Reshape's shape, Slice's starts, …) read it from there.
/// </summary>
/// <remarks>The engine computes in float32: float16, bfloat16 and float64 values are float32 here.</remarks>
public sealed record TensorInfo(ElementType Type, int[] Shape, NdArray? Value = null)
{
    public long Length => ShapeUtil.Product(Shape);

    public override string ToString() => $"{Type}[{ShapeUtil.Format(Shape)}]";
}

/// <summary>
/// One graph node as the operator sees it. <see cref="InputCount"/> and <see cref="OutputCount"/> are the
/// node's declared counts; a missing optional input (empty name in ONNX) is passed as null everywhere.
/// </summary>
public sealed record OperatorNode(
    string Name, string OpType, string Domain, int Opset, OperatorAttributes Attributes,
    int InputCount, int OutputCount)
{
    /// <summary>"node 'name' (domain:OpType)", the prefix of every error about this node.</summary>
    public override string ToString() =>
        $"node '{Name}' ({(OperatorRegistry.IsOnnxDomain(Domain) ? "" : Domain + ":")}{OpType})";
}

/// <summary>
/// What an operator may use while it runs: the backend (GEMMs go through it) and one reusable
/// float scratch buffer. Not thread-safe: one context per thread of execution.
/// </summary>
public sealed class OpContext(IComputeBackend backend)
{
    private float[] scratch = [];

    public IComputeBackend Backend { get; } = backend;

    /// <summary>Threads an operator may split its work over: the CPU backend's, else every core.</summary>
    public int Threads { get; } = backend is Backends.Cpu.CpuBackend cpu ? cpu.Threads : Environment.ProcessorCount;

    /// <summary>
    /// Bit i set: input gradient i holds nothing yet in this backward run, so a Vjp that
    /// <see cref="Operator.WritesFreshGradients"/> overwrites it instead of adding (saves zeroing it first).
    /// Set by the backward pass around that call only; 0 everywhere else.
    /// </summary>
    internal int FreshGradients { get; set; }

    /// <summary>
    /// Bit i set: input i is an initializer, whose data stays the same from run to run (as the packed weights of
    /// inference plans assume), so a Jvp may reuse a prepared form of it. Set by the tangent and backward passes around that call only.
    /// </summary>
    internal int ConstantInputs { get; set; }

    /// <summary>
    /// A buffer of at least <paramref name="length"/> floats (contents undefined), valid until the next
    /// call of <see cref="Scratch"/>. Grows once, then is reused: no allocation in steady state. An
    /// operator that needs several scratch areas asks once for their total and slices.
    /// </summary>
    public Span<float> Scratch(long length)
    {
        if (length > Array.MaxLength) throw FisherKernelsException.Argument($"scratch of {length} floats is too large");
        if (scratch.Length < length) scratch = new float[Math.Max(length, Math.Min(Array.MaxLength, scratch.Length * 2L))];
        return scratch.AsSpan(0, (int)length);
    }
}

/// <summary>
/// One ONNX operator type: its shape rule, forward, and derivatives side by side (ARCHITECTURE.md).
/// An instance belongs to one node; it is built once from the node's attributes (which it validates)
/// and may be used by several plans (different input shapes), so it keeps no per-shape state.
/// </summary>
/// <remarks>
/// <para><b>Buffers.</b> Every array is dense and row-major. <c>inputs</c> has one entry per declared
/// input (null = absent optional input); <c>outputs</c> one per declared output, each already sized
/// to the shape and type <see cref="InferShapes"/> returned. Float values are <c>NdArray&lt;float&gt;</c>,
/// int64 <c>NdArray&lt;long&gt;</c>, int32 <c>NdArray&lt;int&gt;</c>, bool <c>NdArray&lt;bool&gt;</c>.
/// Outputs never alias inputs unless <see cref="IsView"/> lets the graph alias output 0 and input 0.</para>
/// <para><b>Derivatives</b> are taken only with respect to float inputs for which
/// <see cref="IsDifferentiable"/> is true; gradients and tangents are <c>NdArray&lt;float&gt;</c> of the
/// shape of the value they belong to.</para>
/// <para><b>Constant folding</b> is <see cref="Forward"/> run at plan time on inputs whose values are known.</para>
/// </remarks>
public abstract class Operator
{
    protected Operator(OperatorNode node) => Node = node;

    public OperatorNode Node { get; }

    /// <summary>
    /// Output types and shapes (one per declared output) from the inputs' (null = absent optional input).
    /// An output's <see cref="TensorInfo.Value"/> may be set when it follows from input shapes alone
    /// (e.g. <c>Shape</c>). Throws <see cref="FisherKernelsException"/> naming the node on inputs the
    /// operator cannot take (wrong count, type, rank, incompatible shapes, a needed value not known).
    /// </summary>
    public abstract TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs);

    /// <summary>Computes every output, overwriting <paramref name="outputs"/> entirely. No allocation.</summary>
    public abstract void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs);

    /// <summary>
    /// True when output 0 holds exactly input 0's elements in the same order (Reshape, Squeeze,
    /// Unsqueeze, Identity, Flatten): the graph may bind output 0 to input 0's storage and skip
    /// <see cref="Forward"/>; the derivatives are then the identity as well.
    /// </summary>
    public virtual bool IsView => false;

    /// <summary>
    /// Whether the outputs depend differentiably on input <paramref name="input"/> when that input is
    /// float. False for indices, shapes, masks, conditions; false everywhere for non-differentiable
    /// operators (their float outputs have zero derivative, and <see cref="Vjp"/>/<see cref="Jvp"/>
    /// are never called).
    /// </summary>
    public virtual bool IsDifferentiable(int input) => false;

    /// <summary>
    /// Whether input <paramref name="input"/>'s value, not only its shape, is read when the plan is built (a shape,
    /// axes, starts, pads, repeats…). A graph input whose value reaches such an operand is folded by value into
    /// each plan (<see cref="Plan.OnnxModel.ValueInputs"/>).
    /// </summary>
    public virtual bool NeedsValue(int input) => false;

    /// <summary>
    /// Whether output 0's gradient passes to input <paramref name="input"/> unchanged when the two have one
    /// shape (views; Add): the backward pass may then give both one buffer instead of adding one into the other.
    /// </summary>
    public virtual bool PassesGradientUnchanged(int input) => IsView && input == 0;

    /// <summary>Whether <see cref="Vjp"/> honours <see cref="OpContext.FreshGradients"/> (writes those input gradients whole).</summary>
    public virtual bool WritesFreshGradients => false;

    /// <summary>
    /// Reverse mode. Given the forward's <paramref name="inputs"/> and <paramref name="outputs"/> and
    /// the cotangents of the outputs (null = zero), ADDS <c>Jᵢᵀ·outputGrads</c> into each non-null
    /// <paramref name="inputGrads"/>[i] (null = not wanted; never passed for inputs that are not
    /// differentiable). The caller zeroes gradient buffers once, so fan-out accumulates for free.
    /// </summary>
    public virtual void Vjp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                            ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads) =>
        throw NotDifferentiable();

    /// <summary>
    /// Reverse mode for a block of cotangents through the one forward: <paramref name="outputGrads"/>[c] and
    /// <paramref name="inputGrads"/>[c] are cotangent c's buffers, as <see cref="Vjp"/> takes them (the same ones null in
    /// every c; <see cref="OpContext.FreshGradients"/> holds for every c). Adds what <see cref="Vjp"/> would for each c and
    /// returns true, or returns false having done nothing (no block form here: the caller runs <see cref="Vjp"/> per cotangent).
    /// A block form pays off where the cotangents share an operand that must be prepared (a packed weight).
    /// </summary>
    public virtual bool VjpBlock(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                                 ReadOnlySpan<NdArray<float>?[]> outputGrads, ReadOnlySpan<NdArray<float>?[]> inputGrads) => false;

    /// <summary>
    /// Forward mode. Given the forward's <paramref name="inputs"/> and <paramref name="outputs"/> and
    /// the tangents of the inputs (null = zero), WRITES <c>Σᵢ Jᵢ·inputTangents[i]</c> into each non-null
    /// <paramref name="outputTangents"/>[j] (null = not wanted), overwriting it entirely.
    /// </summary>
    public virtual void Jvp(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs,
                            ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents) =>
        throw NotDifferentiable();

    /// <summary>
    /// The input whose tangent is output 0's tangent, element for element, when only the inputs with a non-null
    /// <paramref name="inputTangents"/> have one (x + c for a constant c of x's shape or broadcast into it: the
    /// tangent of x), or −1. The tangent pass then shares that input's tangent buffer and skips <see cref="Jvp"/>.
    /// </summary>
    public virtual int TangentPassesThrough(ReadOnlySpan<NdArray<float>?> inputTangents, int[] outputShape) => -1;

    /// <summary>VJP of an operator whose first output holds its first input's elements unchanged (reshapes, casts, copies).</summary>
    protected static void PassThroughVjp(ReadOnlySpan<NdArray<float>?> outputGrads, ReadOnlySpan<NdArray<float>?> inputGrads)
    {
        if (outputGrads[0] is { } gy && inputGrads[0] is { } gx) System.Numerics.Tensors.TensorPrimitives.Add(gx.Span, gy.Span, gx.Span);
    }

    /// <summary>JVP of an operator whose first output holds its first input's elements unchanged.</summary>
    protected static void PassThroughJvp(ReadOnlySpan<NdArray<float>?> inputTangents, ReadOnlySpan<NdArray<float>?> outputTangents)
    {
        if (outputTangents[0] is not { } ty) return;
        if (inputTangents[0] is { } tx) tx.Span.CopyTo(ty.Span); else ty.Span.Clear();
    }

    /// <summary>An error about this node: the message starts with the node's name and type.</summary>
    protected FisherKernelsException Error(string message) => FisherKernelsException.Format($"{Node}: {message}");

    protected FisherKernelsException UnsupportedError(string message) => FisherKernelsException.Unsupported($"{Node}: {message}");

    private FisherKernelsException NotDifferentiable() =>
        new(ErrorKind.Internal, $"{Node}: the operator is not differentiable (the graph must not ask for its derivatives)");

    /// <summary>Checks the declared input count (absent optional inputs count as declared).</summary>
    protected void RequireInputs(int min, int max)
    {
        if (Node.InputCount < min || Node.InputCount > max)
            throw Error(min == max ? $"expects {min} inputs, got {Node.InputCount}" : $"expects {min} to {max} inputs, got {Node.InputCount}");
    }

    /// <summary>The input at <paramref name="index"/>, which must be present.</summary>
    protected TensorInfo Required(ReadOnlySpan<TensorInfo?> inputs, int index, string name) =>
        index < inputs.Length && inputs[index] is { } info ? info : throw Error($"input {index} ({name}) is required");

    /// <summary>The input at <paramref name="index"/>, which must be present and float.</summary>
    protected TensorInfo RequiredFloat(ReadOnlySpan<TensorInfo?> inputs, int index, string name)
    {
        var info = Required(inputs, index, name);
        if (info.Type != ElementType.Float32) throw UnsupportedError($"input {index} ({name}) must be float, got {info.Type}");
        return info;
    }

    /// <summary>The known value of an input needed at plan time (a shape, axes, starts…) as int64s.</summary>
    protected long[] ConstantInts(TensorInfo info, string name)
    {
        if (info.Value is null) throw UnsupportedError($"input '{name}' must be known when the plan is built (a constant or a folded shape computation)");
        return Tensors.ToLongs(info.Value) ?? throw Error($"input '{name}' must be int64 or int32, got {info.Type}");
    }

    protected int NormalizeAxis(long axis, int rank, string name = "axis")
    {
        long a = axis < 0 ? axis + rank : axis;
        if (a < 0 || a >= rank) throw Error($"{name} {axis} is out of range for rank {rank}");
        return (int)a;
    }
}

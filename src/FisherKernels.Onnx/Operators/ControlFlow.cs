namespace FisherKernels.Onnx.Operators;

/// <summary>
/// Loop, If and the sequence operators. They never run: the plan builder rewrites each into plain operators
/// (the Loop unrolled, the If's branch inlined, a sequence held as the list of its tensor values) when trip
/// counts, conditions and positions are known at plan build, so that fusion, the buffer pool and the
/// derivative passes see only plain operators; otherwise it refuses the node by name. Here the attributes are checked.
/// </summary>
internal sealed class ExpandedAtPlanBuild : Operator
{
    public ExpandedAtPlanBuild(OperatorNode node) : base(node)
    {
        var a = node.Attributes;
        switch (node.OpType)
        {
            case "Loop": RequireInputs(2, int.MaxValue); break;
            case "If": RequireInputs(1, 1); break;
            case "SequenceEmpty": RequireInputs(0, 0); ElementTypeOf(a.GetInt("dtype", 1)); break;
            case "SequenceConstruct": RequireInputs(1, int.MaxValue); break;
            case "SequenceInsert": RequireInputs(2, 3); break;
            case "SequenceErase": RequireInputs(1, 2); break;
            case "SequenceAt": RequireInputs(2, 2); break;
            case "SequenceLength": RequireInputs(1, 1); break;
            case "SplitToSequence":
                RequireInputs(1, 2);
                a.GetInt("axis", 0);
                if (a.GetInt("keepdims", 1) is not (0 or 1)) throw Error("attribute 'keepdims' must be 0 or 1");
                break;
            case "ConcatFromSequence":
                RequireInputs(1, 1);
                if (a.GetIntOrNull("axis") is null) throw Error("attribute 'axis' is required");
                if (a.GetInt("new_axis", 0) is not (0 or 1)) throw Error("attribute 'new_axis' must be 0 or 1");
                break;
            case "SequenceMap": RequireInputs(1, int.MaxValue); break;
            case "Optional" or "OptionalHasElement": RequireInputs(0, 1); break; // Optional()'s 'type' is not needed: it holds nothing
            case "OptionalGetElement": RequireInputs(1, 1); break;
            default: throw new FisherKernelsException(ErrorKind.Internal, $"{node}: not an operator the plan builder expands");
        }
    }

    /// <summary>Trip counts, conditions, positions and split sizes: an input that sets one is folded by value when the plan is built.</summary>
    public override bool NeedsValue(int input) => (Node.OpType, input) is ("Loop", 0 or 1) or ("If", 0) or ("SequenceInsert", 2)
        or ("SequenceErase", 1) or ("SequenceAt", 1) or ("SplitToSequence", 1);

    /// <summary>
    /// What these become moves floats unchanged (an optional's value, SequenceMap's body reading its inputs): derivatives
    /// flow through them once expanded. Loop and If are not listed: what their bodies do with an input decides.
    /// </summary>
    public override bool IsDifferentiable(int input) => Node.OpType is "Optional" or "OptionalGetElement" or "SequenceMap";

    /// <summary>The engine's element type for an ONNX TensorProto data type (SequenceEmpty's dtype).</summary>
    public ElementType ElementTypeOf(long onnxType) => onnxType switch
    {
        1 or 10 or 11 or 16 => ElementType.Float32,
        6 => ElementType.Int32,
        7 => ElementType.Int64,
        9 => ElementType.Bool,
        _ => throw UnsupportedError($"element type {onnxType} is not supported (float, double, float16, bfloat16, int32, int64, bool are)"),
    };

    public override TensorInfo[] InferShapes(ReadOnlySpan<TensorInfo?> inputs) => throw NotExpanded();

    public override void Forward(OpContext context, ReadOnlySpan<NdArray?> inputs, ReadOnlySpan<NdArray> outputs) => throw NotExpanded();

    private FisherKernelsException NotExpanded() => new(ErrorKind.Internal, $"{Node}: must be expanded when the plan is built");
}

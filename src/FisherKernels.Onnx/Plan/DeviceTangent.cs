using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// A <see cref="Tangent"/> (forward mode, J·V) run on the device of a keep-all <see cref="DevicePlan"/>
/// (docs/device-plans.md): every tangent buffer of the host pass has one device buffer (the host pass's shared ones,
/// a view's or a residual's, carry over), each step zeroes its output tangents and its JVP launches add into them,
/// reading the forward values of the device plan's last run. A run uploads the direction (the variables' tangents, filled
/// on the host) and leaves every tangent on the Device. Steps without a device JVP fail here, at build, naming the node.
/// </summary>
public sealed class DeviceTangent : DevicePass
{
    private readonly Tangent tangent;

    private DeviceTangent(DevicePlan plan, Tangent tangent) : base(plan) => this.tangent = tangent;

    internal static DeviceTangent Build(DevicePlan plan, Tangent tangent)
    {
        if (tangent.Plan != plan.Plan || !plan.Plan.KeepsAll)
            throw FisherKernelsException.Argument("a device tangent pass needs the keep-all device plan of its own forward plan");
        var pass = new DeviceTangent(plan, tangent);
        foreach (var (step, inputTangents, outputTangents) in tangent.Steps)
        {
            foreach (var t in outputTangents)
                if (t is not null) pass.Clear(t);
            pass.Translate(step, inputTangents, outputTangents);
        }
        pass.AllocateScratch();
        return pass;
    }

    /// <summary>Uploads the direction from the variables' host tangent buffers (<see cref="Tangent.Direction"/>), then queues the tangent pass.</summary>
    public void Run() => Queue(tangent.Directions);

    /// <summary>The tangent of <paramref name="name"/> after <see cref="Run"/> (waits for the device).</summary>
    public NdArray<float> Get(string name) => Download(tangent.Get(name));

    private DeviceTensor T(NdArray<float> t) => Buffer(t);

    /// <summary>ty (+)= function(ty, term) over the output's shape, the term broadcast from its own shape (Add, Sub).</summary>
    private void Accumulate(DeviceBinary function, int[] yShape, DeviceTensor ty, Func<DeviceTensor> term, int[] termShape)
    {
        var layout = BroadcastLayout.For(yShape, yShape, termShape);
        Launches.Add(() => Device.Binary(function, layout, ty, term(), null, ty));
    }

    private void Translate(ExecutionPlan.Step step, NdArray<float>?[] inputTangents, NdArray<float>?[] outputTangents)
    {
        var op = step.Op;
        string type = op.Node.OpType;
        var ty = outputTangents.Length > 0 ? outputTangents[0] : null;
        if (ty is null && !DeviceSteps.IsMovement(type, out _)) return;
        var yShape = step.Outputs[0].Shape;
        switch (op)
        {
            case MatMul:
                {
                    var shape = DeviceSteps.MatMulShape(Plan, step) with { Beta = 1f };
                    var target = T(ty!);
                    if (inputTangents[0] is { } ta)
                    {
                        var (a, b) = (T(ta), Value(step, 1));
                        Launches.Add(() => Device.Gemm(shape, a, b, target));
                    }
                    if (inputTangents[1] is { } tb)
                    {
                        var (a, b) = (Value(step, 0), T(tb));
                        Launches.Add(() => Device.Gemm(shape, a, b, target));
                    }
                    return;
                }
            case GeluWithSlope:
                if (inputTangents[0] is { } tGelu)
                {
                    var unary = op.Node.Attributes.GetString("approximate", "none") == "tanh" ? DeviceUnary.GeluTanh : DeviceUnary.GeluErf;
                    var (x, y, t, target) = (Value(step, 0), Buffer(step.Outputs[0]), T(tGelu), T(ty!));
                    Launches.Add(() => Device.UnaryVjp(unary, x, y, t, target, tGelu.Length));
                }
                return;
            case Normalization when step.Outputs.Length == 1 && !type.StartsWith("Skip", StringComparison.Ordinal): NormalizationJvp(step, inputTangents, ty!); return;
            case Softmax when type == "Softmax":
                if (inputTangents[0] is { } tSoftmax)
                {
                    // The softmax's Jacobian is symmetric: its JVP is the VJP's formula.
                    var (rows, cols) = DeviceSteps.SoftmaxShape(Plan, step);
                    var (y, t, target) = (Buffer(step.Outputs[0]), T(tSoftmax), T(ty!));
                    Launches.Add(() => Device.SoftmaxVjp(y, t, target, rows, cols));
                }
                return;
            case Reduce when type is "ReduceMean" or "ReduceSum":
                if (inputTangents[0] is { } tReduce)
                {
                    var (outer, length, inner) = DeviceSteps.ReduceShape(Plan, step);
                    var (t, target) = (T(tReduce), T(ty!));
                    bool mean = type == "ReduceMean";
                    Launches.Add(() => Device.Reduce(t, target, outer, length, inner, mean));
                }
                return;
            case Where:
                {
                    var c = Value(step, 0);
                    var (tx, tz) = (inputTangents[1], inputTangents[2]);
                    var term = Temporary(ShapeUtil.Product(yShape));
                    var layout = BroadcastLayout.For(yShape, step.Inputs[0]!.Shape, tx is null ? [] : step.Inputs[1]!.Shape, tz is null ? [] : step.Inputs[2]!.Shape);
                    var (whenTrue, whenFalse) = (tx is null ? Zero : T(tx), tz is null ? Zero : T(tz));
                    Launches.Add(() => Device.Binary(DeviceBinary.Where, layout, c, whenTrue, whenFalse, term()));
                    Accumulate(DeviceBinary.Add, yShape, T(ty!), term, yShape);
                    return;
                }
            case Cast:
                if (inputTangents[0] is { } tCast) Accumulate(DeviceBinary.Add, yShape, T(ty!), () => T(tCast), yShape);
                return;
            case Gather when !Plan.IsConstant(step, 1):
                if (inputTangents[0] is { } tTable)
                {
                    var (outer, rows, inner, count) = DeviceSteps.GatherShape(step);
                    var (table, indices, target) = (T(tTable), Value(step, 1), T(ty!));
                    Launches.Add(() => Device.Gather(table, indices, target, outer, rows, inner, count));
                }
                return;
            case BinaryElementwise: BinaryJvp(step, inputTangents[0], inputTangents[1], ty!); return;
        }
        if (op is UnaryElementwise && step.Inputs.Length == 1 && DeviceSteps.UnaryOf(op.Node) is { } function)
        {
            if (inputTangents[0] is { } tUnary)
            {
                var (x, y, t, target) = (Value(step, 0), Buffer(step.Outputs[0]), T(tUnary), T(ty!));
                Launches.Add(() => Device.UnaryVjp(function, x, y, t, target, tUnary.Length));
            }
            return;
        }
        if (DeviceSteps.IsMovement(type, out int dataInputs) || type == "Gather")
        {
            // Each output element is one input element (or a fill, whose tangent is zero): the forward tables move the tangents.
            var (moves, _) = DeviceSteps.MovementTables(Plan, step, type == "Gather" ? 0 : dataInputs);
            foreach (var move in moves)
            {
                if (inputTangents[move.Input] is not { } tx || outputTangents[move.Output] is not { } target) continue;
                var (source, table, output) = (T(tx), Plan.Table(move.Pairs), T(target));
                Launches.Add(() => Device.Copy(source, table, output));
            }
            return;
        }
        throw Unsupported(step, "its JVP has no device form yet");
    }

    /// <summary>ty = scale·(JVP of the normalized row) + x̂·tγ + tβ.</summary>
    private void NormalizationJvp(ExecutionPlan.Step step, NdArray<float>?[] inputTangents, NdArray<float> ty)
    {
        var (rows, cols, epsilon, centered) = DeviceSteps.NormalizeShape(step);
        var (x, scale, target) = (Value(step, 0), Value(step, 1), T(ty));
        if (inputTangents[0] is { } tx)
        {
            var t = T(tx);
            Launches.Add(() => Device.NormalizeJvp(x, scale, t, target, rows, cols, epsilon, centered));
        }
        if (inputTangents.Length > 1 && inputTangents[1] is { } tScale)
        {
            var normalized = Temporary((long)rows * cols);
            var (t, layout) = (T(tScale), BroadcastLayout.For([rows, cols], [rows, cols], [cols]));
            Normalized(step, normalized);
            Launches.Add(() => Device.Binary(DeviceBinary.Mul, layout, normalized(), t, null, normalized()));
            Accumulate(DeviceBinary.Add, [rows, cols], target, normalized, [rows, cols]);
        }
        if (inputTangents.Length > 2 && inputTangents[2] is { } tBias) Accumulate(DeviceBinary.Add, [rows, cols], target, () => T(tBias), [cols]);
    }

    /// <summary>Add, Sub, Mul, Div and Pow by a constant exponent: ty += ∂y/∂a·ta + ∂y/∂b·tb, each tangent broadcast from its shape.</summary>
    private void BinaryJvp(ExecutionPlan.Step step, NdArray<float>? ta, NdArray<float>? tb, NdArray<float> ty)
    {
        string type = step.Op.Node.OpType;
        var (aShape, bShape, yShape) = (step.Inputs[0]!.Shape, step.Inputs[1]!.Shape, step.Outputs[0].Shape);
        var target = T(ty);
        long length = ShapeUtil.Product(yShape);
        // term = f(left, right) over the output's shape, in the scratch.
        Func<DeviceTensor> Term(DeviceBinary function, DeviceTensor left, int[] leftShape, DeviceTensor right, int[] rightShape)
        {
            var t = Temporary(length);
            var layout = BroadcastLayout.For(yShape, leftShape, rightShape);
            Launches.Add(() => Device.Binary(function, layout, left, right, null, t()));
            return t;
        }
        switch (type)
        {
            case "Add" or "Sub":
                if (ta is not null) Accumulate(DeviceBinary.Add, yShape, target, () => T(ta), aShape);
                if (tb is not null) Accumulate(type == "Sub" ? DeviceBinary.Sub : DeviceBinary.Add, yShape, target, () => T(tb), bShape);
                return;
            case "Mul":
                if (ta is not null) Accumulate(DeviceBinary.Add, yShape, target, Term(DeviceBinary.Mul, T(ta), aShape, Value(step, 1), bShape), yShape);
                if (tb is not null) Accumulate(DeviceBinary.Add, yShape, target, Term(DeviceBinary.Mul, Value(step, 0), aShape, T(tb), bShape), yShape);
                return;
            case "Div":
                if (ta is not null) Accumulate(DeviceBinary.Add, yShape, target, Term(DeviceBinary.Div, T(ta), aShape, Value(step, 1), bShape), yShape);
                if (tb is not null)
                {
                    // ∂(a/b)/∂b = −y/b
                    var t = Term(DeviceBinary.Mul, Buffer(step.Outputs[0]), yShape, T(tb), bShape);
                    var (b, layout) = (Value(step, 1), BroadcastLayout.For(yShape, yShape, bShape));
                    Launches.Add(() => Device.Binary(DeviceBinary.Div, layout, t(), b, null, t()));
                    Accumulate(DeviceBinary.Sub, yShape, target, t, yShape);
                }
                return;
            case "Pow":
                if (tb is not null) throw Unsupported(step, "the tangent of Pow's exponent has no device form yet");
                if (ta is null) return;
                var (lower, factor) = PowerFactors(step, "JVP");
                // ∂(aᵉ)/∂a = e·aᵉ⁻¹, times ta
                var term = Term(DeviceBinary.Pow, Value(step, 0), aShape, lower, bShape);
                var byExponent = BroadcastLayout.For(yShape, yShape, bShape);
                var byTangent = BroadcastLayout.For(yShape, yShape, aShape);
                var tangentOfA = T(ta);
                Launches.Add(() => Device.Binary(DeviceBinary.Mul, byExponent, term(), factor, null, term()));
                Launches.Add(() => Device.Binary(DeviceBinary.Mul, byTangent, term(), tangentOfA, null, term()));
                Accumulate(DeviceBinary.Add, yShape, target, term, yShape);
                return;
        }
        throw Unsupported(step, "its JVP has no device form yet");
    }
}

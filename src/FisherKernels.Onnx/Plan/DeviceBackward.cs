using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// A <see cref="Backward"/> (its first cotangent) run on the device of a keep-all <see cref="DevicePlan"/>
/// (docs/device-plans.md): every gradient buffer of the host pass has one device buffer (the host pass's shared
/// buffers, its aliases, carry over), the reverse walk zeroes each gradient before the first step that adds into it,
/// and each step's VJP becomes device launches that add into its input gradients. The forward values it reads are
/// the device plan's, from its last run. A run uploads the seeds' cotangents (filled on the host) and leaves every
/// gradient on the device, to be downloaded or accumulated there. Steps without a device VJP fail here, at build,
/// in one line naming the node.
/// </summary>
public sealed class DeviceBackward : DevicePass
{
    private readonly Backward backward;

    private DeviceBackward(DevicePlan plan, Backward backward) : base(plan) => this.backward = backward;

    public Backward Backward => backward;

    internal static DeviceBackward Build(DevicePlan plan, Backward backward)
    {
        if (backward.Plan != plan.Plan || !plan.Plan.KeepsAll)
            throw FisherKernelsException.Argument("a device backward pass needs the keep-all device plan of its own forward plan");
        var pass = new DeviceBackward(plan, backward);
        foreach (var g in backward.Unwritten) pass.Clear(g);
        foreach (var (step, outputGrads, inputGrads, firstWrites) in backward.ReverseSteps)
        {
            foreach (var g in firstWrites) pass.Clear(g);
            pass.Translate(step, outputGrads, inputGrads);
        }
        pass.AllocateScratch();
        return pass;
    }

    /// <summary>Uploads the seeds' cotangents from their host gradient buffers (<see cref="Backward.Gradient"/>), then queues the reverse walk.</summary>
    public void Run() => Queue(backward.Seeds);

    /// <summary>The gradient of <paramref name="name"/> after <see cref="Run"/> (waits for the device).</summary>
    public NdArray<float> Gradient(string name) => Download(backward.Gradient(name));

    /// <summary>Copies the gradient of <paramref name="name"/> after <see cref="Run"/> into the host pass's buffer for it (<see cref="Backward.Gradient"/>, cotangent 0).</summary>
    public void DownloadInto(string name)
    {
        var g = backward.Gradient(name);
        Device.Download(Buffer(g), g.Data);
    }

    private DeviceTensor G(NdArray<float> gradient) => Buffer(gradient);

    /// <summary>target += scale · source, both dense of <paramref name="length"/>.</summary>
    private void AddInto(DeviceTensor source, DeviceTensor target, long length, float scale = 1f)
    {
        var layout = BroadcastLayout.For([checked((int)length)], [checked((int)length)]);
        Launches.Add(() => Device.AddReduced(layout, source, target, scale));
    }

    /// <summary>target += scale · (source of the output's shape summed over the dimensions the target was broadcast along).</summary>
    private void AddReduced(int[] output, int[] target, Func<DeviceTensor> source, DeviceTensor gradient, float scale = 1f)
    {
        var layout = BroadcastLayout.For(output, target);
        Launches.Add(() => Device.AddReduced(layout, source(), gradient, scale));
    }

    private void Translate(ExecutionPlan.Step step, NdArray<float>?[] outputGrads, NdArray<float>?[] inputGrads)
    {
        var op = step.Op;
        string type = op.Node.OpType;
        if (op.IsView)
        {
            if (outputGrads[0] is { } gView && inputGrads[0] is { } gIn) AddInto(G(gView), G(gIn), gIn.Length);
            return;
        }
        if (outputGrads.Skip(DeviceSteps.IsMovement(type, out _) ? outputGrads.Length : 1).Any(g => g is not null))
            throw Unsupported(step, "the gradient of a second output has no device form yet");
        var gy = outputGrads[0];
        switch (op)
        {
            case MatMul: MatMulVjp(step, gy!, inputGrads[0], inputGrads[1]); return;
            case GeluWithSlope:
                if (inputGrads[0] is { } gGelu)
                {
                    var unary = op.Node.Attributes.GetString("approximate", "none") == "tanh" ? DeviceUnary.GeluTanh : DeviceUnary.GeluErf;
                    var (x, y, g, gx) = (Value(step, 0), Buffer(step.Outputs[0]), G(gy!), G(gGelu));
                    Launches.Add(() => Device.UnaryVjp(unary, x, y, g, gx, gGelu.Length));
                }
                return;
            case Normalization when step.Outputs.Length == 1 && !type.StartsWith("Skip", StringComparison.Ordinal): NormalizationVjp(step, gy!, inputGrads); return;
            case Softmax when type == "Softmax":
                if (inputGrads[0] is { } gSoftmax)
                {
                    var (rows, cols) = DeviceSteps.SoftmaxShape(Plan, step);
                    var (y, g, gx) = (Buffer(step.Outputs[0]), G(gy!), G(gSoftmax));
                    Launches.Add(() => Device.SoftmaxVjp(y, g, gx, rows, cols));
                }
                return;
            case Reduce when type is "ReduceMean" or "ReduceSum":
                if (inputGrads[0] is { } gReduce)
                {
                    var (outer, length, inner) = DeviceSteps.ReduceShape(Plan, step);
                    float scale = type == "ReduceMean" && length > 0 ? 1f / length : 1f;
                    var layout = BroadcastLayout.For([outer, length, inner], [outer, 1, inner], []);
                    var (g, factor, spread) = (G(gy!), Constant([scale]), Temporary(gReduce.Length));
                    Launches.Add(() => Device.Binary(DeviceBinary.Mul, layout, g, factor, null, spread()));
                    AddReduced([checked((int)gReduce.Length)], [checked((int)gReduce.Length)], spread, G(gReduce));
                }
                return;
            case Where: WhereVjp(step, gy!, inputGrads); return;
            case Cast:
                if (inputGrads[0] is { } gCast) AddInto(G(gy!), G(gCast), gCast.Length);
                return;
            case Gather when !Plan.IsConstant(step, 1):
                if (inputGrads[0] is { } gTable)
                {
                    var (outer, rows, inner, count) = DeviceSteps.GatherShape(step);
                    var (g, indices, table) = (G(gy!), Value(step, 1), G(gTable));
                    Launches.Add(() => Device.ScatterAddRows(g, indices, table, outer, rows, inner, count));
                }
                return;
            case BinaryElementwise: BinaryVjp(step, gy!, inputGrads[0], inputGrads[1]); return;
        }
        if (op is UnaryElementwise && step.Inputs.Length == 1 && DeviceSteps.UnaryOf(op.Node) is { } function)
        {
            if (inputGrads[0] is { } gUnary)
            {
                var (x, y, g, gx) = (Value(step, 0), Buffer(step.Outputs[0]), G(gy!), G(gUnary));
                Launches.Add(() => Device.UnaryVjp(function, x, y, g, gx, gUnary.Length));
            }
            return;
        }
        if (DeviceSteps.IsMovement(type, out int dataInputs) || type == "Gather")
        {
            MovementVjp(step, type == "Gather" ? 0 : dataInputs, outputGrads, inputGrads);
            return;
        }
        throw Unsupported(step, "its VJP has no device form yet");
    }

    /// <summary>dA += dY·Bᵀ and dB += Aᵀ·dY as GEMMs that accumulate (β = 1), batched as the forward GEMM is.</summary>
    private void MatMulVjp(ExecutionPlan.Step step, NdArray<float> gy, NdArray<float>? ga, NdArray<float>? gb)
    {
        var (aShape, bShape, yShape) = (step.Inputs[0]!.Shape, step.Inputs[1]!.Shape, step.Outputs[0].Shape);
        if (aShape.Length < 2 || bShape.Length < 2) throw Unsupported(step, "the VJP of a MatMul with a 1-D operand has no device form yet");
        int m = aShape[^2], k = aShape[^1], n = bShape[^1];
        long aBatch = ShapeUtil.Product(aShape[..^2]), bBatch = ShapeUtil.Product(bShape[..^2]), batch = ShapeUtil.Product(yShape[..^2]);
        int count = checked((int)batch);
        var g = G(gy);
        if (ga is not null)
        {
            GemmShape shape = bBatch == 1 && aBatch == batch ? new GemmShape(checked((int)(aBatch * m)), k, n, TransB: true, Beta: 1f)
                : aBatch == batch && bBatch == batch ? new GemmShape(m, k, n, TransB: true, Beta: 1f, BatchCount: count, StrideA: (long)m * n, StrideB: (long)k * n, StrideC: (long)m * k)
                : throw Unsupported(step, $"the VJP of a MatMul of [{ShapeUtil.Format(aShape)}] by [{ShapeUtil.Format(bShape)}] for A has no device form yet");
            var (b, target) = (Value(step, 1), G(ga));
            Launches.Add(() => Device.Gemm(shape, g, b, target));
        }
        if (gb is not null)
        {
            GemmShape shape = bBatch == 1 && aBatch == batch ? new GemmShape(k, n, checked((int)(aBatch * m)), TransA: true, Beta: 1f)
                : bBatch == batch && (aBatch == batch || aBatch == 1)
                    ? new GemmShape(k, n, m, TransA: true, Beta: 1f, BatchCount: count, StrideA: aBatch == 1 ? 0 : (long)m * k, StrideB: (long)m * n, StrideC: (long)k * n)
                : throw Unsupported(step, $"the VJP of a MatMul of [{ShapeUtil.Format(aShape)}] by [{ShapeUtil.Format(bShape)}] for B has no device form yet");
            var (a, target) = (Value(step, 0), G(gb));
            Launches.Add(() => Device.Gemm(shape, a, g, target));
        }
    }

    /// <summary>
    /// gx by the row kernel; the scale's and bias's gradients (when they are variables) as column sums of gy·x̂ and gy,
    /// x̂ from the forward kernel with a unit scale.
    /// </summary>
    private void NormalizationVjp(ExecutionPlan.Step step, NdArray<float> gy, NdArray<float>?[] inputGrads)
    {
        var (rows, cols, epsilon, centered) = DeviceSteps.NormalizeShape(step);
        var (x, scale, g) = (Value(step, 0), Value(step, 1), G(gy));
        if (inputGrads[0] is { } gx)
        {
            var target = G(gx);
            Launches.Add(() => Device.NormalizeVjp(x, scale, g, target, rows, cols, epsilon, centered));
        }
        if (inputGrads.Length > 1 && inputGrads[1] is { } gScale)
        {
            var normalized = Temporary((long)rows * cols);
            var layout = BroadcastLayout.For([rows, cols], [rows, cols], [rows, cols]);
            Normalized(step, normalized);
            Launches.Add(() => Device.Binary(DeviceBinary.Mul, layout, normalized(), g, null, normalized()));
            AddReduced([rows, cols], [cols], normalized, G(gScale));
        }
        if (inputGrads.Length > 2 && inputGrads[2] is { } gBias) AddReduced([rows, cols], [cols], () => g, G(gBias));
    }

    /// <summary>Add, Sub, Mul, Div and Pow by a constant exponent: each side's term over the output, summed over its broadcast dimensions.</summary>
    private void BinaryVjp(ExecutionPlan.Step step, NdArray<float> gy, NdArray<float>? ga, NdArray<float>? gb)
    {
        string type = step.Op.Node.OpType;
        var (aShape, bShape, yShape) = (step.Inputs[0]!.Shape, step.Inputs[1]!.Shape, step.Outputs[0].Shape);
        var g = G(gy);
        long length = ShapeUtil.Product(yShape);
        Func<DeviceTensor> gradient = () => g;
        // term = f(gy, operand) over the output's shape, in scratch 0.
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
                if (ga is not null) AddReduced(yShape, aShape, gradient, G(ga));
                if (gb is not null) AddReduced(yShape, bShape, gradient, G(gb), type == "Sub" ? -1f : 1f);
                return;
            case "Mul":
                if (ga is not null) AddReduced(yShape, aShape, Term(DeviceBinary.Mul, g, yShape, Value(step, 1), bShape), G(ga));
                if (gb is not null) AddReduced(yShape, bShape, Term(DeviceBinary.Mul, g, yShape, Value(step, 0), aShape), G(gb));
                return;
            case "Div":
                if (ga is not null) AddReduced(yShape, aShape, Term(DeviceBinary.Div, g, yShape, Value(step, 1), bShape), G(ga));
                if (gb is not null)
                {
                    // ∂(a/b)/∂b = −y/b
                    var t = Term(DeviceBinary.Mul, g, yShape, Buffer(step.Outputs[0]), yShape);
                    var b = Value(step, 1);
                    var layout = BroadcastLayout.For(yShape, yShape, bShape);
                    Launches.Add(() => Device.Binary(DeviceBinary.Div, layout, t(), b, null, t()));
                    AddReduced(yShape, bShape, t, G(gb), -1f);
                }
                return;
            case "Pow":
                if (gb is not null) throw Unsupported(step, "the gradient of Pow's exponent has no device form yet");
                if (ga is null) return;
                var (lower, factor) = PowerFactors(step, "VJP");
                // ∂(aᵉ)/∂a = e·aᵉ⁻¹, times gy
                var term = Term(DeviceBinary.Pow, Value(step, 0), aShape, lower, bShape);
                var byExponent = BroadcastLayout.For(yShape, yShape, bShape);
                var byGradient = BroadcastLayout.For(yShape, yShape, yShape);
                Launches.Add(() => Device.Binary(DeviceBinary.Mul, byExponent, term(), factor, null, term()));
                Launches.Add(() => Device.Binary(DeviceBinary.Mul, byGradient, term(), g, null, term()));
                AddReduced(yShape, aShape, term, G(ga));
                return;
        }
        throw Unsupported(step, "its VJP has no device form yet");
    }

    /// <summary>Where(c, x, y): gx += gy where c, gy += gy elsewhere (each summed over its broadcast dimensions).</summary>
    private void WhereVjp(ExecutionPlan.Step step, NdArray<float> gy, NdArray<float>?[] inputGrads)
    {
        var yShape = step.Outputs[0].Shape;
        var (c, g, length) = (Value(step, 0), G(gy), ShapeUtil.Product(yShape));
        for (int side = 1; side <= 2; side++)
        {
            if (inputGrads[side] is not { } target) continue;
            var t = Temporary(length);
            var layout = side == 1 ? BroadcastLayout.For(yShape, step.Inputs[0]!.Shape, yShape, []) : BroadcastLayout.For(yShape, step.Inputs[0]!.Shape, [], yShape);
            var (whenTrue, whenFalse) = side == 1 ? (g, Zero) : (Zero, g);
            Launches.Add(() => Device.Binary(DeviceBinary.Where, layout, c, whenTrue, whenFalse, t()));
            AddReduced(yShape, step.Inputs[side]!.Shape, t, G(target));
        }
    }

    /// <summary>
    /// The VJP of a data-movement step: its (target, source) tables grouped by source element (offsets and target lists),
    /// each input element summing the gradients of the output elements it was copied to.
    /// </summary>
    private void MovementVjp(ExecutionPlan.Step step, int dataInputs, NdArray<float>?[] outputGrads, NdArray<float>?[] inputGrads)
    {
        for (int i = 0; i < inputGrads.Length; i++)
            if (inputGrads[i] is not null && dataInputs >= 0 && i != dataInputs)
                throw Unsupported(step, $"the gradient of input {i} has no device form yet");
        var (moves, _) = DeviceSteps.MovementTables(Plan, step, dataInputs);
        foreach (var move in moves)
        {
            if (inputGrads[move.Input] is not { } gx || outputGrads[move.Output] is not { } gy) continue;
            int sources = checked((int)gx.Length);
            var offsets = new int[sources + 1];
            for (int t = 1; t < move.Pairs.Length; t += 2) offsets[move.Pairs[t] + 1]++;
            for (int s = 0; s < sources; s++) offsets[s + 1] += offsets[s];
            var targets = new int[move.Pairs.Length / 2];
            var next = (int[])offsets.Clone();
            for (int t = 0; t < move.Pairs.Length; t += 2) targets[next[move.Pairs[t + 1]]++] = move.Pairs[t];
            var (source, offsetTable, targetTable, target) = (G(gy), Plan.Table(offsets), Plan.Table(targets), G(gx));
            Launches.Add(() => Device.AddGathered(source, offsetTable, targetTable, target, sources));
        }
    }
}

using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// An <see cref="ExecutionPlan"/> run on an accelerator (<see cref="ITensorDevice"/>, docs/device-plans.md): every buffer
/// of the host plan has one device buffer (so the host plan's liveness pooling and its views carry over), constants are
/// uploaded once when the device plan is built, and each step becomes one or a few device launches. A run uploads the
/// graph inputs and downloads only what is asked for. Every device value is float32 (ints and bools too, exact below 2²⁴).
/// Operators without a device form fail here, at build, with one line naming the node.
/// </summary>
public sealed class DevicePlan : IDisposable
{
    private readonly ExecutionPlan plan;
    private readonly ITensorDevice device;
    private readonly string backend;
    private readonly Dictionary<Array, DeviceTensor> buffers = new(ReferenceEqualityComparer.Instance);
    private readonly List<DeviceTensor> tables = [];
    private readonly List<Action> launches = [];

    private DevicePlan(ExecutionPlan plan, ITensorDevice device, string backend)
    {
        this.plan = plan;
        this.device = device;
        this.backend = backend;
    }

    public ExecutionPlan Plan => plan;

    /// <summary>The device plan of an inference plan: allocates its buffers and uploads its constants on <paramref name="device"/>.</summary>
    public static DevicePlan Build(ExecutionPlan plan, ITensorDevice device, string backend)
    {
        var devicePlan = new DevicePlan(plan, device, backend);
        try
        {
            foreach (var step in plan.Steps)
                if (!step.Op.IsView) devicePlan.launches.AddRange(DeviceSteps.Translate(devicePlan, step));
        }
        catch
        {
            devicePlan.Dispose();
            throw;
        }
        return devicePlan;
    }

    /// <summary>Checks and uploads the inputs (as <see cref="ExecutionPlan.Run"/> takes them), then queues every step.</summary>
    public void Run(IReadOnlyDictionary<string, NdArray> inputs)
    {
        plan.BindInputs(inputs);
        foreach (var input in plan.InputBuffers)
            device.Upload(AsFloats(input, "graph input"), Buffer(input));
        foreach (var launch in launches) launch();
    }

    /// <summary>The value <paramref name="name"/> after <see cref="Run"/>, as float32 (waits for the device).</summary>
    public NdArray<float> Download(string name)
    {
        var value = plan.Get(name);
        var result = new NdArray<float>((int[])value.Shape.Clone());
        if (plan.Values[plan.Id(name)].IsConstant) AsFloats(value, name).CopyTo(result.Data);
        else device.Download(Buffer(value), result.Data);
        return result;
    }

    /// <summary>Copies the value <paramref name="name"/> of the last run into the host plan's own array for it (a keep-all plan's host side then reads it as after a host run).</summary>
    public void DownloadInto(string name)
    {
        if (plan.Values[plan.Id(name)].IsConstant) return;
        device.Download(Buffer(plan.Get(name)), ((NdArray<float>)plan.Get(name)).Data);
    }

    /// <summary>
    /// Runs <paramref name="plan"/> forward on the context's backend: on the host, or device-resident with the named float
    /// values (and nothing else) copied back into the host plan's arrays afterwards.
    /// </summary>
    public static void Run(ExecutionPlan plan, OpContext context, IReadOnlyDictionary<string, NdArray> inputs, IEnumerable<string> values)
    {
        if (context.Backend is not ITensorDevice device)
        {
            plan.Run(context, inputs);
            return;
        }
        var devicePlan = plan.Model.DevicePlanFor(plan, device, context.Backend.Name);
        devicePlan.Run(inputs);
        foreach (var name in values) devicePlan.DownloadInto(name);
    }

    /// <summary>
    /// Kernel family 1 on the device, on a value of the last run that never left it (a layer's input, the A side of its
    /// K-FAC factor): <paramref name="factor"/> ← β·factor + α·X̃ᵀX̃ with X the value as rows of <paramref name="cols"/>.
    /// The plan must keep every value (keep-all plans), else the value's buffer may hold a later one.
    /// </summary>
    public void AccumulateFactor(string value, int cols, bool appendOne, float alpha, float beta, DeviceTensor factor)
    {
        var array = plan.Get(value);
        if (!plan.KeepsAll || plan.Values[plan.Id(value)].IsConstant)
            throw FisherKernelsException.Argument($"value '{value}' is not kept on the device by this plan (a keep-all plan keeps every computed value)");
        if (cols <= 0 || array.Length % cols != 0)
            throw FisherKernelsException.Argument($"value '{value}' [{ShapeUtil.Format(array.Shape)}] is not rows of {cols}");
        device.AccumulateFactor(Buffer(array), (int)(array.Length / cols), cols, appendOne, alpha, beta, factor);
    }

    /// <summary>The device form of <paramref name="backward"/> (a reverse pass over this plan), built once and kept with the plan.</summary>
    public DeviceBackward BackwardFor(Backward backward)
    {
        if (!backwards.TryGetValue(backward, out var pass)) backwards[backward] = pass = DeviceBackward.Build(this, backward);
        return pass;
    }

    private readonly Dictionary<Backward, DeviceBackward> backwards = [];

    /// <summary>The device form of <paramref name="tangent"/> (a tangent pass over this plan), built once and kept with the plan.</summary>
    public DeviceTangent TangentFor(Tangent tangent)
    {
        if (!tangents.TryGetValue(tangent, out var pass)) tangents[tangent] = pass = DeviceTangent.Build(this, tangent);
        return pass;
    }

    private readonly Dictionary<Tangent, DeviceTangent> tangents = [];

    /// <summary>The device buffer of a value the plan computes or takes as input (one per host buffer).</summary>
    internal DeviceTensor Buffer(NdArray value)
    {
        var storage = ExecutionPlan.Storage(value);
        if (!buffers.TryGetValue(storage, out var tensor)) buffers[storage] = tensor = device.Allocate(storage.Length);
        return tensor;
    }

    /// <summary>The device copy of a step's input: a constant or a parameter is uploaded (once per host array), a computed value has its buffer.</summary>
    internal DeviceTensor Input(ExecutionPlan.Step step, int i, string what)
    {
        var value = step.Inputs[i] ?? throw FisherKernelsException.Unsupported($"{step.Op.Node}: input {i} ({what}) is absent");
        // A variable initializer (a parameter of a derivative plan) is uploaded as a constant is: the model's weights do not change.
        if (!IsConstant(step, i) && !(step.InputIds[i] >= 0 && plan.Variables.Contains(plan.Values[step.InputIds[i]].Name))) return Buffer(value);
        var storage = ExecutionPlan.Storage(value);
        if (!buffers.TryGetValue(storage, out var tensor))
        {
            var floats = AsFloats(value, $"{step.Op.Node}: input {i} ({what})");
            buffers[storage] = tensor = device.Allocate(floats.Length);
            device.Upload(floats, tensor);
        }
        return tensor;
    }

    internal bool IsConstant(ExecutionPlan.Step step, int i) => step.InputIds[i] >= 0 && plan.Values[step.InputIds[i]].IsConstant;

    /// <summary>A constant index table (movement steps' pairs), owned by this plan.</summary>
    internal DeviceTensor Table(ReadOnlySpan<int> indices)
    {
        var table = device.UploadIndices(indices);
        tables.Add(table);
        return table;
    }

    /// <summary>A device buffer this plan frees with its own (constant fills of data movement).</summary>
    internal void Own(DeviceTensor tensor) => tables.Add(tensor);

    internal ITensorDevice Device => device;

    internal string Backend => backend;

    internal OpContext FoldingContext => plan.Model.FoldingContext;

    /// <summary>An array's elements as float32: ints must be below 2²⁴ in magnitude (exact in float32).</summary>
    internal static float[] AsFloats(NdArray value, string what)
    {
        switch (value)
        {
            case NdArray<float> f: return f.Data;
            case NdArray<bool> b: return Array.ConvertAll(b.Data, x => x ? 1f : 0f);
        }
        var longs = Tensors.ToLongs(value) ?? throw FisherKernelsException.Unsupported($"{what}: {value.ElementType} values have no device form");
        var result = new float[longs.Length];
        for (int i = 0; i < longs.Length; i++)
        {
            if (Math.Abs(longs[i]) > 1 << 24)
                throw FisherKernelsException.Unsupported($"{what}: the integer {longs[i]} is beyond 2^24, which the device's float32 values hold exactly");
            result[i] = longs[i];
        }
        return result;
    }

    public void Dispose()
    {
        foreach (var tensor in buffers.Values) tensor.Dispose();
        foreach (var table in tables) table.Dispose();
        buffers.Clear();
        tables.Clear();
        backwards.Clear();
        tangents.Clear();
        launches.Clear();
    }
}

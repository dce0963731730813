using FisherKernels.Backends;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// What the device forms of a derivative pass (<see cref="DeviceBackward"/>, <see cref="DeviceTangent"/>) share: the
/// keep-all device plan whose values they read, their queue of launches, scratch buffers shared by the steps (launches
/// run in order on one stream, so one step's scratch is free again for the next), and small constants they own.
/// </summary>
public abstract class DevicePass
{
    /// <summary>A scratch slot, sized to its largest use when the pass is built, bound when a launch runs.</summary>
    private sealed class Scratch
    {
        public long Length;
        public DeviceTensor? Tensor;
    }

    private readonly Scratch[] scratch = [new(), new()];
    private DeviceTensor? zero;

    private protected DevicePass(DevicePlan plan)
    {
        Plan = plan;
        Device = plan.Device;
    }

    public DevicePlan DevicePlan => Plan;

    private protected DevicePlan Plan { get; }

    private protected ITensorDevice Device { get; }

    private protected List<Action> Launches { get; } = [];

    /// <summary>The device buffer of a value, gradient or tangent of the host passes (one per host buffer, shared ones included).</summary>
    private protected DeviceTensor Buffer(NdArray array) => Plan.Buffer(array);

    /// <summary>The device copy of a step's forward input, from the device plan's last run (constants and parameters uploaded).</summary>
    private protected DeviceTensor Value(ExecutionPlan.Step step, int i) => Plan.Input(step, i, $"input {i}");

    /// <summary>Uploads the host buffers the pass starts from (the seeds' cotangents, a direction), then queues every launch.</summary>
    private protected void Queue(IEnumerable<NdArray<float>> starts)
    {
        foreach (var start in starts) Device.Upload(start.Data, Buffer(start));
        foreach (var launch in Launches) launch();
    }

    /// <summary>A copy of the device buffer of a host gradient or tangent, in its shape (waits for the device).</summary>
    private protected NdArray<float> Download(NdArray<float> host)
    {
        var result = new NdArray<float>((int[])host.Shape.Clone());
        Device.Download(Buffer(host), result.Data);
        return result;
    }

    /// <summary>Queues target[0..length) = 0.</summary>
    private protected void Clear(NdArray<float> array)
    {
        var (buffer, length) = (Buffer(array), array.Length);
        Launches.Add(() => Device.Fill(buffer, length, 0f));
    }

    /// <summary>A scratch buffer of at least <paramref name="length"/> floats (slot 0 or 1), bound when the launch runs.</summary>
    private protected Func<DeviceTensor> Temporary(long length, int slot = 0)
    {
        var s = scratch[slot];
        s.Length = Math.Max(s.Length, length);
        return () => s.Tensor!;
    }

    /// <summary>Allocates the scratch slots once every step is translated (their sizes known).</summary>
    private protected void AllocateScratch()
    {
        foreach (var s in scratch)
            if (s.Length > 0) Plan.Own(s.Tensor = Device.Allocate(s.Length));
    }

    private protected DeviceTensor Constant(float[] values)
    {
        var tensor = Device.Allocate(values.Length);
        Device.Upload(values, tensor);
        Plan.Own(tensor);
        return tensor;
    }

    /// <summary>A single 0, broadcast where an operand has no gradient or tangent.</summary>
    private protected DeviceTensor Zero => zero ??= Constant([0f]);

    /// <summary>x̂ of a normalization step (the forward kernel with a unit scale and no bias), into <paramref name="target"/>.</summary>
    private protected void Normalized(ExecutionPlan.Step step, Func<DeviceTensor> target)
    {
        var (rows, cols, epsilon, centered) = DeviceSteps.NormalizeShape(step);
        var (x, ones) = (Value(step, 0), Constant(Enumerable.Repeat(1f, cols).ToArray()));
        Launches.Add(() => Device.Normalize(x, ones, null, target(), rows, cols, epsilon, centered));
    }

    /// <summary>The factors of ∂(aᵉ)/∂a = e·aᵉ⁻¹ for a Pow step by a constant exponent: e − 1 and e, on the device.</summary>
    private protected (DeviceTensor Lower, DeviceTensor Factor) PowerFactors(ExecutionPlan.Step step, string derivative)
    {
        if (!Plan.IsConstant(step, 1)) throw Unsupported(step, $"the {derivative} of Pow by a computed exponent has no device form yet");
        var exponent = DevicePlan.AsFloats(step.Inputs[1]!, $"{step.Op.Node}: exponent");
        return (Constant(exponent.Select(e => e - 1f).ToArray()), Constant(exponent));
    }

    private protected FisherKernelsException Unsupported(ExecutionPlan.Step step, string why) => DeviceSteps.Unsupported(Plan, step, why);
}

using FisherKernels.Backends;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Onnx;

/// <summary>
/// One batch's forward pass and the reverse passes over it, on the context's backend: the host plan and its
/// <see cref="Backward"/>, or, on a device backend (<see cref="ITensorDevice"/>), the keep-all <see cref="DevicePlan"/> and
/// its <see cref="DeviceBackward"/> (docs/device-plans.md), from which only the logits and the values asked for come
/// down. The seed's cotangent is filled on the host in both (<see cref="Seed"/>); the fit and the scores read values and
/// gradients through here, whichever runs them.
/// </summary>
internal sealed class ReversePass
{
    private readonly ExecutionPlan plan;
    private readonly Backward backward;
    private readonly DeviceBackward? device;
    private readonly OpContext context;

    private ReversePass(OpContext context, ExecutionPlan plan, Backward backward, DeviceBackward? device, NdArray<float> logits)
    {
        (this.context, this.plan, this.backward, this.device, Logits) = (context, plan, backward, device, logits);
    }

    /// <summary>The forward pass of <paramref name="tokens"/> with the parameters as variables; the reverse pass seeded at the logits (<see cref="Derivatives.Prepare"/>).</summary>
    public static ReversePass Prepare(LanguageModel lm, OpContext context, NdArray tokens, IReadOnlyList<string> parameters, bool layerOutputsOnly = false)
    {
        if (context.Backend is not ITensorDevice tensors)
        {
            var (hostPlan, hostBackward, hostLogits) = Derivatives.Prepare(lm, context, tokens, parameters, layerOutputsOnly);
            return new ReversePass(context, hostPlan, hostBackward, null, hostLogits);
        }
        var inputs = lm.Inputs(tokens);
        var plan = lm.Model.GetPlan(inputs, parameters.ToHashSet(), keepAll: true);
        lm.CheckLogits(plan, tokens.Shape);
        var backward = lm.Model.BackwardFor(plan, lm.LogitsOutput, layerOutputsOnly);
        var devicePlan = lm.Model.DevicePlanFor(plan, tensors, context.Backend.Name);
        var pass = devicePlan.BackwardFor(backward);
        devicePlan.Run(inputs);
        return new ReversePass(context, plan, backward, pass, devicePlan.Download(lm.LogitsOutput));
    }

    public NdArray<float> Logits { get; }

    public ExecutionPlan Plan => plan;

    /// <summary>Whether the passes run on a device.</summary>
    public bool OnDevice => device is not null;

    /// <summary>The host buffer of the seed's cotangent: fill it after <see cref="Clear"/>, before <see cref="Run"/>.</summary>
    public NdArray<float> Seed(string name) => backward.Gradient(name);

    public void Clear() => backward.Clear();

    public void Run()
    {
        if (device is null) backward.Run(context);
        else device.Run();
    }

    /// <summary>A float value of the forward pass (on a device, downloaded: a copy).</summary>
    public float[] Value(string name) => device is null ? ((NdArray<float>)plan.Get(name)).Data : device.DevicePlan.Download(name).Data;

    /// <summary>The gradient of <paramref name="name"/> after <see cref="Run"/> (on a device, downloaded: a copy).</summary>
    public float[] Gradient(string name) => device is null ? backward.Gradient(name).Data : device.Gradient(name).Data;

    public bool HasGradient(string name) => backward.HasGradient(name);
}

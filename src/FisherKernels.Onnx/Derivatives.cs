using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Onnx;

/// <summary>
/// Whole-model derivatives of a <see cref="LanguageModel"/> (SPEC §3, §4): gradients of the summed
/// next-token loss, J·V for a direction over named initializers.
/// </summary>
public static class Derivatives
{
    /// <summary>
    /// ∂L/∂θ for <c>L = Σ_t −log softmax(z_t)[y_t]</c> over targeted positions (sum over the batch), for
    /// each named parameter, in the initializer's stored shape. Targets default to the next token.
    /// </summary>
    public static Dictionary<string, NdArray<float>> LossGradients(LanguageModel lm, OpContext context, NdArray tokens,
                                                                   NdArray? targets, IReadOnlyList<string> parameters)
    {
        var pass = ReversePass.Prepare(lm, context, tokens, parameters);
        var logits = pass.Logits;
        var y = targets is null ? Targets.NextToken(tokens) : Targets.Check(targets, tokens.Shape, logits.Shape[2], "targets");
        pass.Clear();
        LossCotangent(logits, y, pass.Seed(lm.LogitsOutput));
        pass.Run();
        return parameters.ToDictionary(p => p, p =>
        {
            var shape = (int[])pass.Plan.Info(p).Shape.Clone();
            return pass.HasGradient(p) ? new NdArray<float>(shape, (float[])pass.Gradient(p).Clone()) : new NdArray<float>(shape);
        });
    }

    /// <summary>J·V of the logits for a direction over named float initializers (others fixed).</summary>
    public static NdArray<float> Jvp(LanguageModel lm, OpContext context, NdArray tokens, IReadOnlyDictionary<string, NdArray<float>> direction, string what = "direction")
    {
        if (context.Backend is Backends.ITensorDevice device)
        {
            // Device-resident (docs/device-plans.md): the tokens and the direction go up, J·V of the logits comes down.
            var (keepAll, inputs) = JvpPlan(lm, tokens, direction, what);
            var hostTangent = lm.Model.TangentFor(keepAll);
            var devicePlan = lm.Model.DevicePlanFor(keepAll, device, context.Backend.Name);
            var pass = devicePlan.TangentFor(hostTangent);
            devicePlan.Run(inputs);
            foreach (var (name, value) in direction) value.Data.CopyTo(hostTangent.Direction(name).Data, 0);
            pass.Run();
            return hostTangent.Has(lm.LogitsOutput) ? pass.Get(lm.LogitsOutput) : new NdArray<float>((int[])keepAll.Info(lm.LogitsOutput).Shape.Clone());
        }
        var (plan, tangent) = PrepareJvp(lm, context, tokens, direction, what);
        tangent.Run(context);
        var logits = (NdArray<float>)plan.Get(lm.LogitsOutput);
        return tangent.Has(lm.LogitsOutput) ? Copy(tangent.Get(lm.LogitsOutput)) : new NdArray<float>(logits.Shape);
    }

    /// <summary>A keep-all plan with the direction's initializers as variables, run forward, and its tangent pass with the direction filled in (ready to run).</summary>
    internal static (ExecutionPlan Plan, Tangent Tangent) PrepareJvp(LanguageModel lm, OpContext context, NdArray tokens,
                                                                     IReadOnlyDictionary<string, NdArray<float>> direction, string what = "direction")
    {
        var (plan, inputs) = JvpPlan(lm, tokens, direction, what);
        var tangent = lm.Model.TangentFor(plan);
        plan.Run(context, inputs);
        foreach (var (name, value) in direction) value.Data.CopyTo(tangent.Direction(name).Data, 0);
        return (plan, tangent);
    }

    /// <summary>The direction checked against the model's initializers, and the keep-all plan with its initializers as variables.</summary>
    private static (ExecutionPlan Plan, Dictionary<string, NdArray> Inputs) JvpPlan(LanguageModel lm, NdArray tokens,
                                                                                  IReadOnlyDictionary<string, NdArray<float>> direction, string what)
    {
        var graph = lm.Model.Graph;
        foreach (var (name, value) in direction)
        {
            if (!graph.Initializers.TryGetValue(name, out var init) || graph.ConstantNodeValues.Contains(name))
                throw FisherKernelsException.Argument($"{what}: '{name}' is not an initializer of the model");
            if (init.ElementType != ElementType.Float32)
                throw FisherKernelsException.Argument($"{what}: initializer '{name}' is {init.ElementType}, not a float parameter");
            if (!init.Shape.AsSpan().SequenceEqual(value.Shape))
                throw FisherKernelsException.Argument($"{what}: '{name}' has shape [{ShapeUtil.Format(value.Shape)}], the initializer [{ShapeUtil.Format(init.Shape)}]");
        }
        var inputs = lm.Inputs(tokens);
        var plan = lm.Model.GetPlan(inputs, direction.Keys.ToHashSet(), keepAll: true);
        lm.CheckLogits(plan, tokens.Shape);
        return (plan, inputs);
    }

    /// <summary>
    /// A keep-all plan with the parameters as variables, run forward; the backward pass seeded at the logits, computing
    /// every gradient or, with <paramref name="layerOutputsOnly"/>, only those of the layer outputs (the K-FAC taps).
    /// </summary>
    internal static (ExecutionPlan Plan, Backward Backward, NdArray<float> Logits) Prepare(LanguageModel lm, OpContext context, NdArray tokens, IReadOnlyList<string> parameters,
                                                                                           bool layerOutputsOnly = false)
    {
        var inputs = lm.Inputs(tokens);
        var plan = lm.Model.GetPlan(inputs, parameters.ToHashSet(), keepAll: true);
        lm.CheckLogits(plan, tokens.Shape);
        var backward = lm.Model.BackwardFor(plan, lm.LogitsOutput, layerOutputsOnly);
        plan.Run(context, inputs);
        return (plan, backward, (NdArray<float>)plan.Get(lm.LogitsOutput));
    }

    /// <summary>∂L/∂z = softmax(z) − onehot(y) at targeted positions, 0 elsewhere.</summary>
    internal static void LossCotangent(NdArray<float> logits, NdArray<long> targets, NdArray<float> cotangent)
    {
        int vocab = logits.Shape[2];
        for (int m = 0; m < targets.Data.Length; m++)
        {
            long y = targets.Data[m];
            var row = cotangent.Data.AsSpan(m * vocab, vocab);
            if (y == Targets.Ignore) { row.Clear(); continue; }
            Softmax(logits.Data.AsSpan(m * vocab, vocab), row);
            row[(int)y] -= 1f;
        }
    }

    internal static void Softmax(ReadOnlySpan<float> z, Span<float> p)
    {
        System.Numerics.Tensors.TensorPrimitives.Subtract(z, System.Numerics.Tensors.TensorPrimitives.Max(z), p);
        System.Numerics.Tensors.TensorPrimitives.Exp(p, p);
        double sum = 0;
        foreach (float v in p) sum += v;
        System.Numerics.Tensors.TensorPrimitives.Multiply(p, (float)(1 / sum), p);
    }

    internal static Dictionary<string, int[]> Shapes(Dictionary<string, NdArray> inputs) => inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape);

    private static NdArray<float> Copy(NdArray<float> a) => new((int[])a.Shape.Clone(), (float[])a.Data.Clone());
}

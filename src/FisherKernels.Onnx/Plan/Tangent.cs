using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// Forward mode over a plan built with variables and <c>keepAll</c>: given a tangent for each variable
/// (a direction), computes the tangent of every value that depends on one, through each operator's
/// Jvp, after the plan's forward run. Tangent buffers are allocated once; views, and steps whose output's
/// tangent is an input's (<see cref="Operator.TangentPassesThrough"/>), share their input's.
/// </summary>
public sealed class Tangent
{
    private sealed record TangentStep(int Index, ExecutionPlan.Step Step, NdArray<float>?[] InputTangents, NdArray<float>?[] OutputTangents, int ConstantInputs);

    private readonly ExecutionPlan plan;
    private readonly NdArray<float>?[] tangents;
    private readonly List<TangentStep> forward = [];

    public Tangent(ExecutionPlan plan)
    {
        this.plan = plan;
        var values = plan.Values;
        tangents = new NdArray<float>?[values.Count];
        foreach (string variable in plan.Variables)
        {
            var v = values[plan.Id(variable)];
            if (v.Info.Type == ElementType.Float32) tangents[plan.Id(variable)] = new NdArray<float>(v.Info.Shape);
        }
        for (int s = 0; s < plan.Steps.Count; s++)
        {
            var step = plan.Steps[s];
            var inputTangents = step.InputIds.Select((id, i) => id >= 0 && (step.Op.IsView ? i == 0 : step.Op.IsDifferentiable(i)) ? tangents[id] : null).ToArray();
            if (inputTangents.All(t => t is null)) continue;
            var outputTangents = new NdArray<float>?[step.OutputIds.Length];
            // A view's output, or x + c's, has its input's tangent: the same buffer, no step.
            int passedThrough = step.Op.IsView ? 0 : step.Op.TangentPassesThrough(inputTangents, values[step.OutputIds[0]].Info.Shape);
            for (int j = 0; j < outputTangents.Length; j++)
            {
                var v = values[step.OutputIds[j]];
                if (v.Info.Type != ElementType.Float32) continue;
                outputTangents[j] = passedThrough >= 0 && j == 0
                    ? new NdArray<float>(v.Info.Shape, inputTangents[passedThrough]!.Data)
                    : new NdArray<float>(v.Info.Shape);
                tangents[step.OutputIds[j]] = outputTangents[j];
            }
            if (passedThrough < 0) forward.Add(new TangentStep(s, step, inputTangents, outputTangents, plan.InitializerInputs(step)));
        }
    }

    public ExecutionPlan Plan => plan;

    /// <summary>The steps that compute a tangent, in order, for a device plan (<see cref="DeviceTangent"/>).</summary>
    internal IEnumerable<(ExecutionPlan.Step Step, NdArray<float>?[] InputTangents, NdArray<float>?[] OutputTangents)> Steps =>
        forward.Select(f => (f.Step, f.InputTangents, f.OutputTangents));

    /// <summary>The variables' tangent buffers (the direction), for a device plan to upload.</summary>
    internal IEnumerable<NdArray<float>> Directions => plan.Variables.Where(v => tangents[plan.Id(v)] is not null).Select(v => tangents[plan.Id(v)]!);

    /// <summary>The tangent buffer of a variable, to fill with the direction before <see cref="Run"/>.</summary>
    public NdArray<float> Direction(string variable) => Get(variable);

    /// <summary>The tangent of <paramref name="name"/> after <see cref="Run"/> (zero-length dependence gives an error naming it).</summary>
    public NdArray<float> Get(string name) => tangents[plan.Id(name)]
        ?? throw FisherKernelsException.Argument($"'{name}' does not depend on the direction's initializers");

    public bool Has(string name) => plan.HasValue(name) && tangents[plan.Id(name)] is not null;

    /// <summary>
    /// Propagates the directions forward; the plan must have run on the same inputs just before. With a
    /// <paramref name="profile"/> of the plan, each step's tangent time is added to it (bench --model --verbose).
    /// </summary>
    public void Run(OpContext context, PlanProfile? profile = null)
    {
        if (profile is not null && profile.Plan != plan) throw FisherKernelsException.Argument("the profile belongs to another plan");
        profile?.BeginRun();
        foreach (var (index, step, inputTangents, outputTangents, constantInputs) in forward)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            context.ConstantInputs = constantInputs;
            try { step.Op.Jvp(context, step.Inputs, step.Outputs, inputTangents, outputTangents); }
            finally { context.ConstantInputs = 0; }
            profile?.Add(index, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        }
    }
}

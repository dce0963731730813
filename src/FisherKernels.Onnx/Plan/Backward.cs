using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// Reverse mode over a plan built with variables and <c>keepAll</c>: given cotangents of some values
/// (the seeds, e.g. the logits), accumulates the gradient of every value that depends on a variable and
/// that the seeds depend on, through each operator's Vjp. Gradient buffers are allocated once. A run
/// walks the steps backwards and zeroes each non-seed gradient just before the first step that adds into
/// it (while that step's data is about to be in cache), so nothing is zeroed twice and a buffer's
/// old contents never leak into the next run. Gradients of variables are total derivatives (a weight
/// read twice, as a tied embedding is, sums both uses).
/// With several <see cref="Cotangents"/>, each gradient has that many buffers (a leading cotangent axis, one
/// buffer a cotangent) propagated together through the one forward: an operator with a block form
/// (<see cref="Operator.VjpBlock"/>: the products, whose shared operand is packed once for the whole block) runs once
/// a step, every other operator once a cotangent. Each cotangent's gradients equal a one-cotangent run's.
/// </summary>
public sealed class Backward
{
    /// <summary>
    /// A step of the reverse walk. <paramref name="FirstWrites"/>: the input gradients this step is the first
    /// to reach in the walk (zeroed just before it runs; a view copies into them instead of adding).
    /// <paramref name="Fresh"/>: for an operator that <see cref="Operator.WritesFreshGradients"/>, the first writes as
    /// input bits (passed in <see cref="OpContext.FreshGradients"/>, not zeroed). <paramref name="Constant"/>: the inputs that are
    /// initializers, as input bits (<see cref="OpContext.ConstantInputs"/>: a Vjp may keep a prepared form of them).
    /// </summary>
    private sealed record GradStep(int Index, ExecutionPlan.Step Step, NdArray<float>?[][] OutputGrads, NdArray<float>?[][] InputGrads, NdArray<float>[][] FirstWrites, int Fresh, int Constant);

    private readonly ExecutionPlan plan;
    /// <summary>gradients[c][value]: cotangent c's gradient of each value (null: none computed).</summary>
    private readonly NdArray<float>?[][] gradients;
    private readonly List<NdArray<float>>[] seeds;
    /// <summary>Non-seed gradients no step writes (their value is zero), per cotangent: zeroed at the start of a run.</summary>
    private readonly List<NdArray<float>>[] unwritten;
    private readonly List<GradStep> reverse = [];

    /// <param name="targets">When given, only the gradients of these values and of those on their way to the seeds are computed
    /// (e.g. the layer outputs without the weight gradients, as a tap-only pass); otherwise every value's.</param>
    /// <param name="cotangents">How many cotangents a run propagates together (at most; see <paramref name="memoryBudget"/>).</param>
    /// <param name="memoryBudget">Bytes the gradient buffers of all cotangents may take: fewer cotangents when they would take more (at least one).</param>
    public Backward(ExecutionPlan plan, IEnumerable<string> seeds, IEnumerable<string>? targets = null, int cotangents = 1, long memoryBudget = long.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(cotangents, 1);
        this.plan = plan;
        var values = plan.Values;

        // Values the seeds depend on (walking the steps backwards).
        var needed = new bool[values.Count];
        var seedIds = new HashSet<int>();
        foreach (var seed in seeds)
        {
            int id = plan.Id(seed);
            if (values[id].Info.Type != ElementType.Float32)
                throw FisherKernelsException.Argument($"cannot differentiate with respect to '{seed}': it is {values[id].Info.Type}, not float");
            needed[id] = true;
            seedIds.Add(id);
        }
        var steps = plan.Steps;
        for (int s = steps.Count - 1; s >= 0; s--)
        {
            var step = steps[s];
            if (!step.OutputIds.Any(o => needed[o])) continue;
            for (int i = 0; i < step.InputIds.Length; i++)
                if (step.InputIds[i] >= 0 && (step.Op.IsView ? i == 0 : step.Op.IsDifferentiable(i))) needed[step.InputIds[i]] = true;
        }
        var reached = new bool[values.Count];
        if (targets is null) Array.Fill(reached, true);
        else
        {
            // Values computed from a target (walking the steps forwards): only they lie between a target and a seed.
            foreach (var target in targets) reached[plan.Id(target)] = true;
            foreach (var step in steps)
                for (int i = 0; i < step.InputIds.Length; i++)
                    if (step.InputIds[i] >= 0 && reached[step.InputIds[i]] && (step.Op.IsView ? i == 0 : step.Op.IsDifferentiable(i)))
                        foreach (int o in step.OutputIds) reached[o] = true;
        }
        var hasGradient = new bool[values.Count];
        for (int id = 0; id < values.Count; id++)
            hasGradient[id] = needed[id] && reached[id] && values[id].DependsOnVariable && values[id].Info.Type == ElementType.Float32;
        var aliasOf = Aliases(steps, hasGradient, seedIds);
        long bytes = 0;
        for (int id = 0; id < values.Count; id++)
            if (hasGradient[id] && aliasOf[id] < 0) bytes += values[id].Info.Length * sizeof(float);
        Cotangents = (int)Math.Clamp(memoryBudget / Math.Max(bytes, 1), 1, cotangents);
        gradients = new NdArray<float>?[Cotangents][];
        this.seeds = new List<NdArray<float>>[Cotangents];
        unwritten = new List<NdArray<float>>[Cotangents];
        for (int c = 0; c < Cotangents; c++)
        {
            var own = gradients[c] = new NdArray<float>?[values.Count];
            // Top down, so that a shared buffer exists before the values below it take it (an alias is a later step's output).
            for (int id = values.Count - 1; id >= 0; id--)
                if (hasGradient[id])
                    own[id] = aliasOf[id] > id ? new NdArray<float>(values[id].Info.Shape, own[aliasOf[id]]!.Data) : new NdArray<float>(values[id].Info.Shape);
            this.seeds[c] = [.. seedIds.Where(id => own[id] is not null).Select(id => own[id]!)];
            unwritten[c] = [];
        }

        var written = new bool[values.Count];
        foreach (int id in seedIds) written[id] = true;
        for (int s = steps.Count - 1; s >= 0; s--)
        {
            var step = steps[s];
            var outputGrads = step.OutputIds.Select(o => gradients[0][o]).ToArray();
            if (outputGrads.All(g => g is null)) continue;
            var inputGrads = step.InputIds.Select((id, i) => id >= 0 && (step.Op.IsView ? i == 0 : step.Op.IsDifferentiable(i)) ? gradients[0][id] : null).ToArray();
            for (int i = 0; i < inputGrads.Length; i++)
                if (inputGrads[i] is not null && aliasOf[step.InputIds[i]] > step.InputIds[i])
                {
                    // Shares the output's buffer, which already holds it: nothing to add.
                    written[step.InputIds[i]] = true;
                    inputGrads[i] = null;
                }
            if (inputGrads.All(g => g is null)) continue;
            var firstWrites = new List<int>();
            int fresh = 0;
            for (int i = 0; i < inputGrads.Length; i++)
                if (inputGrads[i] is not null && !written[step.InputIds[i]])
                {
                    written[step.InputIds[i]] = true;
                    if (step.Op.WritesFreshGradients && i < 32) fresh |= 1 << i;
                    else firstWrites.Add(step.InputIds[i]);
                }
            // Every cotangent's buffers in the same places.
            NdArray<float>?[] For(NdArray<float>?[] first, int c, int[] ids) =>
                c == 0 ? first : first.Select((g, i) => g is null ? null : gradients[c][ids[i]]).ToArray();
            reverse.Add(new GradStep(s, step,
                [.. Enumerable.Range(0, Cotangents).Select(c => For(outputGrads, c, step.OutputIds))],
                [.. Enumerable.Range(0, Cotangents).Select(c => For(inputGrads, c, step.InputIds))],
                [.. Enumerable.Range(0, Cotangents).Select(c => firstWrites.Select(id => gradients[c][id]!).ToArray())], fresh, plan.InitializerInputs(step)));
        }
        for (int c = 0; c < Cotangents; c++)
            for (int id = 0; id < values.Count; id++)
                if (gradients[c][id] is { } g && !written[id]) unwritten[c].Add(g);
    }

    /// <summary>How many cotangents a run propagates together (each with its own gradient buffers).</summary>
    public int Cotangents { get; }

    /// <summary>
    /// For each value, the output whose gradient buffer it shares (−1: its own). An input that an operator
    /// passes through unchanged (a view, a residual or bias Add's full-shape operand) and that nothing else
    /// reads has exactly the output's gradient: sharing the buffer saves the copy. At most one input per
    /// step shares, so each shared buffer is a chain of values whose gradients are all equal and written
    /// once, before the chain's consumers read it; seeds (filled by the caller) keep their own.
    /// </summary>
    private int[] Aliases(IReadOnlyList<ExecutionPlan.Step> steps, bool[] hasGradient, HashSet<int> seedIds)
    {
        var values = plan.Values;
        var readers = new int[values.Count];
        foreach (var step in steps)
        {
            if (!step.OutputIds.Any(o => hasGradient[o])) continue;
            for (int i = 0; i < step.InputIds.Length; i++)
                if (step.InputIds[i] >= 0 && (step.Op.IsView ? i == 0 : step.Op.IsDifferentiable(i))) readers[step.InputIds[i]]++;
        }
        var aliasOf = new int[values.Count];
        Array.Fill(aliasOf, -1);
        foreach (var step in steps)
        {
            int output = step.OutputIds[0];
            if (!hasGradient[output] || seedIds.Contains(output)) continue;
            for (int i = 0; i < step.InputIds.Length; i++)
            {
                int id = step.InputIds[i];
                if (id < 0 || id >= output || !hasGradient[id] || readers[id] != 1 || seedIds.Contains(id) || !step.Op.PassesGradientUnchanged(i)) continue;
                if (!(step.Op.IsView ? values[id].Info.Length == values[output].Info.Length : values[id].Info.Shape.AsSpan().SequenceEqual(values[output].Info.Shape))) continue;
                aliasOf[id] = output;
                break;
            }
        }
        return aliasOf;
    }

    public ExecutionPlan Plan => plan;

    /// <summary>
    /// The reverse walk of the first cotangent, for a device plan (<see cref="DeviceBackward"/>): each step with its output
    /// and input gradients and the input gradients it is the first to write (those it writes fresh included), which the
    /// device zeroes before the step adds into them.
    /// </summary>
    internal IEnumerable<(ExecutionPlan.Step Step, NdArray<float>?[] OutputGrads, NdArray<float>?[] InputGrads, NdArray<float>[] FirstWrites)> ReverseSteps =>
        reverse.Select(r => (r.Step, r.OutputGrads[0], r.InputGrads[0],
            r.FirstWrites[0].Concat(Enumerable.Range(0, Math.Min(32, r.InputGrads[0].Length)).Where(i => (r.Fresh & (1 << i)) != 0).Select(i => r.InputGrads[0][i]!)).ToArray()));

    /// <summary>The first cotangent's gradients that no step writes (zero), and its seeds' gradient buffers.</summary>
    internal IReadOnlyList<NdArray<float>> Unwritten => unwritten[0];

    internal IReadOnlyList<NdArray<float>> Seeds => seeds[0];

    /// <summary>Whether <paramref name="name"/> gets a gradient (it depends on a variable and the seeds depend on it).</summary>
    public bool HasGradient(string name) => plan.HasValue(name) && gradients[0][plan.Id(name)] is not null;

    /// <summary>The gradient buffer of <paramref name="name"/> for cotangent <paramref name="cotangent"/>; for a seed, fill it with the cotangent after <see cref="Clear"/>.</summary>
    public NdArray<float> Gradient(string name, int cotangent = 0) => gradients[cotangent][plan.Id(name)]
        ?? throw FisherKernelsException.Argument($"'{name}' has no gradient here: it does not depend on the parameters or does not reach the differentiated output");

    /// <summary>Zeroes the seeds' gradient buffers (every cotangent's), to be filled (in part or whole) before <see cref="Run"/>; <see cref="Run"/> resets every other gradient itself.</summary>
    public void Clear()
    {
        foreach (var own in seeds)
            foreach (var g in own) g.Span.Clear();
    }

    /// <summary>
    /// Propagates the seeds' cotangents (already in their gradient buffers) back through the plan; every
    /// other gradient is overwritten with its value for these cotangents. <paramref name="count"/>: the first
    /// cotangents only (default all of <see cref="Cotangents"/>). With a <paramref name="profile"/> of
    /// the plan, each step's time (its zeroing included) is added to it.
    /// </summary>
    public void Run(OpContext context, PlanProfile? profile = null, int count = -1)
    {
        if (count < 0) count = Cotangents;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, Cotangents);
        if (profile is not null && profile.Plan != plan) throw FisherKernelsException.Argument("the profile belongs to another plan");
        profile?.BeginRun();
        for (int c = 0; c < count; c++)
            foreach (var g in unwritten[c]) g.Span.Clear();
        foreach (var gradStep in reverse)
        {
            long start = profile is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
            RunStep(context, gradStep, count);
            profile?.Add(gradStep.Index, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        }
    }

    private static void RunStep(OpContext context, GradStep gradStep, int count)
    {
        var (_, step, outputGrads, inputGrads, firstWrites, fresh, constant) = gradStep;
        if (step.Op.IsView)
        {
            // The elements did not move: the gradient passes through unchanged.
            for (int c = 0; c < count; c++)
            {
                if (outputGrads[c][0] is not { } g || inputGrads[c][0] is not { } target) return;
                if (firstWrites[c].Length > 0) g.Span.CopyTo(target.Span);
                else System.Numerics.Tensors.TensorPrimitives.Add(target.Span, g.Span, target.Span);
            }
            return;
        }
        for (int c = 0; c < count; c++)
            foreach (var first in firstWrites[c]) first.Span.Clear();
        context.FreshGradients = fresh;
        context.ConstantInputs = constant;
        try
        {
            if (count > 1 && step.Op.VjpBlock(context, step.Inputs, step.Outputs, outputGrads.AsSpan(0, count), inputGrads.AsSpan(0, count))) return;
            for (int c = 0; c < count; c++) step.Op.Vjp(context, step.Inputs, step.Outputs, outputGrads[c], inputGrads[c]);
        }
        finally { context.FreshGradients = 0; context.ConstantInputs = 0; }
    }
}

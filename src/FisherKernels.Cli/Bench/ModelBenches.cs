using FisherKernels.Cli.Commands;
using FisherKernels.Curvature;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace FisherKernels.Cli.Bench;

/// <summary>
/// `bench --model M --tokens T` (SPEC §6): <c>forward</c> against ONNX Runtime (its default session settings but
/// for the same thread count) on the same model and tokens; <c>backward</c> (the backward pass of the summed
/// next-token loss to every layer weight, after a forward pass that is not timed), <c>jvp</c> (the tangent pass
/// along every layer weight, likewise), <c>fit</c> (one batch: forward, backward with taps, factor
/// accumulation) and <c>score</c> (isotropic, the whole batch, forward included) against our forward pass;
/// <c>score_sequence</c> (isotropic, <c>--level sequence</c>) against our forward pass; <c>score_kfac</c> (a full-rank
/// curvature of the bench batch as posterior) against the isotropic score.
/// </summary>
internal sealed class ModelBenches : IBenchSuite
{
    public bool NeedsModel => true;

    public IEnumerable<BenchResult> Run(BenchContext context)
    {
        string modelPath = context.Model!;
        string tokensPath = context.Tokens ?? throw FisherKernelsException.Argument("bench: --model needs --tokens T.npy");
        var lm = LanguageModel.Load(modelPath);
        var tokens = NpyFile.Read(tokensPath);
        var inputs = lm.Inputs(tokens, null, tokensPath);
        var op = new OpContext(context.Backend);
        string shape = string.Join("x", tokens.Shape);
        string backend = context.Backend.Name;
        int runs = context.Quick ? 5 : 10;
        void Forward() => lm.Forward(op, tokens);
        if (context.Log is { } log) LogProfile(log, lm, op, inputs, runs);
        // Our peak (model, plan buffers, packed weights, runtime) is read before ONNX Runtime loads its copy.
        Forward();
        long peakWorkingSet = PeakWorkingSet();

        using (var ort = OrtSession(modelPath, context.Threads, inputs))
        {
            var (session, feeds) = ort;
            yield return BenchResult.Timed("forward", backend, shape, null,
                BenchTimer.Blocks(Forward, () => session.Run(feeds).Dispose(), runs, blocks: context.Quick ? 2 : 4, warmup: 2), "onnxruntime")
                with { PeakWorkingSetBytes = peakWorkingSet };
        }
        if (context.ForwardOnly) yield break;

        // Each row below runs through Row: one that fails (out of memory, a curvature the posterior cannot use) is reported
        // as failed and the others still run.
        // backward and jvp time the pass itself on a forward already run (its values kept), as the issue's
        // "backward ≤ 2.5× forward" means; forward + backward costs the sum of the two rows.
        var parameters = LayerDiscovery.DefaultParameters(lm.Model.Layers);
        var ids = NpyFile.ReadInt64(tokensPath);
        var targets = Targets.NextToken(ids);
        yield return Row("backward", backend, shape, "forward", () =>
        {
            var (_, backward, logits) = Derivatives.Prepare(lm, op, tokens, parameters);
            var nextTokens = Targets.NextToken(tokens);
            var seed = backward.Gradient(lm.LogitsOutput);
            void Seed()
            {
                backward.Clear();
                Derivatives.LossCotangent(logits, nextTokens, seed);
            }
            void Backward()
            {
                Seed();
                backward.Run(op);
            }
            if (context.Log is { } backwardLog)
            {
                LogBackwardProfile(backwardLog, op, "backward", backward, Seed, runs);
                var (_, taps, _) = Derivatives.Prepare(lm, op, tokens, parameters, layerOutputsOnly: true);
                var tapSeed = taps.Gradient(lm.LogitsOutput);
                LogBackwardProfile(backwardLog, op, "taps-only backward (fit, score)", taps, () =>
                {
                    taps.Clear();
                    Derivatives.LossCotangent(logits, nextTokens, tapSeed);
                }, runs);
            }
            return BenchResult.Timed("backward", backend, shape, null, BenchTimer.Blocks(Backward, Forward, runs, warmup: 2), "forward");
        });

        yield return Row("jvp", backend, shape, "forward", () =>
        {
            var random = new Random(7);
            var direction = lm.Model.Layers.ToDictionary(l => l.Id, l =>
            {
                var w = (NdArray<float>)lm.Model.Graph.Initializers[l.Id];
                var v = new NdArray<float>((int[])w.Shape.Clone());
                for (int i = 0; i < v.Data.Length; i++) v.Data[i] = (float)(random.NextDouble() - 0.5);
                return v;
        });
        var (jvpPlan, tangent) = Derivatives.PrepareJvp(lm, op, tokens, direction);
        if (context.Log is { } jvpLog) LogTangentProfile(jvpLog, jvpPlan, tangent, op, runs);
        return BenchResult.Timed("jvp", backend, shape, null, BenchTimer.Blocks(() => tangent.Run(op), Forward, runs, warmup: 2), "forward");
        });

        // One batch of `fit` (SPEC §3 default: sampled Fisher, one draw): forward, backward with the layer taps, factor accumulation.
        yield return Row("fit", backend, shape, "forward", () =>
        {
            var accumulator = new KfacAccumulator(context.Backend, KfacScoring.Shapes(lm.Model.Layers), new KfacFitOptions(), modelSha256: "bench");
            var result = BenchResult.Timed("fit", backend, shape, null,
                BenchTimer.Blocks(() => FitService.FitBatch(lm, op, accumulator, lm.Model.Layers, parameters, ids, targets), Forward, runs, warmup: 2), "forward");
            if (context.Log is { } fitLog)
            {
                var times = new StageTimes();
                for (int i = 0; i < runs; i++) FitService.FitBatch(lm, op, accumulator, lm.Model.Layers, parameters, ids, targets, times);
                fitLog.WriteLine($"fit: time per stage (medians over {runs} runs)");
                fitLog.WriteLine(times.Format());
            }
            return result;
        });

        void Isotropic() => PositionScorer.Score(lm, op, tokens, null, parameters, "isotropic", 1.0, EpistemicMetric.SquaredGradientNorm);
        yield return Row("score", backend, shape, "forward", () => BenchResult.Timed("score", backend, shape, null, BenchTimer.Blocks(Isotropic, Forward, runs: 5, warmup: 1), "forward"));
        // SPEC §4 --level sequence: the per-sequence scores alone, one reverse pass a sequence.
        void SequenceLevel() => PositionScorer.Score(lm, op, tokens, null, parameters, "isotropic", 1.0, EpistemicMetric.SquaredGradientNorm, ScoreLevel.Sequence);
        yield return Row("score_sequence", backend, shape, "forward", () => BenchResult.Timed("score_sequence", backend, shape, null, BenchTimer.Blocks(SequenceLevel, Forward, runs: 5, warmup: 1), "forward"));

        // K-FAC scores need a curvature (issue 5: a K-FAC score against an isotropic one): the bench batch fitted with 16
        // label draws a position, so that every G has full rank as after a fit over many positions. (The fit row's one
        // draw over 128 positions leaves G of rank ≤ 128, and a score would rotate only those directions: cheaper, but
        // not what a user's curvature costs.)
        yield return Row("score_kfac", backend, shape, "isotropic_score", () =>
        {
                var curvature = new KfacAccumulator(context.Backend, KfacScoring.Shapes(lm.Model.Layers), new KfacFitOptions { Samples = 16 }, modelSha256: "bench");
                FitService.FitBatch(lm, op, curvature, lm.Model.Layers, parameters, ids, targets);
                var kfac = EpistemicMetric.Kfac(new KfacPosterior(curvature.ToCurvature("bench"), context.Backend));
                return BenchResult.Timed("score_kfac", backend, shape, null,
                    BenchTimer.Blocks(() => PositionScorer.Score(lm, op, tokens, null, parameters, "kfac", 1.0, kfac), Isotropic, runs: 5, warmup: 1), "isotropic_score");
        });
    }

    /// <summary>One row, or a failed row naming the error when it throws (SPEC §6: the other rows still run).</summary>
    internal static BenchResult Row(string name, string backend, string shape, string baseline, Func<BenchResult> run)
    {
        try { return run(); }
        catch (Exception e) when (e is FisherKernelsException or InvalidOperationException or OutOfMemoryException or OverflowException or ArgumentException)
        {
            return BenchResult.Failed(name, backend, shape, baseline, e.Message);
        }
    }

    private static long PeakWorkingSet()
    {
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        return process.PeakWorkingSet64;
    }

    /// <summary>--verbose: where the forward pass spends its time, by operator type.</summary>
    private static void LogProfile(TextWriter log, LanguageModel lm, OpContext op, Dictionary<string, NdArray> inputs, int runs)
    {
        var plan = lm.Model.GetPlan(inputs);
        plan.Run(op, inputs);
        var profile = new PlanProfile(plan);
        for (int i = 0; i < 2 * runs; i++) plan.Run(op, inputs, profile);
        log.WriteLine($"forward: time per operator type (sums of step medians over {profile.Runs} runs)");
        log.WriteLine(profile.Format());
    }

    /// <summary>--verbose: where a reverse pass spends its time, by operator type (<paramref name="seed"/> fills its cotangents).</summary>
    private static void LogBackwardProfile(TextWriter log, OpContext op, string what, Backward backward, Action seed, int runs)
    {
        var profile = new PlanProfile(backward.Plan);
        for (int i = 0; i < 2 * runs; i++)
        {
            seed();
            backward.Run(op, profile);
        }
        log.WriteLine($"{what}: time per operator type (sums of step medians over {profile.Runs} runs)");
        log.WriteLine(profile.Format());
    }

    /// <summary>--verbose: where the tangent pass spends its time, by operator type (steps with no tangent are not timed).</summary>
    private static void LogTangentProfile(TextWriter log, ExecutionPlan plan, Tangent tangent, OpContext op, int runs)
    {
        tangent.Run(op);
        var profile = new PlanProfile(plan);
        for (int i = 0; i < 2 * runs; i++) tangent.Run(op, profile);
        log.WriteLine($"jvp: tangent time per operator type (sums of step medians over {profile.Runs} runs)");
        log.WriteLine(profile.Format());
    }

    private sealed class Ort(InferenceSession session, SessionOptions options, List<NamedOnnxValue> feeds) : IDisposable
    {
        public void Deconstruct(out InferenceSession s, out List<NamedOnnxValue> f) { s = session; f = feeds; }

        public void Dispose() { session.Dispose(); options.Dispose(); }
    }

    private static Ort OrtSession(string modelPath, int threads, Dictionary<string, NdArray> inputs)
    {
        // SPEC §6: ONNX Runtime at its own defaults (all graph optimizations, sequential execution, pool threads that
        // spin between runs) but for the thread count, which both sides share.
        var options = new SessionOptions { IntraOpNumThreads = threads > 0 ? threads : Environment.ProcessorCount };
        var feeds = inputs.Select(kv => kv.Value switch
        {
            NdArray<long> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<long>(v.Data, v.Shape)),
            NdArray<int> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<int>(v.Data, v.Shape)),
            NdArray<float> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<float>(v.Data, v.Shape)),
            _ => throw FisherKernelsException.Unsupported($"bench: input '{kv.Key}' of type {kv.Value.ElementType}"),
        }).ToList();
        return new Ort(new InferenceSession(modelPath, options), options, feeds);
    }
}

using BenchmarkDotNet.Attributes;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Operators;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace FisherKernels.Perf;

/// <summary>
/// The forward pass against ONNX Runtime on the same model, tokens and thread count (SPEC §6): ONNX Runtime at its
/// default session settings (all graph optimizations, pool threads that spin between runs) but for the thread count.
/// BenchmarkDotNet times each method in a block of its own. The model and tokens come from the environment:
/// FISHERKERNELS_BENCH_MODEL and FISHERKERNELS_BENCH_TOKENS (perf/models/make_gpt2_bench.py writes both);
/// FISHERKERNELS_BENCH_THREADS (default: every core). 40 warm-up runs, not Program.cs's 2: .NET recompiles our methods
/// optimized only after ~30 calls (the first runs take 3-5x as long), ONNX Runtime is native code.
/// </summary>
[WarmupCount(40), IterationCount(15)]
public class ForwardBenchmarks
{
    private LanguageModel lm = null!;
    private NdArray tokens = null!;
    private OpContext op = null!;
    private CpuBackend backend = null!;
    private InferenceSession session = null!;
    private SessionOptions options = null!;
    private List<NamedOnnxValue> feeds = null!;

    [GlobalSetup]
    public void Setup()
    {
        string model = Environment.GetEnvironmentVariable("FISHERKERNELS_BENCH_MODEL")
            ?? throw new InvalidOperationException("ForwardBenchmarks: set FISHERKERNELS_BENCH_MODEL and FISHERKERNELS_BENCH_TOKENS");
        string tokensPath = Environment.GetEnvironmentVariable("FISHERKERNELS_BENCH_TOKENS")
            ?? throw new InvalidOperationException("ForwardBenchmarks: set FISHERKERNELS_BENCH_TOKENS");
        int threads = int.TryParse(Environment.GetEnvironmentVariable("FISHERKERNELS_BENCH_THREADS"), out int t) && t > 0 ? t : Environment.ProcessorCount;
        lm = LanguageModel.Load(model);
        tokens = NpyFile.Read(tokensPath);
        backend = new CpuBackend(threads);
        op = new OpContext(backend);
        options = new SessionOptions { IntraOpNumThreads = threads };
        session = new InferenceSession(model, options);
        // The same inputs our forward pass builds from the tokens (ids, and masks or positions where the model has them).
        feeds = lm.Inputs(tokens, null, tokensPath).Select(kv => kv.Value switch
        {
            NdArray<long> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<long>(v.Data, v.Shape)),
            NdArray<int> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<int>(v.Data, v.Shape)),
            NdArray<float> v => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<float>(v.Data, v.Shape)),
            _ => throw new InvalidOperationException($"ForwardBenchmarks: input '{kv.Key}' of type {kv.Value.ElementType}"),
        }).ToList();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        session.Dispose();
        options.Dispose();
        backend.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void OnnxRuntime() => session.Run(feeds).Dispose();

    [Benchmark]
    public void Forward() => lm.Forward(op, tokens);
}

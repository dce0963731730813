using System.Runtime.InteropServices;
using FisherKernels.Backends;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Jobs;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Scoring;
using FisherKernels.Uncertainty;

namespace FisherKernels.Native;

/// <summary>
/// The [UnmanagedCallersOnly] entry points behind native/include/fisherkernels.h (SPEC §8). The C shim
/// (native/shim/fisherkernels.c) hosts the runtime and forwards each fk_* call to the method of the
/// same name here. Every entry point catches everything and returns an fk_status; the message goes to
/// the shim's thread-local fk_last_error through <see cref="Initialize"/>'s setter.
/// </summary>
internal static unsafe class Exports
{
    private const int Ok = 0;

    private static delegate* unmanaged<byte*, void> setError;

    /// <summary>Called once by the shim before anything else, with its fk_last_error setter.</summary>
    [UnmanagedCallersOnly]
    public static int Initialize(delegate* unmanaged<byte*, void> errorSetter)
    {
        setError = errorSetter;
        return Ok;
    }

    [UnmanagedCallersOnly]
    public static int EngineCreate(byte* backend, nint* handle)
    {
        try
        {
            NotNull(handle, "out");
            *handle = 0;
            var name = backend == null ? null : Utf8(backend);
            *handle = Handles.Add(new Engine(BackendRegistry.Create(name)));
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static void EngineDestroy(nint handle)
    {
        try
        {
            if (handle != 0) Handles.Remove<Engine>(handle, "fk_engine").Dispose();
        }
        catch (Exception e) { Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int KfacAccumulate(nint handle, float* x, long rows, long cols, int appendOne, float weight, float* factor)
    {
        try
        {
            NotNull(x, "x"); NotNull(factor, "factor");
            NonNegative(rows, "rows"); NonNegative(cols, "cols");
            if (appendOne is not (0 or 1)) throw FisherKernelsException.Argument($"append_one must be 0 or 1, got {appendOne}");
            long dim = cols + appendOne;
            if (dim == 0) throw FisherKernelsException.Argument("the factor is empty: cols is 0 and append_one is 0");
            var xs = In(x, "x", rows, cols);
            var f = Out(factor, "factor", dim, dim);
            using var engine = Handles.Use<Engine>(handle, "fk_engine");
            engine.Value.Backend.AccumulateFactor(xs, (int)rows, (int)cols, appendOne == 1, weight, 1f, f);
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int WoodburyApply(nint handle, float* d, float* u, float* s, long n, long r, float* b, long k, float* output)
    {
        try
        {
            NotNull(d, "d"); NotNull(u, "u"); NotNull(s, "s"); NotNull(b, "b"); NotNull(output, "out");
            Positive(n, "n"); NonNegative(r, "r"); NonNegative(k, "k");
            var ds = In(d, "d", n);
            var us = In(u, "u", n, r);
            var ss = In(s, "s", r);
            var bs = In(b, "b", n, k);
            var outs = Out(output, "out", n, k);
            using var engine = Handles.Use<Engine>(handle, "fk_engine");
            engine.Value.Backend.WoodburyApply(ds, us, ss, (int)n, (int)r, bs, (int)k, outs);
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int KronQuadratic(nint handle, float* aFactor, long a, float* gFactor, long g,
                                    double positions, double priorPrecision, float* xs, long count, float* output)
    {
        try
        {
            NotNull(aFactor, "a_factor"); NotNull(gFactor, "g_factor"); NotNull(xs, "xs"); NotNull(output, "out");
            Positive(a, "a"); Positive(g, "g"); NonNegative(count, "count");
            if (!(positions >= 0) || double.IsInfinity(positions))
                throw FisherKernelsException.Argument($"positions must be finite and non-negative, got {positions}");
            if (!(priorPrecision >= 0) || double.IsInfinity(priorPrecision))
                throw FisherKernelsException.Argument($"prior_precision must be finite and non-negative, got {priorPrecision}");
            var aSpan = In(aFactor, "a_factor", a, a);
            var gSpan = In(gFactor, "g_factor", g, g);
            var xSpan = In(xs, "xs", count, g, a);
            var outSpan = Out(output, "out", count);
            using var engine = Handles.Use<Engine>(handle, "fk_engine");
            var backend = engine.Value.Backend;
            var basis = KronEigenbasis.Create(backend, aSpan, (int)a, gSpan, (int)g, positions, priorPrecision);
            backend.KronQuadratic(basis, xSpan, (int)count, outSpan);
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int ModelLoad(nint engineHandle, byte* onnxPath, nint* handle)
    {
        try
        {
            NotNull(handle, "out");
            *handle = 0;
            NotNull(onnxPath, "onnx_path");
            using var engine = Handles.Use<Engine>(engineHandle, "fk_engine");
            var lm = LanguageModel.Load(Utf8(onnxPath));
            lm.Model.CheckSupported();
            *handle = Handles.Add(new Model(engineHandle, lm, new OpContext(engine.Value.Backend)));
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static void ModelDestroy(nint handle)
    {
        try
        {
            if (handle != 0) Handles.Remove<Model>(handle, "fk_model");
        }
        catch (Exception e) { Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int ModelScore(nint handle, long* tokens, long batch, long seq, byte* curvaturePath, double priorPrecision,
                                 float* p, float* aleatoric, float* epistemic)
    {
        try
        {
            NotNull(tokens, "tokens"); NotNull(p, "p"); NotNull(aleatoric, "aleatoric"); NotNull(epistemic, "epistemic");
            var ids = Tokens(tokens, batch, seq);
            if (!(priorPrecision > 0) || double.IsInfinity(priorPrecision))
                throw FisherKernelsException.Argument($"prior_precision must be finite and positive, got {priorPrecision}");
            var pOut = Out(p, "p", batch, seq);
            var aleatoricOut = Out(aleatoric, "aleatoric", batch, seq);
            var epistemicOut = Out(epistemic, "epistemic", batch, seq);
            using var model = Handles.Use<Model>(handle, "fk_model");
            using var engine = model.Value.UseEngine();
            // SPEC §4: isotropic without a curvature file, else the K-FAC Laplace posterior (default options, as the CLI),
            // decomposed once per curvature file and options and reused by later calls.
            var report = model.Value.Scores.Score(ids, null, new ScoreOptions
            {
                Method = curvaturePath == null ? ScoreMethod.Isotropic : ScoreMethod.Kfac,
                CurvaturePath = curvaturePath == null ? null : Utf8(curvaturePath),
                Posterior = new PosteriorOptions { PriorPrecision = priorPrecision },
                LastLayerVariance = false,
            });
            pOut.Fill(float.NaN); aleatoricOut.Fill(float.NaN); epistemicOut.Fill(float.NaN);
            foreach (var sequence in report.Sequences)
                foreach (var token in sequence.Tokens)
                {
                    long at = sequence.Index * seq + token.Position;
                    pOut[(int)at] = (float)token.P;
                    aleatoricOut[(int)at] = (float)token.Aleatoric;
                    epistemicOut[(int)at] = (float)token.Epistemic;
                }
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    [UnmanagedCallersOnly]
    public static int ModelJvp(nint handle, long* tokens, long batch, long seq, byte* directionPath, float* output, long outLength)
    {
        try
        {
            NotNull(tokens, "tokens"); NotNull(directionPath, "direction_path"); NotNull(output, "out");
            var ids = Tokens(tokens, batch, seq);
            NonNegative(outLength, "out_len");
            var outSpan = Out(output, "out", outLength);
            using var model = Handles.Use<Model>(handle, "fk_model");
            using var engine = model.Value.UseEngine();
            var jvp = JvpService.Jvp(model.Value.LanguageModel, model.Value.Context, ids, Utf8(directionPath));
            if (jvp.Data.Length > outSpan.Length)
                throw new FisherKernelsException(ErrorKind.BufferTooSmall,
                    $"out holds {outSpan.Length} floats; J·V needs {jvp.Data.Length} ([batch × seq × vocab] = [{string.Join(" × ", jvp.Shape)}])");
            jvp.Data.CopyTo(outSpan);
            return Ok;
        }
        catch (Exception e) { return Fail(e); }
    }

    /// <summary>A copy of the caller's [batch × seq] token ids.</summary>
    private static NdArray<long> Tokens(long* tokens, long batch, long seq)
    {
        Positive(batch, "batch"); Positive(seq, "seq");
        int length = SpanLength("tokens", batch, seq, 1);
        return new NdArray<long>([(int)batch, (int)seq], new ReadOnlySpan<long>(tokens, length).ToArray());
    }

    private static string Utf8(byte* text) => Marshal.PtrToStringUTF8((nint)text)!;

    private static void NotNull(void* pointer, string name)
    {
        if (pointer == null) throw FisherKernelsException.Argument($"{name} is NULL");
    }

    private static void NonNegative(long value, string name)
    {
        if (value < 0) throw FisherKernelsException.Argument($"{name} must be non-negative, got {value}");
    }

    private static void Positive(long value, string name)
    {
        if (value <= 0) throw FisherKernelsException.Argument($"{name} must be positive, got {value}");
    }

    private static ReadOnlySpan<float> In(float* pointer, string name, long d0, long d1 = 1, long d2 = 1) =>
        new(pointer, SpanLength(name, d0, d1, d2));

    private static Span<float> Out(float* pointer, string name, long d0, long d1 = 1, long d2 = 1) =>
        new(pointer, SpanLength(name, d0, d1, d2));

    /// <summary>The element count of a [d0 × d1 × d2] array (non-negative dimensions). The kernels take int
    /// sizes: one call handles at most int.MaxValue elements per array.</summary>
    private static int SpanLength(string name, long d0, long d1, long d2)
    {
        var length = (Int128)d0 * d1 * d2;
        return length <= int.MaxValue
            ? (int)length
            : throw FisherKernelsException.Argument($"{name} has {length} elements; one call takes at most {int.MaxValue}");
    }

    /// <summary>Maps an exception to its fk_status and hands its message to the shim.</summary>
    private static int Fail(Exception e)
    {
        var (status, message) = e switch
        {
            FisherKernelsException f => ((int)f.Kind, f.Message),
            OutOfMemoryException => ((int)ErrorKind.OutOfMemory, "out of memory: " + e.Message),
            ArgumentException => ((int)ErrorKind.InvalidArgument, e.Message),
            FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException
                => ((int)ErrorKind.Io, e.Message),
            NotImplementedException => ((int)ErrorKind.Unsupported,
                $"{e.TargetSite?.DeclaringType?.Name}.{e.TargetSite?.Name} is not implemented yet in this build"),
            NotSupportedException => ((int)ErrorKind.Unsupported, e.Message),
            _ => ((int)ErrorKind.Internal, $"internal error ({e.GetType().Name}): {e.Message}"),
        };
        SetLastError(message);
        return status;
    }

    private static void SetLastError(string message)
    {
        if (setError == null) return;
        var utf8 = Marshal.StringToCoTaskMemUTF8(message);
        try { setError((byte*)utf8); }
        finally { Marshal.FreeCoTaskMem(utf8); }
    }
}

/// <summary>One fk_engine: a backend whose calls are serialized (device backends keep per-stream state).</summary>
internal sealed class Engine(IComputeBackend backend) : IDisposable
{
    public IComputeBackend Backend { get; } = backend;

    public void Dispose() => Backend.Dispose();
}

/// <summary>
/// One fk_model: an ONNX model bound to the engine it was loaded on. Its calls hold the engine too (they run on
/// its backend), so destroying the engine first makes them fail cleanly instead of using a disposed backend.
/// </summary>
internal sealed class Model(nint engineHandle, LanguageModel languageModel, OpContext context)
{
    public LanguageModel LanguageModel { get; } = languageModel;

    /// <summary>Scratch buffers reused across calls (calls on one model are serialized).</summary>
    public OpContext Context { get; } = context;

    /// <summary>Its scores; the K-FAC posterior of the last curvature file fk_model_score used is reused while the file and options stay the same.</summary>
    public ScoreService Scores { get; } = new(languageModel, context);

    public Handles.Lease<Engine> UseEngine() => Handles.Use<Engine>(engineHandle, "fk_engine (the one this model was loaded on)");
}

/// <summary>
/// The live handles: opaque non-zero ids, never raw pointers, so a stale, foreign or wrongly typed handle is an
/// error instead of a crash. <see cref="Use{T}"/> holds the object's lock for the duration of one call and
/// <see cref="Remove{T}"/> takes the same lock, so destroying a handle waits for calls in flight on it.
/// </summary>
internal static class Handles
{
    private static readonly Dictionary<nint, object> Live = new();
    private static long next;

    public static nint Add(object value)
    {
        lock (Live)
        {
            // Ids step by 16 so that they look like (and are never confused with) small integers.
            var id = (nint)(Interlocked.Increment(ref next) * 16);
            Live.Add(id, value);
            return id;
        }
    }

    public static Lease<T> Use<T>(nint handle, string kind) where T : class
    {
        var value = Find<T>(handle, kind, remove: false);
        Monitor.Enter(value);
        if (!IsLive(handle, value))
        {
            Monitor.Exit(value);
            throw FisherKernelsException.Argument($"{kind} handle 0x{handle:x} was destroyed");
        }
        return new Lease<T>(value);
    }

    public static T Remove<T>(nint handle, string kind) where T : class
    {
        var value = Find<T>(handle, kind, remove: true);
        // Wait for any call still running on it before the caller disposes it.
        lock (value) return value;
    }

    private static bool IsLive(nint handle, object value)
    {
        lock (Live) return Live.TryGetValue(handle, out var current) && ReferenceEquals(current, value);
    }

    private static T Find<T>(nint handle, string kind, bool remove) where T : class
    {
        if (handle == 0) throw FisherKernelsException.Argument($"the {kind} handle is NULL");
        lock (Live)
        {
            if (!Live.TryGetValue(handle, out var value) || value is not T typed)
                throw FisherKernelsException.Argument($"0x{handle:x} is not a live {kind} handle");
            if (remove) Live.Remove(handle);
            return typed;
        }
    }

    public readonly struct Lease<T>(T value) : IDisposable where T : class
    {
        public T Value { get; } = value;

        public void Dispose() => Monitor.Exit(Value);
    }
}

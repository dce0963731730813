using System.Globalization;
using System.Text.Json;
using FisherKernels.Backends.Cpu;
using FisherKernels.IO;
using FisherKernels.Onnx;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Cli.Commands;

/// <summary>The model verbs of SPEC §6 that need only the forward executor: inspect, forward, run.</summary>
internal static class ModelCommands
{
    /// <summary>
    /// `inspect --model M [--json] [--memory-budget SIZE] [--rank r] [--batch-size N] [--seq S] [layer selection]`: inputs,
    /// outputs, layers with in/out/bias/parameters, totals, the nodes whose operator is unsupported; with --json also the memory plan of a fit with those options (SPEC §3).
    /// </summary>
    public static int Inspect(string[] args, TextWriter stdout)
    {
        var options = CommandOptions.Parse("inspect", args.AsSpan(1),
            ["--model", "--backend", "--threads", "--memory-budget", "--rank", "--batch-size", "--seq", "--layers", "--exclude-layers"], ["--json", "--last-layer"]);
        // The layers the other verbs use: a merged decoder's through its else-branch (SPEC §1).
        var model = LanguageModel.WithoutCacheBranch(OnnxModel.Open(options.Required("--model")));
        var graph = model.Graph;
        var layers = model.Layers;
        long layerParameters = layers.Sum(l => l.Parameters);
        long allParameters = graph.Initializers.Where(kv => !graph.ConstantNodeValues.Contains(kv.Key) && kv.Value.ElementType == ElementType.Float32).Sum(kv => kv.Value.Length);
        if (options.Has("--json"))
        {
            using var stream = new MemoryStream();
            using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
            {
                json.WriteStartObject();
                json.WriteString("model", Path.GetFileName(graph.Source));
                json.WriteNumber("opset", graph.DefaultOpset);
                json.WriteStartArray("inputs");
                foreach (var i in graph.Inputs) json.WriteStringValue(i.Describe());
                json.WriteEndArray();
                json.WriteStartArray("outputs");
                foreach (var o in graph.Outputs) json.WriteStringValue(o.Describe());
                json.WriteEndArray();
                json.WriteStartArray("layers");
                foreach (var l in layers)
                {
                    json.WriteStartObject();
                    json.WriteString("id", l.Id);
                    json.WriteString("op", l.Op);
                    json.WriteString("node", l.Applications[0].Node.Name);
                    json.WriteNumber("in", l.In);
                    json.WriteNumber("out", l.Out);
                    if (l.Bias is null) json.WriteNull("bias"); else json.WriteString("bias", l.Bias);
                    json.WriteString("storage", l.StoredOutIn ? "out_in" : "in_out");
                    json.WriteNumber("parameters", l.Parameters);
                    var memory = Curvature.KfacAccumulator.EstimateMemory(new Curvature.LayerShape(l.Id, l.In, l.Out, l.Bias is not null));
                    json.WriteNumber("kfac_factor_bytes", memory.FactorBytes);
                    json.WriteNumber("kfac_eigenbasis_bytes", memory.EigenbasisBytes);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                json.WriteNumber("layer_parameters", layerParameters);
                json.WriteNumber("total_parameters", allParameters);
                json.WriteStartArray("unsupported");
                foreach (var (node, error) in model.Unsupported)
                {
                    json.WriteStartObject();
                    json.WriteString("node", node.Name);
                    json.WriteString("op", node.OpType);
                    json.WriteString("domain", node.Domain.Length == 0 ? "ai.onnx" : node.Domain);
                    json.WriteString("error", error.Message);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                // The plan needs every operator's shape rule: a model with unsupported ones has none.
                if (model.Unsupported.Count == 0) PlanOf(new LanguageModel(model), options).WriteJson(json);
                json.WriteEndObject();
            }
            stdout.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
            return 0;
        }
        stdout.WriteLine($"model   {graph.Source} (opset {graph.DefaultOpset}, {graph.Nodes.Count} nodes)");
        foreach (var i in graph.Inputs) stdout.WriteLine($"input   {i.Describe()}");
        foreach (var o in graph.Outputs) stdout.WriteLine($"output  {o.Describe()}");
        stdout.WriteLine();
        int width = Math.Max(8, layers.Select(l => l.Id.Length).DefaultIfEmpty(0).Max());
        stdout.WriteLine($"{"layer".PadRight(width)}  {"op",-6} {"in",7} {"out",7}  {"bias",-5} {"params",12}");
        foreach (var l in layers)
            stdout.WriteLine($"{l.Id.PadRight(width)}  {l.Op,-6} {l.In,7} {l.Out,7}  {(l.Bias is null ? "no" : "yes"),-5} {l.Parameters,12:N0}");
        stdout.WriteLine();
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{layers.Count} layers, {layerParameters:N0} layer parameters; {allParameters:N0} float parameters in all"));
        if (model.Unsupported.Count > 0)
        {
            stdout.WriteLine();
            foreach (var (_, error) in model.Unsupported) stdout.WriteLine($"unsupported  {error.Message}");
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{model.Unsupported.Count} unsupported node(s): the other verbs refuse this model"));
        }
        return 0;
    }

    /// <summary>The layer selection options of SPEC §2 (fit, score, calibrate, inspect).</summary>
    internal static LayerSelection Selection(CommandOptions options) =>
        new(options.Optional("--layers"), options.Optional("--exclude-layers"), options.Has("--last-layer"));


    /// <summary>
    /// The memory plan of a fit with the command's options (--memory-budget, --rank, --batch-size, --seq, the selection). Without
    /// --seq: 128 tokens, or the longest power of two below it that the model takes (a model with fewer positions).
    /// </summary>
    internal static MemoryPlan PlanOf(LanguageModel lm, CommandOptions options)
    {
        var layers = Onnx.Jobs.FitService.Select(lm, Selection(options));
        int batch = options.Int("--batch-size", 8, 1);
        long budget = options.Bytes("--memory-budget", Curvature.FactorPlan.DefaultBudgetBytes, 1);
        int rank = options.Int("--rank", Curvature.FactorPlan.DefaultRank, 1);
        if (options.Optional("--seq") is not null) return MemoryPlan.ForFit(lm, layers, batch, options.Int("--seq", 128, 1), budget, rank);
        for (int seq = 128; ; seq /= 2)
        {
            try { return MemoryPlan.ForFit(lm, layers, batch, seq, budget, rank); }
            catch (FisherKernelsException e) when (seq > 1 && e.Message.StartsWith("node ", StringComparison.Ordinal)) { }
        }
    }

    /// <summary>
    /// `forward --model M --tokens T.npy --out logits.npy`, or `--text F` (SPEC §1): one file per sequence when there are
    /// several (the sequence index before the extension), each [1, seq, vocab]; a sequence longer than the context runs in
    /// windows, each position's logits from the window that gives it the most left context.
    /// </summary>
    public static int Forward(string[] args)
    {
        var options = CommandOptions.Parse("forward", args.AsSpan(1), ["--model", "--tokens", "--out", "--backend", "--threads", .. TextArguments.ValueOptions], TextArguments.FlagOptions);
        string outPath = options.Required("--out");
        var folder = TextArguments.Model(options);
        var lm = LanguageModel.Load(folder.ModelPath);
        var text = TextArguments.Read("forward", options, folder, lm);
        var context = Context(options, onDevice: true);
        if (text is null)
        {
            string tokensPath = options.Required("--tokens");
            var tokens = NpyFile.Read(tokensPath);
            NpyFile.Write(outPath, lm.Forward(context, tokens, null, tokensPath));
            return 0;
        }
        text.WritePerSequence(outPath, i => WindowedLogits(text, i, tokens => lm.Forward(context, tokens, null, $"--text {text.Source} (sequence {i})")));
        return 0;
    }

    /// <summary>
    /// An array [1, n, vocab] over text sequence <paramref name="index"/> from <paramref name="run"/> of each of its windows
    /// (SPEC §1 long sequences): each position's row from the window that gives it the most left context.
    /// </summary>
    internal static NdArray<float> WindowedLogits(TextArguments text, int index, Func<NdArray<long>, NdArray<float>> run)
    {
        NdArray<float>? result = null;
        foreach (var window in text.Windows(index))
        {
            var logits = run(text.Tokens(index, window));
            int vocab = logits.Shape[2];
            result ??= new NdArray<float>(1, text.Sequences[index].Count, vocab);
            logits.Data.AsSpan((window.ScoredFrom - window.Start) * vocab, (window.ScoredTo - window.ScoredFrom) * vocab)
                .CopyTo(result.Data.AsSpan(window.ScoredFrom * vocab));
        }
        return result!;
    }

    /// <summary>
    /// `run --model M --input NAME=FILE.npy ... --out-dir DIR`: each graph output as DIR/&lt;name&gt;.npy in its element type.
    /// A sequence input is given as its elements, NAME[0]=FILE.npy, NAME[1]=…; a sequence output is written as its elements, DIR/NAME[i].npy.
    /// </summary>
    public static int Run(string[] args)
    {
        var options = CommandOptions.Parse("run", args.AsSpan(1), ["--model", "--input", "--out-dir", "--backend", "--threads"], []);
        string outDir = options.Required("--out-dir");
        var model = OnnxModel.Load(options.Required("--model"));
        var graph = model.Graph;
        var inputs = new Dictionary<string, NdArray>();
        foreach (string spec in options.All("--input"))
        {
            int eq = spec.IndexOf('=');
            if (eq <= 0 || eq == spec.Length - 1) throw FisherKernelsException.Argument($"run: --input '{spec}' must be NAME=FILE.npy");
            string name = spec[..eq], file = spec[(eq + 1)..];
            var declared = graph.Inputs.FirstOrDefault(i => !i.IsSequence && i.Name == name)
                ?? graph.Inputs.FirstOrDefault(i => i.IsSequence && IsElementOf(name, i.Name))
                ?? throw FisherKernelsException.Argument($"run: the model has no input '{name}' (inputs: {string.Join(", ", graph.Inputs.Select(i => i.IsSequence ? i.Name + "[i]" : i.Name))})");
            if (inputs.ContainsKey(name)) throw FisherKernelsException.Argument($"run: input '{name}' is given twice");
            inputs[name] = InputArray(NpyFile.Read(file), declared, file);
        }
        foreach (var i in graph.Inputs)
            if (!i.IsSequence && !i.IsOptional && !inputs.ContainsKey(i.Name)) throw FisherKernelsException.Argument($"run: input '{i.Name}' is required (--input {i.Name}=FILE.npy)");

        var plan = model.GetPlan(inputs);
        plan.Run(Context(options), inputs);
        // An optional output that holds nothing has no file.
        var names = graph.Outputs.Where(o => !plan.HoldsNothing(o.Name)).SelectMany(o => plan.SequenceLength(o.Name) is int count
            ? Enumerable.Range(0, count).Select(i => ValueInfo.ElementName(o.Name, i)) : [o.Name]);
        var files = names.Select(name => (Path: Path.Combine(outDir, SafeFileName(name) + ".npy"), Value: plan.Get(name))).ToList();
        Directory.CreateDirectory(outDir);
        var written = new List<string>();
        try
        {
            foreach (var (path, value) in files)
            {
                NpyFile.Write(path, value);
                written.Add(path);
            }
        }
        catch
        {
            foreach (var path in written) File.Delete(path);
            throw;
        }
        return 0;
    }

    /// <summary>
    /// The context of a model verb: the cpu backend (the default), or with <paramref name="onDevice"/> (forward, fit, score, jvp) a device
    /// backend, on which the verb's plans run device-resident (docs/device-plans.md).
    /// </summary>
    public static OpContext Context(CommandOptions options, bool onDevice = false)
    {
        string backend = options.Optional("--backend") ?? "cpu";
        int threads = options.Int("--threads", 0, 1);
        if (backend == "cpu") return new OpContext(new CpuBackend(threads));
        if (!onDevice)
            throw FisherKernelsException.Unsupported($"--backend {backend}: {options.Verb} runs on the cpu backend only (its plans have no device form yet; forward, fit, score and jvp also run on cuda, opencl and ilgpu-cpu)");
        // Every backend but cpu is a device (ITensorDevice); "best" may also give cpu.
        return new OpContext(Backends.BackendRegistry.Create(backend, threads));
    }

    /// <summary>An npy array for a declared graph input: integer widths and float precisions convert; anything else is an error naming the file.</summary>
    private static NdArray InputArray(NdArray value, Onnx.Graph.ValueInfo declared, string file)
    {
        var type = declared.ElementType ?? value.ElementType;
        NdArray result = (value, type) switch
        {
            (_, _) when value.ElementType == type => value,
            (NdArray<int> v, ElementType.Int64) => new NdArray<long>(v.Shape, Array.ConvertAll(v.Data, x => (long)x)),
            (NdArray<long> v, ElementType.Int32) when v.Data.All(x => x is >= int.MinValue and <= int.MaxValue) => new NdArray<int>(v.Shape, Array.ConvertAll(v.Data, x => (int)x)),
            (NdArray<double> v, ElementType.Float32) => new NdArray<float>(v.Shape, Array.ConvertAll(v.Data, x => (float)x)),
            (NdArray<Half> v, ElementType.Float32) => new NdArray<float>(v.Shape, Array.ConvertAll(v.Data, x => (float)x)),
            _ => throw FisherKernelsException.Argument($"run: '{file}' holds {value.ElementType}, input '{declared.Name}' is {type}"),
        };
        if (declared.Shape is { } shape)
        {
            if (shape.Length != value.Rank)
                throw FisherKernelsException.Argument($"run: '{file}' has shape [{ShapeUtil.Format(value.Shape)}], input {declared.Describe()} has rank {shape.Length}");
            for (int d = 0; d < shape.Length; d++)
                if (shape[d] is int fixedDim && fixedDim != value.Shape[d])
                    throw FisherKernelsException.Argument($"run: '{file}' has shape [{ShapeUtil.Format(value.Shape)}], input {declared.Describe()} needs {fixedDim} in dimension {d}");
        }
        return result;
    }

    /// <summary>Whether <paramref name="name"/> is <c>sequence[i]</c> for an index i.</summary>
    private static bool IsElementOf(string name, string sequence) =>
        name.Length > sequence.Length + 2 && name.StartsWith(sequence + "[", StringComparison.Ordinal) && name[^1] == ']'
        && int.TryParse(name[(sequence.Length + 1)..^1], NumberStyles.None, CultureInfo.InvariantCulture, out int i) && name == ValueInfo.ElementName(sequence, i);

    private static string SafeFileName(string name)
    {
        var chars = name.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (chars[i] is '/' or '\\' or ':' or '\0' || char.IsControl(chars[i])) chars[i] = '_';
        string safe = new(chars);
        return safe is "" or "." or ".." ? "output" : safe;
    }
}

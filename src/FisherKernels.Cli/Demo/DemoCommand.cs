using System.Diagnostics;

namespace FisherKernels.Cli.Demo;

/// <summary>
/// `fisherkernels demo`: the main job on the embedded default model. Fits K-FAC curvature on part
/// of the training corpus, scores held-out English and out-of-distribution text with the
/// isotropic and K-FAC estimators, and prints and plots how well the uncertainty tells them
/// apart and predicts next-token errors.
/// </summary>
internal static class DemoCommand
{
    public const int HeldOutWindows = 64;
    public const int WindowsPerOodSet = 32;

    public static int Run(string[] args)
    {
        var options = DemoOptions.Parse(args);
        var clock = Stopwatch.StartNew();
        var model = DefaultModel.Load(options.ModelFolder);
        var sets = DemoTexts.Load(model, HeldOutWindows, WindowsPerOodSet);
        var fit = model.Windows(model.ReadText("fit.txt"));
        Console.WriteLine($"default model: {model.ModelPath} (bytes as tokens, context {model.Context})");
        Console.WriteLine($"fit text: {fit.Shape[0]} windows; scored: " +
                          string.Join(", ", sets.Select(s => $"{s.Name} {s.Count}")) + " windows");
        throw FisherKernelsException.Unsupported(
            "demo: running the model needs the ONNX executor with backward passes (graph issue) and K-FAC " +
            "fitting and scoring (K-FAC issue), which are not in this build yet");
    }
}

/// <summary>The demo's options: where the default model lives and where the plots go.</summary>
internal sealed record DemoOptions(string? ModelFolder, string OutputFolder)
{
    public static DemoOptions Parse(string[] args)
    {
        string? modelFolder = null;
        string outputFolder = "demo-output";
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--model-dir": modelFolder = Value(args, ref i); break;
                case "--out-dir": outputFolder = Value(args, ref i); break;
                case "--verbose": break;
                default: throw FisherKernelsException.Argument($"demo: unknown option '{args[i]}' (options: --model-dir DIR, --out-dir DIR)");
            }
        }
        return new DemoOptions(modelFolder, outputFolder);
    }

    static string Value(string[] args, ref int i)
    {
        if (i + 1 >= args.Length) throw FisherKernelsException.Argument($"demo: option '{args[i]}' needs a value");
        return args[++i];
    }
}

using System.Globalization;

namespace FisherKernels.Cli;

/// <summary>Dispatches `fisherkernels VERB ...` (SPEC §6) and turns every failure into one line on stderr.</summary>
internal static class CommandLine
{
    public static int Run(string[] args)
    {
        bool verbose = Array.IndexOf(args, "--verbose") >= 0;
        // Globalization is on for the tokenizers' Unicode normalization only: numbers and text format alike on every machine.
        CultureInfo.DefaultThreadCurrentCulture = CultureInfo.DefaultThreadCurrentUICulture = CultureInfo.InvariantCulture;
        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = CultureInfo.InvariantCulture;
        try
        {
            if (args.Length == 0 || args[0] is "-h" or "--help")
            {
                Console.Out.WriteLine(Usage);
                return args.Length == 0 ? 2 : 0;
            }
            return args[0] switch
            {
                "bench" => Bench.BenchCommand.Run(args, Console.Out),
                "inspect" => Commands.ModelCommands.Inspect(args, Console.Out),
                "forward" => Commands.ModelCommands.Forward(args),
                "run" => Commands.ModelCommands.Run(args),
                "fit" => Commands.KfacCommands.Fit(args, Console.Out),
                "merge" => Commands.KfacCommands.Merge(args, Console.Out),
                "silo" => Commands.ClusterCommands.Silo(args, Console.Out),
                "calibrate" => Commands.KfacCommands.Calibrate(args, Console.Out),
                "demo" => Demo.DemoCommand.Run(args, Console.Out),
                "generate" => Commands.GenerateCommand.Run(args, Console.Out),
                "jvp" => Commands.DerivativeCommands.Jvp(args),
                "natgrad" => Commands.DerivativeCommands.Natgrad(args, Console.Out),
                "ewc" => Commands.DerivativeCommands.Ewc(args, Console.Out),
                "apply" => Commands.DerivativeCommands.Apply(args, Console.Out),
                "merge-models" => Commands.DerivativeCommands.MergeModels(args, Console.Out),
                "score" => Commands.DerivativeCommands.Score(args),
                _ => throw FisherKernelsException.Argument($"unknown command '{args[0]}'\n{Usage}"),
            };
        }
        catch (Exception e) when (!verbose)
        {
            Console.Error.WriteLine($"fisherkernels: {e.Message}");
            return e is FisherKernelsException { Kind: ErrorKind.InvalidArgument } ? 2 : 1;
        }
    }

    private const string Usage = """
        usage: fisherkernels <command> [options]
          inspect  --model M.onnx [--json]
          forward  --model M.onnx --tokens T.npy --out logits.npy
          fit      --model M.onnx --tokens T.npy [--targets Y.npy] [--fisher sampled|empirical|exact] [--ekfac] [--init C0 [--decay λ]] ... --out C.safetensors
                   [--cluster NAME [--clustering localhost|redis=…|adonet=INVARIANT:CONNECTION] [--shards N]]
          score    --model M.onnx --tokens T.npy [--method isotropic|kfac] [--curvature C.safetensors] ... --out S.json|S.csv
          jvp      --model M.onnx --tokens T.npy --direction V.safetensors --out J.npy
          natgrad  --model M.onnx --tokens T.npy [--targets Y.npy] --curvature C.safetensors [--prior-precision τ] --out D.safetensors
          apply    --model M.onnx --direction D.safetensors --step η --out M2.onnx
          merge-models --model A.onnx --curvature CA --model B.onnx --curvature CB [...] [--form kfac|diag] [--weights w1,w2,...] [--epsilon ε] --out M.onnx
          ewc      --model BASE.onnx --candidate TUNED.onnx --curvature C.safetensors [--json]
          silo     --cluster NAME [--clustering localhost|redis=…|adonet=INVARIANT:CONNECTION] [--threads N]
          merge    C1.safetensors C2.safetensors ... [--decay λ1,λ2,...] --out C.safetensors
          calibrate --model M.onnx --tokens T.npy --curvature C.safetensors [--prior-precision τ|auto|auto-layer] [--out C2.safetensors]
          run      --model M.onnx --input NAME=FILE.npy [...] --out-dir DIR
          generate --model DIR --prompt TEXT | --prompt-file F [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
                   [--curvature C [--posterior-samples K]] [--abstain U] [--out G.json] [--html G.html]
          bench    [--backend cpu|cuda|opencl|ilgpu-cpu|all] [--model M.onnx --tokens T.npy] [--json]
          demo     [--model-dir DIR] [--out-dir DIR]
        common: --backend NAME, --threads N, --verbose
        """;
}

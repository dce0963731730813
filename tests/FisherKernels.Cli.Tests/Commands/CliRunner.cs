using FisherKernels.Cli;

namespace FisherKernels.Tests.Commands;

/// <summary>Runs the CLI in-process with stdout and stderr captured (console redirection is process-wide, hence one collection).</summary>
internal static class CliRunner
{
    private static readonly object Gate = new();

    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        lock (Gate)
        {
            var (oldOut, oldErr) = (Console.Out, Console.Error);
            var (stdout, stderr) = (new StringWriter(), new StringWriter());
            Console.SetOut(stdout);
            Console.SetError(stderr);
            try { return (CommandLine.Run(args), stdout.ToString(), stderr.ToString()); }
            finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
        }
    }
}

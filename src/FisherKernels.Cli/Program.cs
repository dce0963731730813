namespace FisherKernels.Cli;

internal static class Program
{
    private static int Main(string[] args) => CommandLine.Run(args);
}

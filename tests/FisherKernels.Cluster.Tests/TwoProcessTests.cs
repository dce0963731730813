using System.Diagnostics;

namespace FisherKernels.Tests;

/// <summary>SPEC §9 across processes: tests/scripts/cluster_two_silos.sh (two `silo` processes, a `fit --cluster`, the result against a local fit).</summary>
public sealed class TwoProcessTests
{
    [Fact]
    public async Task TwoSiloProcessesFitAsOneMachineDoes()
    {
        string root = Path.GetDirectoryName(Path.GetDirectoryName(Fixtures.Folder))!;
        // This test's build configuration (bin/<Configuration>/net10.0/), so the script runs the CLI built with it.
        string configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
        string cli = Path.Combine(root, "src", "FisherKernels.Cli", "bin", configuration, "net10.0", "fisherkernels.dll");
        var start = new ProcessStartInfo("bash", [Path.Combine(root, "tests", "scripts", "cluster_two_silos.sh"), cli])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using Process script = Process.Start(start)!;
        Task<string> stdout = script.StandardOutput.ReadToEndAsync(), stderr = script.StandardError.ReadToEndAsync();
        using var bound = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        try { await script.WaitForExitAsync(bound.Token); }
        catch (OperationCanceledException)
        {
            script.Kill(entireProcessTree: true); // this script's own tree, by its id
            Assert.Fail($"cluster_two_silos.sh ran over 4 minutes:\n{await stdout}\n{await stderr}");
        }
        string output = await stdout, errors = await stderr;
        Assert.True(script.ExitCode == 0, $"cluster_two_silos.sh exited {script.ExitCode}:\n{output}\n{errors}");
        Assert.Contains("two-silo cluster fit equals the local fit", output);
    }
}

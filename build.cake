// FisherKernels build script. Entry points (README): `dotnet tool restore && dotnet cake --target=Demo`
// and `dotnet tool restore && dotnet cake --target=Test`. Everything beyond the .NET SDK is installed here.
var target = Argument("target", "Build");
var configuration = Argument("configuration", "Release");
var solution = "./FisherKernels.sln";
var cli = "./src/FisherKernels.Cli/FisherKernels.Cli.csproj";

bool HasCommand(string name) =>
    StartProcess("sh", new ProcessSettings { Arguments = $"-c \"command -v {name} >/dev/null 2>&1\"" }) == 0;

bool HasLibrary(string soname) =>
    StartProcess("sh", new ProcessSettings { Arguments = $"-c \"ldconfig -p | grep -q '{soname}'\"" }) == 0;

bool IsRoot() => Environment.UserName == "root";

void AptInstall(params string[] packages)
{
    if (!IsRoot() || !HasCommand("apt-get"))
    {
        Warning($"cannot install {string.Join(" ", packages)} (needs root and apt-get); continuing without them");
        return;
    }
    Information($"installing {string.Join(" ", packages)} from apt");
    var env = new Dictionary<string, string> { ["DEBIAN_FRONTEND"] = "noninteractive" };
    StartProcess("apt-get", new ProcessSettings { Arguments = "update -qq", EnvironmentVariables = env });
    var rc = StartProcess("apt-get", new ProcessSettings { Arguments = "install -y -qq --no-install-recommends " + string.Join(" ", packages), EnvironmentVariables = env });
    if (rc != 0) Warning($"apt-get install {string.Join(" ", packages)} failed with {rc}; continuing without them");
}

// Native dependencies: OpenBLAS/LAPACK (the CPU backend falls back to managed code without it),
// and the C toolchain the C ABI tests use.
Task("Deps").Does(() =>
{
    var missing = new List<string>();
    if (!HasLibrary("libopenblas.so.0")) missing.Add("libopenblas0-pthread");
    if (!HasCommand("cmake")) missing.Add("cmake");
    if (!HasCommand("cc")) missing.Add("gcc");
    if (missing.Count > 0) AptInstall(missing.ToArray());
});

Task("Build").IsDependentOn("Deps").Does(() =>
{
    DotNetBuild(solution, new DotNetBuildSettings { Configuration = configuration });
});

Task("Test").IsDependentOn("Build").Does(() =>
{
    DotNetTest(solution, new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        Loggers = new[] { "console;verbosity=normal" },
    });
});

Task("Bench").IsDependentOn("Build").Does(() =>
{
    DotNetRun(cli, new ProcessArgumentBuilder().Append("bench"), new DotNetRunSettings { Configuration = configuration, NoBuild = true });
});

Task("Demo").IsDependentOn("Build").Does(() =>
{
    DotNetRun(cli, new ProcessArgumentBuilder().Append("demo"), new DotNetRunSettings { Configuration = configuration, NoBuild = true });
});

Task("Native").IsDependentOn("Build").Does(() =>
{
    throw new Exception("the C ABI build is not implemented yet (issue: C ABI)");
});

Task("Pack").IsDependentOn("Build").Does(() =>
{
    DotNetPack(cli, new DotNetPackSettings { Configuration = configuration, NoBuild = true, OutputDirectory = "./artifacts/packages" });
});

RunTarget(target);

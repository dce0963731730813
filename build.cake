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
    if (!HasCommand("c++")) missing.Add("g++"); // libstdc++ for nethost (C ABI shim)
    if (StartProcess("sh", new ProcessSettings { Arguments = "-c \"/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1\"" }) != 0)
        missing.Add("python3-numpy"); // the C ABI's Python ctypes test
    if (!HasLibrary("libicuuc.so")) missing.Add("libicu-dev"); // Unicode normalization of tokenizers (NFC/NFKC, BERT's accents)
    if (!HasCommand("chromium")) missing.Add("chromium"); // the score page's browser tests (headless)
    if (missing.Count > 0) AptInstall(missing.ToArray());
});

Task("Build").IsDependentOn("Deps").Does(() =>
{
    DotNetBuild(solution, new DotNetBuildSettings { Configuration = configuration });
});

Task("Test").IsDependentOn("Native").Does(() =>
{
    Exception? managedFailure = null; // run the C ABI tests even when a managed test fails
    try
    {
        DotNetTest(solution, new DotNetTestSettings
        {
            Configuration = configuration,
            NoBuild = true,
            Loggers = new[] { "console;verbosity=normal" },
        });
    }
    catch (Exception e) { managedFailure = e; }
    // The C ABI: C tests from two threads, the C example, the Python ctypes test (native/CMakeLists.txt).
    var rc = StartProcess("ctest", new ProcessSettings { Arguments = "--test-dir artifacts/native-build --output-on-failure" });
    if (rc != 0) throw new Exception($"ctest (C ABI tests) failed with {rc}");
    if (managedFailure != null) throw managedFailure;
});

Task("Bench").IsDependentOn("Build").Does(() =>
{
    DotNetRun(cli, new ProcessArgumentBuilder().Append("bench"), new DotNetRunSettings { Configuration = configuration, NoBuild = true });
});

Task("Demo").IsDependentOn("Build").Does(() =>
{
    DotNetRun(cli, new ProcessArgumentBuilder().Append("demo"), new DotNetRunSettings { Configuration = configuration, NoBuild = true });
});

// The C ABI into artifacts/native/: libfisherkernels.so (the C shim that hosts .NET), the managed files it
// loads from its own folder, and fisherkernels.h.
Task("Native").IsDependentOn("Build").Does(() =>
{
    var output = MakeAbsolute(Directory("./artifacts/native")).FullPath;
    DotNetPublish("./native/FisherKernels.Native/FisherKernels.Native.csproj", new DotNetPublishSettings
    {
        Configuration = configuration,
        NoBuild = true,
        OutputDirectory = output,
    });
    foreach (var args in new[]
    {
        $"-S native -B artifacts/native-build -DCMAKE_BUILD_TYPE=Release \"-DFK_OUTPUT_DIR={output}\" "
            + $"\"-DFK_CLI={MakeAbsolute(File($"./src/FisherKernels.Cli/bin/{configuration}/net10.0/fisherkernels.dll")).FullPath}\"",
        "--build artifacts/native-build",
    })
    {
        var rc = StartProcess("cmake", new ProcessSettings { Arguments = args });
        if (rc != 0) throw new Exception($"cmake {args} failed with {rc}");
    }
});

Task("Pack").IsDependentOn("Build").Does(() =>
{
    DotNetPack(cli, new DotNetPackSettings { Configuration = configuration, NoBuild = true, OutputDirectory = "./artifacts/packages" });
});

RunTarget(target);

using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

// In process: no generated benchmark project to build (the repository's warnings-as-errors and central
// package settings would reach it), and short runs, since each invocation is tens of milliseconds or more.
var job = Job.Default.WithWarmupCount(2).WithIterationCount(7).WithInvocationCount(1).WithUnrollFactor(1)
                     .WithToolchain(InProcessEmitToolchain.Instance);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, DefaultConfig.Instance.AddJob(job));

using FisherKernels.Backends.Cpu;
using FisherKernels.Cli.Bench;

namespace FisherKernels.Tests;

/// <summary>The inversion bench suites on tiny shapes: SPEC §6 names, a timed baseline, and results that agree with it (checked inside the suites).</summary>
public sealed class InversionBenchesTests
{
    [Theory]
    [InlineData(true)] [InlineData(false)]
    public void Inversion_suites_report_named_figures_beside_their_baselines(bool useNativeBlas)
    {
        using var backend = new CpuBackend(1, useNativeBlas);
        var context = new BenchContext(backend, 1, Quick: true, Model: null, Tokens: null);
        var results = new KronQuadraticBench().Run(context).Concat(new WoodburyBench().Run(context)).ToList();
        Assert.Equal(["kron_quadratic", "woodbury_apply"], results.Select(r => r.Name));
        Assert.Equal("4x16x17", results[0].Shape);
        Assert.Equal("n=96,r=8", results[1].Shape);
        Assert.All(results, r =>
        {
            Assert.Equal("cpu", r.Backend);
            Assert.True(r.MedianMs > 0 && r.BaselineMedianMs > 0 && r.Gflops > 0);
            Assert.False(string.IsNullOrEmpty(r.Baseline));
        });
    }
}

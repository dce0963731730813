using FisherKernels.Backends;

namespace FisherKernels.Tests;

public sealed class BackendRegistryTests
{
    [Theory]
    [InlineData("cpu", "cpu")]
    [InlineData("CPU", "cpu")]
    [InlineData("ilgpu-cpu", "ilgpu-cpu")]
    public void Opens_a_backend_by_name(string requested, string name)
    {
        using var backend = BackendRegistry.Create(requested);
        Assert.Equal(name, backend.Name);
        Assert.False(string.IsNullOrWhiteSpace(backend.Device));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("best")]
    public void Best_is_cuda_when_present_else_cpu_and_never_the_emulator(string? requested)
    {
        using var backend = BackendRegistry.Create(requested);
        Assert.Equal(BackendRegistry.Available().Contains("cuda") ? "cuda" : "cpu", backend.Name);
    }

    [Fact]
    public void Available_lists_the_cpu_backends_in_order_of_preference()
    {
        var available = BackendRegistry.Available();
        Assert.Contains("cpu", available);
        Assert.Contains("ilgpu-cpu", available);
        Assert.Equal(available.OrderBy(name => BackendRegistry.Names.ToList().IndexOf(name)), available);
    }

    [Fact]
    public void An_unknown_name_is_an_error_that_lists_the_choices()
    {
        var error = Assert.Throws<FisherKernelsException>(() => BackendRegistry.Create("tpu"));
        Assert.Equal(ErrorKind.InvalidArgument, error.Kind);
        Assert.Contains("unknown backend 'tpu'", error.Message);
        Assert.Contains("cuda, cpu, opencl, ilgpu-cpu", error.Message);
        Assert.Contains("available here: cpu", error.Message.Replace("cuda, ", ""));
    }

    [Theory]
    [InlineData("cuda")]
    [InlineData("opencl")]
    public void A_device_backend_opens_or_says_why_not(string name)
    {
        if (BackendRegistry.Available().Contains(name))
        {
            using var backend = BackendRegistry.Create(name);
            Assert.Equal(name, backend.Name);
            return;
        }
        var error = Assert.Throws<FisherKernelsException>(() => BackendRegistry.Create(name));
        Assert.Equal(ErrorKind.Backend, error.Kind);
        Assert.Contains($"backend '{name}' is not available", error.Message);
        Assert.Contains("available here: ", error.Message);
    }
}

using System.Text.Json;
using FisherKernels.Cli.Bench;

namespace FisherKernels.Tests.Cli;

public sealed class BenchCommandTests
{
    [Fact]
    public void Json_output_has_the_spec_schema_for_every_kernel_suite()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, BenchCommand.Run(["bench", "--quick", "--json", "--threads", "1"], stdout));
        using var document = JsonDocument.Parse(stdout.ToString());
        var root = document.RootElement;
        Assert.Equal(["machine", "results"], root.EnumerateObject().Select(p => p.Name));
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("machine").GetString()));
        var results = root.GetProperty("results").EnumerateArray().ToList();
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "kfac_accumulate");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "linear_jvp");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "kron_quadratic");
        Assert.Contains(results, r => r.GetProperty("name").GetString() == "woodbury_apply");
        foreach (var r in results)
        {
            Assert.Subset(new HashSet<string> { "name", "backend", "shape", "median_ms", "gflops", "baseline", "baseline_median_ms", "ratio" },
                          r.EnumerateObject().Select(p => p.Name).ToHashSet());
            Assert.Equal("cpu", r.GetProperty("backend").GetString());
            // SPEC §6 writes block shapes as rows x cols and the Woodbury case as "n = 4096, r = 64".
            string expectedShape = r.GetProperty("name").GetString() == "woodbury_apply" ? @"^n=\d+,r=\d+$" : @"^\d+(x\d+)+$";
            Assert.Matches(expectedShape, r.GetProperty("shape").GetString());
            double ms = r.GetProperty("median_ms").GetDouble(), baselineMs = r.GetProperty("baseline_median_ms").GetDouble();
            Assert.True(ms > 0 && baselineMs > 0, r.ToString());
            Assert.Equal(baselineMs / ms, r.GetProperty("ratio").GetDouble(), 0.02 * baselineMs / ms + 1e-3);
            Assert.False(string.IsNullOrEmpty(r.GetProperty("baseline").GetString()));
        }
    }

    [Fact]
    public void Human_table_names_the_machine_and_each_figure()
    {
        var stdout = new StringWriter();
        BenchCommand.Run(["bench", "--quick", "--threads", "1"], stdout);
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("machine: ", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("kfac_accumulate") && (l.Contains("openblas_ssyrk") || l.Contains("managed_syrk")));
        Assert.Contains(lines, l => l.StartsWith("linear_jvp") && l.Contains("two_gemms"));
    }

    [Theory]
    [InlineData("--backend", "tpu", "unknown backend 'tpu'")]
    [InlineData("--threads", "0", "--threads must be")]
    [InlineData("--frobnicate", null, "unknown option '--frobnicate'")]
    [InlineData("--threads", null, "--threads needs a value")]
    public void Bad_options_fail_with_a_message_naming_the_option(string option, string? value, string message)
    {
        string[] args = value is null ? ["bench", option] : ["bench", option, value];
        var error = Assert.Throws<FisherKernelsException>(() => BenchCommand.Run(args, new StringWriter()));
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void Model_suite_times_every_spec_figure_against_its_baseline()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, BenchCommand.Run(["bench", "--quick", "--json", "--threads", "1", "--model", FisherKernels.Tests.Fixtures.Path("gpt2_tiny.onnx"),
                                          "--tokens", FisherKernels.Tests.Fixtures.Path("gpt2_tiny.tokens.npy")], stdout));
        using var document = JsonDocument.Parse(stdout.ToString());
        var results = document.RootElement.GetProperty("results").EnumerateArray()
            .ToDictionary(r => r.GetProperty("name").GetString()!, r => r.GetProperty("baseline").GetString());
        Assert.Equal("onnxruntime", results["forward"]);
        foreach (string name in new[] { "backward", "jvp", "fit", "score" }) Assert.Equal("forward", results[name]);
        Assert.Equal("isotropic_score", results["score_kfac"]);
    }
}

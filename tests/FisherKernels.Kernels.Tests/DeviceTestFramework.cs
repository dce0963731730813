using FisherKernels.Backends.Ilgpu;
using Xunit.Abstractions;
using Xunit.Sdk;

[assembly: TestFramework("FisherKernels.Tests.DeviceTestFramework", "FisherKernels.Kernels.Tests")]

namespace FisherKernels.Tests;

/// <summary>Marks a test class whose every test needs a CUDA device: without one, each is reported skipped, with the reason.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class RequiresCudaAttribute : Attribute
{
    private static readonly Lazy<string?> Reason = new(() =>
    {
        using var cuda = IlgpuBackend.TryCreateCuda();
        return cuda == null ? "no CUDA device (or no NVIDIA driver) on this machine" : null;
    });

    /// <summary>Why the tests cannot run here, or null when a CUDA device is present.</summary>
    public static string? SkipReason => Reason.Value;
}

/// <summary>
/// xunit 2 has no dynamic skip, and the conformance suite's tests are inherited [Fact]/[Theory] methods,
/// so device classes are skipped at discovery: this framework reports each test of a
/// <see cref="RequiresCudaAttribute"/> class as one skipped case when the device is missing.
/// </summary>
public sealed class DeviceTestFramework(IMessageSink messageSink) : XunitTestFramework(messageSink)
{
    protected override ITestFrameworkDiscoverer CreateDiscoverer(IAssemblyInfo assemblyInfo)
        => new Discoverer(assemblyInfo, SourceInformationProvider, DiagnosticMessageSink);

    private sealed class Discoverer(IAssemblyInfo assembly, ISourceInformationProvider sources, IMessageSink diagnostics)
        : XunitTestFrameworkDiscoverer(assembly, sources, diagnostics)
    {
        protected override bool FindTestsForMethod(ITestMethod testMethod, bool includeSourceInformation, IMessageBus messageBus,
                                                   ITestFrameworkDiscoveryOptions discoveryOptions)
        {
            string? reason = testMethod.TestClass.Class.GetCustomAttributes(typeof(RequiresCudaAttribute)).Any()
                ? RequiresCudaAttribute.SkipReason : null;
            if (reason == null || !testMethod.Method.GetCustomAttributes(typeof(FactAttribute)).Any())
                return base.FindTestsForMethod(testMethod, includeSourceInformation, messageBus, discoveryOptions);
            var skipped = new SkippedTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(),
                                              discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod, reason);
            return ReportDiscoveredTestCase(skipped, includeSourceInformation, messageBus);
        }
    }
}

/// <summary>A test case reported as skipped with a reason decided at discovery (serializable across the runner boundary).</summary>
public sealed class SkippedTestCase : XunitTestCase
{
    private string reason = "";

    [Obsolete("Called by the de-serializer only", error: true)]
    public SkippedTestCase() { }

    public SkippedTestCase(IMessageSink sink, TestMethodDisplay display, TestMethodDisplayOptions options, ITestMethod method, string reason)
        : base(sink, display, options, method) => this.reason = reason;

    protected override string GetSkipReason(IAttributeInfo factAttribute) => reason;

    public override void Serialize(IXunitSerializationInfo data)
    {
        base.Serialize(data);
        data.AddValue("SkipBecause", reason);
    }

    public override void Deserialize(IXunitSerializationInfo data)
    {
        reason = data.GetValue<string>("SkipBecause");
        base.Deserialize(data);
    }
}

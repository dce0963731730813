using FisherKernels.Backends;

namespace FisherKernels.Cli.Bench;

/// <summary>What a suite runs against: the backend under test and the options of this bench run.</summary>
/// <param name="Quick">Tiny shapes and few runs (tests); the figures mean nothing.</param>
/// <param name="Log">Where --verbose details go (the forward pass's time per operator); null without --verbose.</param>
/// <param name="ForwardOnly">With a model: only the forward pair (quick iterations on forward speed).</param>
internal sealed record BenchContext(IComputeBackend Backend, int Threads, bool Quick, string? Model, string? Tokens,
                                    TextWriter? Log = null, bool ForwardOnly = false);

/// <summary>
/// A family of benchmark figures, each timed beside its baseline. Suites are listed in
/// <see cref="BenchCommand.Suites"/>; a suite with <see cref="NeedsModel"/> runs only with --model.
/// </summary>
internal interface IBenchSuite
{
    bool NeedsModel { get; }

    IEnumerable<BenchResult> Run(BenchContext context);
}

using FisherKernels.Backends;
using FisherKernels.Onnx.Graph;
using FisherKernels.Uncertainty;

namespace FisherKernels.Onnx.Scoring;

/// <summary>
/// The K-FAC posterior of the curvature file a model last scored with, kept for the next call: the C ABI's
/// <c>fk_model_score</c> names the file on every call, and loading, checking and decomposing it is the expensive part.
/// The key is the file's full path, length and last write time and the posterior options (τ, rank, memory budget), so a
/// rewritten file or other options build a new posterior. One entry only: a posterior can be large (up to the memory
/// budget per layer), and a caller that alternates files or options pays a rebuild instead of holding several.
/// Each build's eigenvalue lines go to the log. Not thread-safe: calls on one model are serialized by its caller.
/// </summary>
public sealed class PosteriorCache(LanguageModel lm, IComputeBackend backend, TextWriter? log = null)
{
    readonly record struct Key(string Path, long Length, DateTime LastWriteUtc, PosteriorOptions Options);

    Key? key;
    KfacPosterior? posterior;
    LayerSelection stored = LayerSelection.All;

    /// <summary>Posteriors built so far; a call answered from the cache builds none.</summary>
    public int Builds { get; private set; }

    /// <summary>
    /// The posterior of <paramref name="curvaturePath"/> for the model, built only when the file or the options changed;
    /// <paramref name="selection"/> (the command's layer selection) must be none or the curvature's.
    /// </summary>
    public KfacPosterior Get(string curvaturePath, PosteriorOptions options, LayerSelection? selection = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        selection ??= LayerSelection.All;
        // Stat before loading: a file rewritten during the load is stored under the old stamp and rebuilt on the next call.
        var file = new FileInfo(curvaturePath);
        var current = file.Exists ? new Key(file.FullName, file.Length, file.LastWriteTimeUtc, options) : (Key?)null;
        if (posterior is not null && current is not null && key == current)
        {
            selection.EnsureSameAs(stored, $"curvature '{curvaturePath}'");
            return posterior;
        }
        (key, posterior) = (null, null); // drop the old posterior before building the next one
        var (curvature, built) = KfacScoring.LoadPosterior(lm, curvaturePath, options, backend, log ?? TextWriter.Null, selection);
        (posterior, stored) = (built, KfacScoring.StoredSelection(curvature));
        key = current;
        Builds++;
        return posterior;
    }
}

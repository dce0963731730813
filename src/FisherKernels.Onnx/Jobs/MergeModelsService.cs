using System.Globalization;
using FisherKernels.Backends;
using FisherKernels.Curvature;
using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Import;
using FisherKernels.Onnx.Scoring;

namespace FisherKernels.Onnx.Jobs;

/// <summary>How <c>merge-models</c> uses each model's Fisher (SPEC §4 <c>--form</c>).</summary>
public enum MergeForm
{
    /// <summary><c>F_k = A_k ⊗ G_k</c>, the system solved by conjugate gradients with Kronecker products.</summary>
    Kfac,
    /// <summary>Each <c>F_k</c> replaced by its diagonal <c>G_k[i,i]·A_k[j,j]</c> (Matena &amp; Raffel's Fisher merging), in closed form.</summary>
    Diag,
}

/// <summary>The options of <c>merge-models</c>: the form, the weights (null: equal) and ε (null: 1e-6 · the mean diagonal of <c>Σ w_k F_k</c>).</summary>
public sealed record MergeModelsOptions
{
    public MergeForm Form { get; init; } = MergeForm.Kfac;
    public IReadOnlyList<double>? Weights { get; init; }
    public double? Epsilon { get; init; }
    /// <summary>Conjugate gradients stop when <c>‖r‖ ≤ tolerance · ‖b‖</c> (<see cref="MergeForm.Kfac"/>).</summary>
    public double Tolerance { get; init; } = 1e-8;
    public int MaxIterations { get; init; } = 500;
}

/// <summary>One merged layer: its ε, and for the K-FAC form the iterations and the final relative residual of the solve.</summary>
public sealed record MergedLayer(string Layer, double Epsilon, int Iterations, double RelativeResidual);

/// <summary>What <c>merge-models</c> wrote: every layer's solve, and how many other float initializers took the weighted mean.</summary>
public sealed record MergeModelsResult(IReadOnlyList<MergedLayer> Layers, int Averaged);

/// <summary>
/// Fisher-weighted model merging (SPEC §4 <c>merge-models</c>): per layer <c>θ* = (Σ_k w_k F_k + εI)⁻¹ (Σ_k w_k F_k θ_k + ε θ̄)</c>
/// with the per-position Fisher <c>F_k = A_k ⊗ G_k</c> (not M_k·A_k⊗G_k: a model is not weighted by how many tokens its
/// curvature saw), θ in the <c>[out × in(+1)]</c> layout, θ̄ = Σ_k w_k θ_k; every other float initializer the weighted
/// mean; the first model's graph with the merged initializers.
/// </summary>
public static class MergeModelsService
{
    public static MergeModelsResult Merge(IReadOnlyList<(LanguageModel Model, string Curvature)> inputs, MergeModelsOptions options, string outPath,
                                          IComputeBackend backend)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(options);
        if (inputs.Count < 2) throw FisherKernelsException.Argument($"merge-models: needs at least two models, each with --curvature; got {inputs.Count}");
        double[] w = Weights(options.Weights, inputs.Count);
        if (options.Epsilon is double e && !(e > 0 && double.IsFinite(e)))
            throw FisherKernelsException.Argument($"merge-models: --epsilon must be a positive number, got {e.ToString("R", CultureInfo.InvariantCulture)}");
        LanguageModel first = inputs[0].Model;
        for (int k = 1; k < inputs.Count; k++) EnsureSameInitializers(first, inputs[k].Model);
        var curvatures = inputs.Select(i => KfacScoring.LoadCurvature(i.Model, i.Curvature)).ToArray();

        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var merged = new List<MergedLayer>();
        foreach (Layer layer in first.Model.Layers)
        {
            var blocks = curvatures.Select(c => c[layer.Id]).ToArray();
            var thetas = inputs.Select(i => OutIn(i.Model, layer)).ToArray();
            var (x, info) = options.Form == MergeForm.Diag ? DiagMerge(layer, blocks, thetas, w, options, inputs) : KfacMerge(layer, blocks, thetas, w, options, inputs, backend);
            var weight = new float[first.Model.Graph.Initializers[layer.Id].Shape.Aggregate(1L, (a, b) => a * b)];
            float[]? bias = layer.Bias is null ? null : new float[layer.Out];
            LayerLayout.FromOutIn(layer, Array.ConvertAll(x, v => (float)v), weight, bias);
            values[layer.Id] = weight;
            if (bias is not null) values[layer.Bias!] = bias;
            merged.Add(info);
        }

        // Every other float initializer: the weighted mean, where the models differ at all (identical ones keep their bytes).
        int averaged = 0;
        var graph = first.Model.Graph;
        foreach (string name in graph.InitializerOrder)
        {
            if (values.ContainsKey(name) || graph.ConstantNodeValues.Contains(name) || graph.Initializers[name] is not NdArray<float> x0) continue;
            var all = inputs.Select(i => ((NdArray<float>)i.Model.Model.Graph.Initializers[name]).Data).ToArray();
            if (all.All(d => d.AsSpan().SequenceEqual(x0.Data))) continue;
            var mean = new float[x0.Data.Length];
            for (int i = 0; i < mean.Length; i++)
            {
                double sum = 0;
                for (int k = 0; k < all.Length; k++) sum += w[k] * all[k][i];
                mean[i] = (float)sum;
            }
            values[name] = mean;
            averaged++;
        }
        InitializerWriter.Write(graph.Source, outPath, values);
        return new MergeModelsResult(merged, averaged);
    }

    /// <summary>The weights normalized to sum 1: K of them, finite, non-negative, not all 0 (null: equal).</summary>
    static double[] Weights(IReadOnlyList<double>? given, int count)
    {
        if (given is null) return Enumerable.Repeat(1.0 / count, count).ToArray();
        if (given.Count != count) throw FisherKernelsException.Argument($"merge-models: --weights has {given.Count} values for {count} models (one per model, in order)");
        if (given.Any(v => !(v >= 0) || !double.IsFinite(v)) || given.Sum() <= 0)
            throw FisherKernelsException.Argument($"merge-models: --weights must be non-negative numbers with a positive sum, got {string.Join(",", given.Select(v => v.ToString("R", CultureInfo.InvariantCulture)))}");
        double total = given.Sum();
        return given.Select(v => v / total).ToArray();
    }

    /// <summary>The layers as <see cref="EwcService.EnsureSameArchitecture"/> checks them, and every float initializer of the first model, with its shape, in the other.</summary>
    static void EnsureSameInitializers(LanguageModel first, LanguageModel other)
    {
        EwcService.EnsureSameArchitecture(first, other);
        var (a, b) = (first.Model.Graph, other.Model.Graph);
        foreach (string name in a.InitializerOrder)
        {
            if (a.ConstantNodeValues.Contains(name) || a.Initializers[name] is not NdArray<float> x) continue;
            if (!b.Initializers.TryGetValue(name, out var y) || b.ConstantNodeValues.Contains(name) || y is not NdArray<float>)
                throw FisherKernelsException.Argument($"models of different architectures: '{b.Source}' has no float initializer '{name}' of '{a.Source}'");
            if (!x.Shape.AsSpan().SequenceEqual(y.Shape))
                throw FisherKernelsException.Argument($"models of different architectures: initializer '{name}' is [{ShapeUtil.Format(x.Shape)}] in '{a.Source}' and [{ShapeUtil.Format(y.Shape)}] in '{b.Source}'");
        }
    }

    static double[] OutIn(LanguageModel lm, Layer layer)
    {
        var x = new float[LayerLayout.Size(layer)];
        var initializers = lm.Model.Graph.Initializers;
        LayerLayout.ToOutIn(layer, ((NdArray<float>)initializers[layer.Id]).Data, layer.Bias is null ? default : ((NdArray<float>)initializers[layer.Bias]).Data, x);
        return Array.ConvertAll(x, v => (double)v);
    }

    /// <summary>The diagonal of a factor side: the dense matrix's, or the one a sketch stores exactly.</summary>
    static double[] Diagonal(FactorSide side)
    {
        if (side.Sketch is { } sketch) return Array.ConvertAll(sketch.Diagonal.Data, v => (double)v);
        int n = side.Size;
        var d = new double[n];
        for (int i = 0; i < n; i++) d[i] = side.Matrix!.Data[(long)i * n + i];
        return d;
    }

    /// <summary>ε as given, else 1e-6 · the mean of the diagonal of <c>Σ_k w_k F_k</c>: mean_ij Σ_k w_k G_k[i,i] A_k[j,j] = Σ_k w_k mean(diag G_k) mean(diag A_k).</summary>
    static double Epsilon(KroneckerBlock[] blocks, double[] w, MergeModelsOptions options, Layer layer)
    {
        if (options.Epsilon is double e) return e;
        double mean = 0;
        for (int k = 0; k < blocks.Length; k++) mean += w[k] * Diagonal(blocks[k].GSide).Average() * Diagonal(blocks[k].ASide).Average();
        if (!(mean > 0)) throw FisherKernelsException.Argument($"merge-models: layer '{layer.Id}': the weighted Fisher has a zero diagonal (every curvature empty?); give --epsilon");
        return 1e-6 * mean;
    }

    static (double[], MergedLayer) DiagMerge(Layer layer, KroneckerBlock[] blocks, double[][] thetas, double[] w, MergeModelsOptions options,
                                            IReadOnlyList<(LanguageModel Model, string Curvature)> inputs)
    {
        double epsilon = Epsilon(blocks, w, options, layer);
        int g = layer.Out, a = thetas[0].Length / g;
        var numerator = new double[thetas[0].Length];
        var denominator = new double[numerator.Length];
        for (int k = 0; k < blocks.Length; k++)
        {
            double[] dg = Diagonal(blocks[k].GSide), da = Diagonal(blocks[k].ASide);
            for (int i = 0; i < g; i++)
                for (int j = 0; j < a; j++)
                {
                    double d = w[k] * dg[i] * da[j];
                    numerator[i * a + j] += d * thetas[k][i * a + j] + epsilon * w[k] * thetas[k][i * a + j];
                    denominator[i * a + j] += d;
                }
        }
        for (int i = 0; i < numerator.Length; i++) numerator[i] /= denominator[i] + epsilon;
        return (numerator, new MergedLayer(layer.Id, epsilon, 0, 0));
    }

    /// <summary>
    /// <c>(Σ_k w_k G_k X A_k + εX) = Σ_k w_k G_k Θ_k A_k + ε θ̄</c> by preconditioned conjugate gradients, all in float64 (ε is
    /// 1e-6 of the mean diagonal, so the system's condition number reaches 1e6 and float32 products stall it). The
    /// preconditioner is the inverse of <c>Ḡ ⊗ Ā + εI</c> (Ḡ = Σ w_k G_k, Ā = Σ w_k A_k) in its Kronecker eigenbasis, exact
    /// when the models' factors agree. Work per iteration: K·out·in·(out + in) multiply-adds.
    /// </summary>
    static (double[], MergedLayer) KfacMerge(Layer layer, KroneckerBlock[] blocks, double[][] thetas, double[] w, MergeModelsOptions options,
                                            IReadOnlyList<(LanguageModel Model, string Curvature)> inputs, IComputeBackend backend)
    {
        for (int k = 0; k < blocks.Length; k++)
            if (!blocks[k].IsDense)
                throw FisherKernelsException.Unsupported($"merge-models --form kfac: layer '{layer.Id}' of curvature '{inputs[k].Curvature}' has a low-rank factor side; use --form diag (its diagonal is stored exactly)");
        double epsilon = Epsilon(blocks, w, options, layer);
        int g = layer.Out, a = thetas[0].Length / g, n = g * a;
        double[][] gs = blocks.Select(b => SemiDefinite(b.G.Data, g, backend)).ToArray();
        double[][] As = blocks.Select(b => SemiDefinite(b.A.Data, a, backend)).ToArray();
        var scratch = new double[n];

        // y += scale · L X R for row-major L [g × g], X [g × a], R [a × a].
        void Sandwich(double[] l, double[] x, double[] r, double[] y, double scale)
        {
            Array.Clear(scratch);
            for (int i = 0; i < g; i++)
                for (int p = 0; p < g; p++)
                {
                    double lip = l[i * g + p];
                    if (lip == 0) continue;
                    for (int j = 0; j < a; j++) scratch[i * a + j] += lip * x[p * a + j];
                }
            for (int i = 0; i < g; i++)
                for (int q = 0; q < a; q++)
                {
                    double s = scale * scratch[i * a + q];
                    if (s == 0) continue;
                    for (int j = 0; j < a; j++) y[i * a + j] += s * r[q * a + j];
                }
        }
        void Operator(double[] x, double[] y)
        {
            for (int i = 0; i < n; i++) y[i] = epsilon * x[i];
            for (int k = 0; k < blocks.Length; k++) Sandwich(gs[k], x, As[k], y, w[k]);
        }

        var b = new double[n];
        for (int k = 0; k < blocks.Length; k++)
        {
            Sandwich(gs[k], thetas[k], As[k], b, w[k]);
            for (int i = 0; i < n; i++) b[i] += epsilon * w[k] * thetas[k][i];
        }
        var (gBar, aBar) = (new double[(long)g * g], new double[(long)a * a]);
        for (int k = 0; k < blocks.Length; k++)
        {
            for (int i = 0; i < gBar.Length; i++) gBar[i] += w[k] * gs[k][i];
            for (int i = 0; i < aBar.Length; i++) aBar[i] += w[k] * As[k][i];
        }
        var (lambdaG, qg, lambdaA, qa) = (new double[g], new double[(long)g * g], new double[a], new double[(long)a * a]);
        backend.SymmetricEigen(gBar, g, lambdaG, qg);
        backend.SymmetricEigen(aBar, a, lambdaA, qa);
        var (qgT, qaT) = (Transpose(qg, g), Transpose(qa, a));
        var rotated = new double[n];
        void Precondition(double[] r, double[] z)
        {
            Array.Clear(rotated);
            Sandwich(qgT, r, qa, rotated, 1);
            for (int i = 0; i < g; i++)
                for (int j = 0; j < a; j++) rotated[i * a + j] /= Math.Max(lambdaG[i], 0) * Math.Max(lambdaA[j], 0) + epsilon;
            Array.Clear(z);
            Sandwich(qg, rotated, qaT, z, 1);
        }

        // Start from the weighted mean θ̄: the answer in every direction no curvature informs.
        var x = new double[n];
        for (int k = 0; k < blocks.Length; k++)
            for (int i = 0; i < n; i++) x[i] += w[k] * thetas[k][i];
        var (r, z, p, q) = (new double[n], new double[n], new double[n], new double[n]);
        Operator(x, q);
        for (int i = 0; i < n; i++) r[i] = b[i] - q[i];
        double bNorm = Math.Sqrt(Dot(b, b)), rNorm = Math.Sqrt(Dot(r, r));
        Precondition(r, z);
        z.CopyTo(p, 0);
        double rz = Dot(r, z);
        int iterations = 0;
        while (rNorm > options.Tolerance * bNorm && iterations < options.MaxIterations)
        {
            Operator(p, q);
            double alpha = rz / Dot(p, q);
            for (int i = 0; i < n; i++) { x[i] += alpha * p[i]; r[i] -= alpha * q[i]; }
            rNorm = Math.Sqrt(Dot(r, r));
            iterations++;
            if (rNorm <= options.Tolerance * bNorm) break;
            Precondition(r, z);
            double next = Dot(r, z);
            for (int i = 0; i < n; i++) p[i] = z[i] + next / rz * p[i];
            rz = next;
        }
        // The recurrence's residual can drift from the true one: report (and check) the true one.
        Operator(x, q);
        for (int i = 0; i < n; i++) r[i] = b[i] - q[i];
        double relative = bNorm > 0 ? Math.Sqrt(Dot(r, r)) / bNorm : 0;
        if (!(relative <= 1e-5))
            throw FisherKernelsException.Backend(string.Create(CultureInfo.InvariantCulture,
                $"merge-models: layer '{layer.Id}': conjugate gradients reached a relative residual of {relative:G3} after {iterations} iterations (ε {epsilon:G3}); give a larger --epsilon or use --form diag"));
        return (x, new MergedLayer(layer.Id, epsilon, iterations, relative));
    }

    /// <summary>
    /// A float32 factor in float64 with its eigenvalues under its rounding level (n·2⁻²³·max|λ|, negative ones included) set
    /// to 0, as the posterior reads them (<see cref="KronEigenbasis"/>): rounding leaves a positive semi-definite factor
    /// with eigenvalues of about −1e-7·max, which ε = 1e-6 · the mean diagonal does not always outweigh, and the system
    /// would then be indefinite.
    /// </summary>
    static double[] SemiDefinite(float[] factor, int n, IComputeBackend backend)
    {
        var (lambda, q) = (new double[n], new double[(long)n * n]);
        backend.SymmetricEigen(Array.ConvertAll(factor, v => (double)v), n, lambda, q);
        double floor = n * 1.1920928955078125e-7 * lambda.Max(Math.Abs);
        var result = new double[(long)n * n];
        for (int k = 0; k < n; k++)
        {
            if (!(lambda[k] > floor)) continue;
            for (int i = 0; i < n; i++)
            {
                double qik = lambda[k] * q[(long)i * n + k];
                for (int j = 0; j < n; j++) result[(long)i * n + j] += qik * q[(long)j * n + k];
            }
        }
        return result;
    }

    static double[] Transpose(double[] m, int n)
    {
        var t = new double[m.Length];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) t[j * n + i] = m[i * n + j];
        return t;
    }

    static double Dot(double[] x, double[] y)
    {
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += x[i] * y[i];
        return sum;
    }
}

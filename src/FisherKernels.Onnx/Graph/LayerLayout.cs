namespace FisherKernels.Onnx.Graph;

/// <summary>
/// A layer's weight and bias as the one matrix <c>[W | b]</c> <c>[out × in(+1)]</c> of SPEC §3 and back, whatever the
/// weight's stored orientation (<see cref="Layer.StoredOutIn"/>): the layout every posterior and curvature uses.
/// </summary>
public static class LayerLayout
{
    /// <summary>Floats of <c>[out × in(+1)]</c>.</summary>
    public static long Size(Layer layer) => (long)layer.Out * Columns(layer);

    static int Columns(Layer layer) => layer.In + (layer.Bias is null ? 0 : 1);

    /// <summary>Writes <paramref name="weight"/> (stored layout) and <paramref name="bias"/> (or nothing without one) into <paramref name="x"/>.</summary>
    public static void ToOutIn(Layer layer, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, Span<float> x)
    {
        int a = Columns(layer);
        for (int o = 0; o < layer.Out; o++)
            for (int k = 0; k < layer.In; k++) x[o * a + k] = layer.StoredOutIn ? weight[o * layer.In + k] : weight[k * layer.Out + o];
        if (layer.Bias is not null)
            for (int o = 0; o < layer.Out; o++) x[o * a + layer.In] = bias[o];
    }

    /// <summary>The inverse of <see cref="ToOutIn"/>: <paramref name="x"/> into the weight's stored layout and the bias.</summary>
    public static void FromOutIn(Layer layer, ReadOnlySpan<float> x, Span<float> weight, Span<float> bias)
    {
        int a = Columns(layer);
        for (int o = 0; o < layer.Out; o++)
            for (int k = 0; k < layer.In; k++) weight[layer.StoredOutIn ? o * layer.In + k : k * layer.Out + o] = x[o * a + k];
        if (layer.Bias is not null)
            for (int o = 0; o < layer.Out; o++) bias[o] = x[o * a + layer.In];
    }
}

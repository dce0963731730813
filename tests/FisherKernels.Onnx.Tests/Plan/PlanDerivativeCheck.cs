using FisherKernels.Onnx.Operators;
using FisherKernels.Onnx.Plan;

namespace FisherKernels.Tests.Plan;

/// <summary>Whole-plan derivatives checked against each other and against a central difference.</summary>
internal static class PlanDerivativeCheck
{
    /// <summary>
    /// For random u (over <paramref name="output"/>) and v (over <paramref name="variables"/>): ⟨u, J v⟩ from forward mode
    /// equals ⟨Jᵀ u, v⟩ from reverse mode, and both match a central difference of f(θ) = ⟨u, y(θ)⟩ (step 1e-2). The plan
    /// must be a keep-all plan with <paramref name="variables"/> as variables; the model's initializers are restored.
    /// </summary>
    public static void ForwardReverseAndCentralDifferenceAgree(OnnxModel model, ExecutionPlan plan, OpContext context,
                                                               Dictionary<string, NdArray> inputs, IReadOnlyList<string> variables,
                                                               string output, Random random)
    {
        var backward = new Backward(plan, [output]);
        var tangent = new Tangent(plan);
        plan.Run(context, inputs);
        var u = ((NdArray<float>)plan.Get(output)).Data.Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        backward.Clear();
        u.CopyTo(backward.Gradient(output).Data, 0);
        backward.Run(context);
        var v = variables.ToDictionary(n => n, n => ((NdArray<float>)model.Graph.Initializers[n]).Data.Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray());
        foreach (var n in variables) v[n].CopyTo(tangent.Direction(n).Data, 0);
        tangent.Run(context);
        double forward = Dot(u, tangent.Get(output).Data);
        double reverse = variables.Sum(n => Dot(backward.Gradient(n).Data, v[n]));
        Assert.Equal(forward, reverse, 1e-4 * Math.Abs(forward) + 1e-6);

        double F(float step)
        {
            var saved = variables.ToDictionary(n => n, n => (float[])((NdArray<float>)model.Graph.Initializers[n]).Data.Clone());
            foreach (var n in variables)
            {
                var data = ((NdArray<float>)model.Graph.Initializers[n]).Data;
                for (int i = 0; i < data.Length; i++) data[i] += step * v[n][i];
            }
            plan.Run(context, inputs);
            double f = Dot(u, ((NdArray<float>)plan.Get(output)).Data);
            foreach (var n in variables) saved[n].CopyTo(((NdArray<float>)model.Graph.Initializers[n]).Data, 0);
            return f;
        }
        double fd = (F(1e-2f) - F(-1e-2f)) / 2e-2;
        Assert.Equal(fd, forward, 2e-3 * Math.Abs(fd) + 1e-4);
    }

    public static double Dot(float[] a, float[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += (double)a[i] * b[i];
        return s;
    }
}

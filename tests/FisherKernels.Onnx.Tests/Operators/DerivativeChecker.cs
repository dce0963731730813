using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>
/// Checks an operator's VJP and JVP on the given inputs, for each differentiable float input on its own
/// and for all of them together:
/// <list type="bullet">
/// <item>JVP against central finite differences of the forward, (f(x+hv) − f(x−hv)) / 2h, accumulated in float64
///   (relative error in norm ≤ <c>finiteDifferenceTolerance</c>);</item>
/// <item>VJP against the same differences through ⟨u, FD(v)⟩ = ⟨Jᵀu, v⟩ (relative ≤ <c>finiteDifferenceTolerance</c>);</item>
/// <item>adjoint consistency ⟨u, J v⟩ = ⟨Jᵀu, v⟩ (relative ≤ <c>adjointTolerance</c>);</item>
/// <item>the VJP adds into its gradient buffers (they start non-zero) and the JVP overwrites its tangents.</item>
/// </list>
/// The forward is float32: with inputs of order 1, h = 1e-3 keeps rounding (~1e-7/h) and the O(h²)
/// truncation both far below the 1e-3 tolerance.
/// </summary>
internal static class DerivativeChecker
{
    public static void Check(Operator op, NdArray?[] inputs, int seed = 7, double finiteDifferenceTolerance = 1e-3,
                             double adjointTolerance = 1e-5, double step = 1e-3)
    {
        var random = new Random(seed);
        var outputs = OpRunner.Forward(op, inputs);
        var wrt = Enumerable.Range(0, inputs.Length).Where(i => inputs[i] is NdArray<float> && op.IsDifferentiable(i)).ToArray();
        Assert.NotEmpty(wrt);
        var floatOutputs = Enumerable.Range(0, outputs.Length).Where(j => outputs[j] is NdArray<float>).ToArray();
        var sets = wrt.Select(i => new[] { i }).Append(wrt).Distinct(new SetComparer()).ToArray();
        foreach (var set in sets)
        {
            var tangents = new NdArray<float>?[inputs.Length];
            foreach (int i in set) tangents[i] = OpRunner.Random(random, inputs[i]!.Shape);
            string what = $"{op.Node.OpType} w.r.t. input(s) {string.Join(",", set)}";

            // Forward mode: output tangents start as garbage; the JVP must overwrite them.
            var outTangents = new NdArray<float>?[outputs.Length];
            foreach (int j in floatOutputs) { outTangents[j] = OpRunner.Random(random, outputs[j].Shape); }
            op.Jvp(OpRunner.Context, inputs, outputs, tangents, outTangents);

            var fd = FiniteDifference(op, inputs, tangents, step);

            // Reverse mode: gradients start at a known offset r; what the VJP adds is grad − r.
            var cotangents = new NdArray<float>?[outputs.Length];
            foreach (int j in floatOutputs) cotangents[j] = OpRunner.Random(random, outputs[j].Shape);
            var grads = new NdArray<float>?[inputs.Length];
            var offsets = new NdArray<float>?[inputs.Length];
            foreach (int i in set)
            {
                offsets[i] = OpRunner.Random(random, inputs[i]!.Shape);
                grads[i] = new NdArray<float>(inputs[i]!.Shape, (float[])offsets[i]!.Data.Clone());
            }
            op.Vjp(OpRunner.Context, inputs, outputs, cotangents, grads);

            double fdNorm = 0, errorNorm = 0, uJv = 0, uFd = 0, scaleJv = 0, scaleFd = 0;
            foreach (int j in floatOutputs)
            {
                var u = cotangents[j]!.Data; var jv = outTangents[j]!.Data; var f = fd[j];
                for (int k = 0; k < f.Length; k++)
                {
                    fdNorm += f[k] * f[k];
                    errorNorm += (jv[k] - f[k]) * (jv[k] - f[k]);
                    uJv += u[k] * (double)jv[k]; scaleJv += Math.Abs(u[k] * (double)jv[k]);
                    uFd += u[k] * f[k]; scaleFd += Math.Abs(u[k] * f[k]);
                }
            }
            double vJtu = 0, scaleVJtu = 0;
            foreach (int i in set)
            {
                var g = grads[i]!.Data; var r = offsets[i]!.Data; var v = tangents[i]!.Data;
                for (int k = 0; k < g.Length; k++)
                {
                    double added = (double)g[k] - r[k];
                    vJtu += added * v[k]; scaleVJtu += Math.Abs(added * v[k]);
                }
            }
            fdNorm = Math.Sqrt(fdNorm); errorNorm = Math.Sqrt(errorNorm);
            Assert.True(fdNorm > 0, $"{what}: the finite differences are all zero, the test would not check anything");
            Assert.True(errorNorm <= finiteDifferenceTolerance * fdNorm,
                        $"{what}: JVP vs finite differences: |Δ| {errorNorm:g4} > {finiteDifferenceTolerance:g3}·{fdNorm:g4}");
            double scale = Math.Max(scaleJv, scaleVJtu);
            Assert.True(Math.Abs(uJv - vJtu) <= adjointTolerance * scale + 1e-12,
                        $"{what}: ⟨u, Jv⟩ = {uJv:g8} but ⟨Jᵀu, v⟩ = {vJtu:g8} (scale {scale:g4})");
            Assert.True(Math.Abs(uFd - vJtu) <= finiteDifferenceTolerance * Math.Max(scaleFd, scaleVJtu) + 1e-12,
                        $"{what}: ⟨u, FD(v)⟩ = {uFd:g8} but ⟨Jᵀu, v⟩ = {vJtu:g8}");
        }
    }

    /// <summary>Central differences of every float output along the tangents, in float64 (inputs of order 1).</summary>
    private static double[][] FiniteDifference(Operator op, NdArray?[] inputs, NdArray<float>?[] tangents, double step)
    {
        double[][] Evaluate(double sign)
        {
            var shifted = new NdArray?[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
            {
                if (tangents[i] is not { } t) { shifted[i] = inputs[i]; continue; }
                var x = (NdArray<float>)inputs[i]!;
                var y = new float[x.Data.Length];
                for (int k = 0; k < y.Length; k++) y[k] = (float)(x.Data[k] + sign * step * t.Data[k]);
                shifted[i] = new NdArray<float>(x.Shape, y);
            }
            return OpRunner.Forward(op, shifted).Select(o => o is NdArray<float> f ? Array.ConvertAll(f.Data, v => (double)v) : []).ToArray();
        }
        var plus = Evaluate(+1);
        var minus = Evaluate(-1);
        return plus.Select((p, j) => p.Select((v, k) => (v - minus[j][k]) / (2 * step)).ToArray()).ToArray();
    }

    private sealed class SetComparer : IEqualityComparer<int[]>
    {
        public bool Equals(int[]? a, int[]? b) => a!.SequenceEqual(b!);
        public int GetHashCode(int[] a) => a.Length;
    }
}

using FisherKernels.Onnx.Operators;

namespace FisherKernels.Tests.Operators;

/// <summary>The vectorized exp (attention's softmax, the tanh GELU) and the GELU built on it, against float64.</summary>
public class FastMathTests
{
    [Fact]
    public void Exp_is_within_2_ulp_of_float64_and_saturates_like_exp()
    {
        var x = new List<float> { 0f, -0f, 1f, -1f, 1e-30f, -1e-30f, 0.5f * MathF.Log(2), 88.7f, 88.72f, 88.73f, 89f, 100f, -87.3f,
                                  -87.34f, -100f, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, float.MinValue };
        var rng = new Random(5);
        for (int i = 0; i < 20000; i++) x.Add((float)(rng.NextDouble() * 180 - 90));
        for (int i = 0; i < 2000; i++) x.Add((float)(rng.NextDouble() * 2 - 1));
        x.Add(float.NaN);
        var input = x.ToArray();
        var y = new float[input.Length];
        FastMath.Exp(input, y);
        for (int i = 0; i < input.Length; i++)
        {
            double expected = Math.Exp(input[i]);
            string at = $"exp({input[i]:R}) = {y[i]:R}, float64 {expected:R}";
            if (float.IsNaN(input[i])) Assert.True(float.IsNaN(y[i]), at);
            else if (expected > float.MaxValue) Assert.True(float.IsPositiveInfinity(y[i]), at);
            else if (input[i] < -87.33f) Assert.True(y[i] == 0, at);
            else Assert.True(Math.Abs(y[i] - expected) <= 2 * ((double)MathF.BitIncrement((float)expected) - (float)expected), at);
        }
    }

    [Fact]
    public void GeluTanh_matches_its_float64_formula()
    {
        var rng = new Random(6);
        var x = new float[1003];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 24 - 12);
        x[0] = 0; x[1] = 200; x[2] = -200;
        var y = new float[x.Length];
        FastMath.GeluTanh(x, y);
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i], expected = 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
            // x − x/(e^{2u} + 1) cancels for negative x: the error is float32 rounding of x, not of the result.
            Assert.True(Math.Abs(y[i] - expected) <= 4e-7 * Math.Max(1, Math.Abs(v)), $"gelu({x[i]:R}) = {y[i]:R}, float64 {expected:R}");
        }
    }
}

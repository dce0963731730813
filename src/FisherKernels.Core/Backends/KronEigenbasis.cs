namespace FisherKernels.Backends;

/// <summary>
/// The eigenbasis of one damped Kronecker block <c>M·A⊗G + τ·I</c> (SPEC §4):
/// A = Q_A Λ_A Q_Aᵀ ([a × a]), G = Q_G Λ_G Q_Gᵀ ([g × g]). Eigenvectors are the columns of the
/// row-major Q matrices, stored in float32 for the hot quadratic forms; the decomposition itself is
/// done in float64.
/// </summary>
public sealed class KronEigenbasis
{
    public KronEigenbasis(float[] qa, double[] lambdaA, float[] qg, double[] lambdaG, double positions, double priorPrecision)
    {
        int a = lambdaA.Length, g = lambdaG.Length;
        if (qa.Length != a * a) throw FisherKernelsException.Argument($"Q_A needs {a * a} elements, got {qa.Length}");
        if (qg.Length != g * g) throw FisherKernelsException.Argument($"Q_G needs {g * g} elements, got {qg.Length}");
        if (!(priorPrecision > 0) && !(positions > 0))
            throw FisherKernelsException.Argument("a Kronecker block needs positions > 0 or a positive prior precision");
        QA = qa; LambdaA = lambdaA; QG = qg; LambdaG = lambdaG;
        Positions = positions; PriorPrecision = priorPrecision;
    }

    public float[] QA { get; }
    public double[] LambdaA { get; }
    public float[] QG { get; }
    public double[] LambdaG { get; }
    public double Positions { get; }
    public double PriorPrecision { get; }
    public int ADim => LambdaA.Length;
    public int GDim => LambdaG.Length;
}

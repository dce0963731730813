using FisherKernels.IO;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Jobs;

/// <summary><c>J·V</c> (SPEC §4) for a direction stored as safetensors, one tensor per initializer name.</summary>
public static class JvpService
{
    /// <summary>The JVP of the logits along the direction in <paramref name="directionPath"/>, shape of the logits.</summary>
    public static NdArray<float> Jvp(LanguageModel lm, OpContext context, NdArray tokens, string directionPath)
    {
        var file = SafetensorsFile.Read(directionPath);
        if (file.Names.Count == 0) throw FisherKernelsException.Argument($"direction '{directionPath}' holds no tensor");
        var direction = file.Names.ToDictionary(n => n, file.GetFloat32);
        return Derivatives.Jvp(lm, context, tokens, direction, $"direction '{directionPath}'");
    }
}

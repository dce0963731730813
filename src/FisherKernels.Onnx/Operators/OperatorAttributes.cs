using System.Globalization;

namespace FisherKernels.Onnx.Operators;

/// <summary>
/// A node's attributes by name, with typed accessors. ONNX INT attributes are int64, FLOAT float32;
/// TENSOR attributes arrive as arrays already converted to the engine's types (float16/bfloat16 → float32).
/// Accessors throw <see cref="FisherKernelsException"/> when an attribute has another kind; the registry
/// prefixes the node's name.
/// </summary>
public sealed class OperatorAttributes
{
    private readonly Dictionary<string, object> values = new(StringComparer.Ordinal);

    public static OperatorAttributes Empty => new();

    public IEnumerable<string> Names => values.Keys;

    public bool Has(string name) => values.ContainsKey(name);

    public OperatorAttributes Set(string name, long value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, float value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, string value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, long[] value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, float[] value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, string[] value) { values[name] = value; return this; }
    public OperatorAttributes Set(string name, NdArray value) { values[name] = value; return this; }

    public long GetInt(string name, long defaultValue) => Get(name, defaultValue, "int");

    public long? GetIntOrNull(string name) => values.ContainsKey(name) ? Get<long>(name, 0, "int") : null;

    public float GetFloat(string name, float defaultValue) => Get(name, defaultValue, "float");

    public string GetString(string name, string defaultValue) => Get(name, defaultValue, "string");

    /// <summary>The INTS attribute, or null when absent.</summary>
    public long[]? GetInts(string name) => Get<long[]?>(name, null, "ints");

    /// <summary>The FLOATS attribute, or null when absent.</summary>
    public float[]? GetFloats(string name) => Get<float[]?>(name, null, "floats");

    /// <summary>The TENSOR attribute, or null when absent.</summary>
    public NdArray? GetTensor(string name) => Get<NdArray?>(name, null, "tensor");

    private T Get<T>(string name, T defaultValue, string kind)
    {
        if (!values.TryGetValue(name, out var value)) return defaultValue;
        if (value is T typed) return typed;
        throw FisherKernelsException.Format($"attribute '{name}' must be {kind}, got {Describe(value)}");
    }

    private static string Describe(object value) => value switch
    {
        long v => "int " + v.ToString(CultureInfo.InvariantCulture),
        float v => "float " + v.ToString(CultureInfo.InvariantCulture),
        string => "string",
        long[] => "ints",
        float[] => "floats",
        string[] => "strings",
        NdArray => "tensor",
        _ => value.GetType().Name,
    };
}

using System.Text.Json;
using System.Text.RegularExpressions;

namespace FisherKernels.Text.Tokenization;

/// <summary>Reading tokenizer.json parts, with errors that name the part at fault.</summary>
internal static class Json
{
    public static string Type(JsonElement json, string where) =>
        json.ValueKind == JsonValueKind.Object && json.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
        : throw FisherKernelsException.Format($"{where}: expected an object with a \"type\"");

    public static bool Bool(JsonElement json, string name, bool fallback) =>
        json.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;

    public static string String(JsonElement json, string name, string where) =>
        json.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
        : throw FisherKernelsException.Format($"{where}: \"{name}\" must be a string");

    public static string? OptionalString(JsonElement json, string name) =>
        json.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static IEnumerable<JsonElement> Array(JsonElement json, string name, string where) =>
        json.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array ? v.EnumerateArray()
        : throw FisherKernelsException.Format($"{where}: \"{name}\" must be an array");

    /// <summary>A Hugging Face pattern: <c>{"String": "..."}</c> (literal) or <c>{"Regex": "..."}</c>.</summary>
    public static Regex Pattern(JsonElement json, string where)
    {
        if (!json.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw FisherKernelsException.Format($"{where}: \"pattern\" must be an object with \"String\" or \"Regex\"");
        if (p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String) return new Regex(Regex.Escape(s.GetString()!), RegexOptions.CultureInvariant);
        if (p.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
        {
            try { return new Regex(r.GetString()!, RegexOptions.CultureInvariant); }
            catch (ArgumentException e) { throw FisherKernelsException.Unsupported($"{where}: regex '{r.GetString()}' is not supported by .NET regular expressions ({e.Message})"); }
        }
        throw FisherKernelsException.Format($"{where}: \"pattern\" must hold \"String\" or \"Regex\"");
    }

    public static FisherKernelsException Unsupported(string where, string what, string type, string supported) =>
        FisherKernelsException.Unsupported($"{where}: {what} type '{type}' is not supported (supported: {supported})");
}

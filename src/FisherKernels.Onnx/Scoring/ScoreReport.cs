using System.Globalization;
using System.Text;
using System.Text.Json;

namespace FisherKernels.Onnx.Scoring;

/// <summary>One targeted position's scores (SPEC §4).</summary>
public sealed record TokenScore(int Position, long Target, double P, double Epistemic, double Aleatoric);

/// <summary>One sequence: p̄ over its targeted positions, the epistemic score of p̄, the mean aleatoric score.</summary>
public sealed record SequenceScore(int Index, double MeanP, double Epistemic, double Aleatoric, IReadOnlyList<TokenScore> Tokens);

/// <summary>The result of <c>score</c>, written as SPEC §6 JSON or CSV.</summary>
public sealed record ScoreReport(string Model, string Method, double PriorPrecision, IReadOnlyList<SequenceScore> Sequences)
{
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("model", Model);
            json.WriteString("method", Method);
            json.WriteNumber("prior_precision", PriorPrecision);
            json.WriteStartArray("sequences");
            foreach (var s in Sequences)
            {
                json.WriteStartObject();
                json.WriteNumber("index", s.Index);
                Number(json, "mean_p", s.MeanP);
                Number(json, "epistemic", s.Epistemic);
                Number(json, "aleatoric", s.Aleatoric);
                json.WriteStartArray("tokens");
                foreach (var t in s.Tokens)
                {
                    json.WriteStartObject();
                    json.WriteNumber("position", t.Position);
                    json.WriteNumber("target", t.Target);
                    Number(json, "p", t.P);
                    Number(json, "epistemic", t.Epistemic);
                    Number(json, "aleatoric", t.Aleatoric);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    public string ToCsv()
    {
        var csv = new StringBuilder("sequence,position,target,p,epistemic,aleatoric\n");
        foreach (var s in Sequences)
            foreach (var t in s.Tokens)
                csv.Append(CultureInfo.InvariantCulture, $"{s.Index},{t.Position},{t.Target},{t.P:R},{t.Epistemic:R},{t.Aleatoric:R}\n");
        return csv.ToString();
    }

    /// <summary>A sequence without targeted positions has no p̄: null rather than NaN, which JSON cannot hold.</summary>
    private static void Number(Utf8JsonWriter json, string name, double value)
    {
        if (double.IsFinite(value)) json.WriteNumber(name, value);
        else json.WriteNull(name);
    }
}

using System.Globalization;
using System.Text;
using System.Text.Json;
using FisherKernels.IO;

namespace FisherKernels.Uncertainty;

/// <summary>The scores of one targeted position (SPEC §4): <c>p = softmax(z)[y]</c>, epistemic, aleatoric <c>p(1−p)</c>.</summary>
public sealed record TokenScore(int Position, long Target, double P, double Epistemic, double Aleatoric)
{
    public TokenScore(int position, long target, double p, double epistemic) : this(position, target, p, epistemic, p * (1 - p)) { }

    /// <summary>Linearized sampling's figures (<c>score --samples k</c>); null when not sampled.</summary>
    public SampledScore? Sampled { get; init; }

    /// <summary>Closed-form variance of the target logit from the output layer's posterior alone (<c>--method kfac</c>); null otherwise.</summary>
    public double? LastLayerLogitVariance { get; init; }

    /// <summary>With text input: the target token's text and its span in the input (SPEC §6); null for token files.</summary>
    public TokenText? Text { get; init; }
}

/// <summary>A target token's text and its character span (Unicode code points, end exclusive, as Hugging Face's offsets).</summary>
public sealed record TokenText(string Text, int Start, int End);

/// <summary>
/// Linearized sampling (<see cref="LinearizedSampling"/>) of one position: the variance of the target logit and the
/// 5th/95th percentiles of <c>softmax(z + J·δθ_s)[y]</c> over the parameter samples.
/// </summary>
public sealed record SampledScore(double LogitVariance, double PLow, double PHigh);

/// <summary>
/// The scores of one sequence (SPEC §4): <c>p̄</c> = mean p of its targeted positions, the epistemic score of <c>p̄</c>
/// (from the gradient of the mean, so cross terms between positions count) and the mean aleatoric score.
/// A sequence without targeted positions has NaN summaries (written as null) and no tokens.
/// </summary>
public sealed record SequenceScore(int Index, double MeanP, double Epistemic, double Aleatoric, IReadOnlyList<TokenScore> Tokens)
{
    /// <summary>The summaries from the tokens; <paramref name="epistemic"/> is the score of the mean gradient.</summary>
    public SequenceScore(int index, IReadOnlyList<TokenScore> tokens, double epistemic)
        : this(index, tokens.Count == 0 ? double.NaN : tokens.Average(t => t.P), tokens.Count == 0 ? double.NaN : epistemic,
               tokens.Count == 0 ? double.NaN : tokens.Average(t => t.Aleatoric), tokens) { }
}

/// <summary>Which epistemic scores a score computes (SPEC §4 <c>--level</c>): the other level's epistemic fields are null.</summary>
[Flags]
public enum ScoreLevel
{
    /// <summary>Per token: one reverse pass per targeted position.</summary>
    Token = 1,
    /// <summary>Per sequence: one reverse pass per sequence, for the gradient of p̄.</summary>
    Sequence = 2,
    Both = Token | Sequence,
}

/// <summary>What <c>score</c> writes (SPEC §6), as JSON or CSV, atomically.</summary>
public sealed record ScoreReport(string Model, string Method, double PriorPrecision, IReadOnlyList<SequenceScore> Sequences)
{
    /// <summary>The epistemic scores computed; a level left out has NaN epistemic scores, written as null (JSON) or empty (CSV).</summary>
    public ScoreLevel Level { get; init; } = ScoreLevel.Both;

    public const string CsvHeader = "sequence,position,target,p,epistemic,aleatoric";
    public const string SampledCsvColumns = ",logit_variance,p_low,p_high";
    public const string LastLayerCsvColumn = ",last_layer_logit_variance";
    public const string TextCsvColumns = ",text,start,end";

    /// <summary>Whether the tokens carry linearized-sampling figures (extra JSON fields and CSV columns, else exactly SPEC §6).</summary>
    public bool IsSampled => Sequences.Any(s => s.Tokens.Any(t => t.Sampled is not null));

    /// <summary>Whether the tokens carry the closed-form last-layer logit variance (an extra JSON field and CSV column, after aleatoric).</summary>
    public bool HasLastLayer => Sequences.Any(s => s.Tokens.Any(t => t.LastLayerLogitVariance is not null));

    /// <summary>Whether the tokens carry their text and span (text input): extra JSON fields and CSV columns, last.</summary>
    public bool HasText => Sequences.Any(s => s.Tokens.Any(t => t.Text is not null));

    /// <summary>Writes JSON for a <c>.json</c> path and CSV for a <c>.csv</c> path; any other extension is an error naming <c>--out</c>.</summary>
    public void Write(string path)
    {
        string extension = Path.GetExtension(path);
        if (extension.Equals(".json", StringComparison.OrdinalIgnoreCase)) WriteJson(path);
        else if (extension.Equals(".csv", StringComparison.OrdinalIgnoreCase)) WriteCsv(path);
        else throw FisherKernelsException.Argument($"--out '{path}': the score file must end in .json or .csv");
    }

    public void WriteJson(string path)
    {
        CheckFinite();
        AtomicFile.Write(path, WriteJson);
    }

    public void WriteCsv(string path)
    {
        CheckFinite();
        AtomicFile.WriteAllBytes(path, Encoding.UTF8.GetBytes(ToCsv()));
    }

    public string ToJson()
    {
        using var stream = new MemoryStream();
        WriteJson(stream);
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    public string ToCsv()
    {
        bool sampled = IsSampled, lastLayer = HasLastLayer, hasText = HasText;
        var text = new StringBuilder(CsvHeader).Append(lastLayer ? LastLayerCsvColumn : "").Append(sampled ? SampledCsvColumns : "").Append(hasText ? TextCsvColumns : "").Append('\n');
        foreach (SequenceScore s in Sequences)
            foreach (TokenScore t in s.Tokens)
            {
                text.Append(CultureInfo.InvariantCulture, $"{s.Index},{t.Position},{t.Target},{Number(t.P)},{(Level.HasFlag(ScoreLevel.Token) ? Number(t.Epistemic) : "")},{Number(t.Aleatoric)}");
                if (lastLayer) text.Append(',').Append(Number(t.LastLayerLogitVariance!.Value));
                if (sampled) text.Append(CultureInfo.InvariantCulture, $",{Number(t.Sampled!.LogitVariance)},{Number(t.Sampled.PLow)},{Number(t.Sampled.PHigh)}");
                if (hasText) text.Append(CultureInfo.InvariantCulture, $",{CsvField(t.Text!.Text)},{t.Text.Start},{t.Text.End}");
                text.Append('\n');
            }
        return text.ToString();
    }

    void WriteJson(Stream stream)
    {
        // Text stays readable (é, not \u00E9); the writer still escapes what JSON requires.
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        json.WriteStartObject();
        json.WriteString("model", Model);
        json.WriteString("method", Method);
        json.WriteNumber("prior_precision", PriorPrecision);
        json.WriteStartArray("sequences");
        foreach (SequenceScore s in Sequences)
        {
            json.WriteStartObject();
            json.WriteNumber("index", s.Index);
            WriteNumberOrNull(json, "mean_p", s.MeanP);
            WriteNumberOrNull(json, "epistemic", s.Epistemic);
            WriteNumberOrNull(json, "aleatoric", s.Aleatoric);
            json.WriteStartArray("tokens");
            foreach (TokenScore t in s.Tokens)
            {
                json.WriteStartObject();
                json.WriteNumber("position", t.Position);
                json.WriteNumber("target", t.Target);
                json.WriteNumber("p", t.P);
                if (Level.HasFlag(ScoreLevel.Token)) json.WriteNumber("epistemic", t.Epistemic);
                else json.WriteNull("epistemic");
                json.WriteNumber("aleatoric", t.Aleatoric);
                if (t.LastLayerLogitVariance is { } lastLayer) json.WriteNumber("last_layer_logit_variance", lastLayer);
                if (t.Sampled is { } sampled)
                {
                    json.WriteNumber("logit_variance", sampled.LogitVariance);
                    json.WriteNumber("p_low", sampled.PLow);
                    json.WriteNumber("p_high", sampled.PHigh);
                }
                if (t.Text is { } tokenText)
                {
                    json.WriteString("text", tokenText.Text);
                    json.WriteNumber("start", tokenText.Start);
                    json.WriteNumber("end", tokenText.End);
                }
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    /// <summary>A non-finite score is a bug or a broken curvature: refuse to write it rather than write a file nothing can parse.</summary>
    void CheckFinite()
    {
        foreach (SequenceScore s in Sequences)
        {
            if (s.Tokens.Count > 0 && Level.HasFlag(ScoreLevel.Sequence) && !double.IsFinite(s.Epistemic))
                throw FisherKernelsException.Argument($"{Method} score: sequence {s.Index} has a non-finite epistemic score {s.Epistemic}");
            foreach (TokenScore t in s.Tokens)
            {
                if (!double.IsFinite(t.P) || Level.HasFlag(ScoreLevel.Token) && !double.IsFinite(t.Epistemic))
                    throw FisherKernelsException.Argument($"{Method} score: sequence {s.Index} position {t.Position} has p {t.P}, epistemic {t.Epistemic}");
                if (t.LastLayerLogitVariance is { } v && !double.IsFinite(v))
                    throw FisherKernelsException.Argument($"{Method} score: sequence {s.Index} position {t.Position} has a non-finite last-layer logit variance {v}");
                if (t.Sampled is { } x && !(double.IsFinite(x.LogitVariance) && double.IsFinite(x.PLow) && double.IsFinite(x.PHigh)))
                    throw FisherKernelsException.Argument($"{Method} score: sequence {s.Index} position {t.Position} has a non-finite sampled figure {x}");
            }
        }
    }

    static void WriteNumberOrNull(Utf8JsonWriter json, string name, double value)
    {
        if (double.IsFinite(value)) json.WriteNumber(name, value);
        else json.WriteNull(name);
    }

    static string Number(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled.</summary>
    static string CsvField(string value) =>
        value.AsSpan().IndexOfAny(",\"\r\n") < 0 ? value : "\"" + value.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";
}

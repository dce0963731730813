using System.Globalization;
using System.Net;
using System.Text;
using FisherKernels.Text.Tokenization;

namespace FisherKernels.Text.Html;

/// <summary>One token of the page: the text shown for it and, where it is a scored target, its scores (SPEC §4, of p).</summary>
public sealed record PageToken(string Text, PageScore? Score = null);

/// <summary>The scores of a targeted token: p, aleatoric p(1−p), epistemic of p, and the sampled interval of p where there is one.</summary>
public sealed record PageScore(int Position, long Target, double P, double Aleatoric, double Epistemic, double? PLow = null, double? PHigh = null);

/// <summary>A sequence of the page, with its sequence-level scores where there are any.</summary>
public sealed record PageSequence(int Index, IReadOnlyList<PageToken> Tokens, double? MeanP = null, double? Epistemic = null, double? Aleatoric = null);

/// <summary>
/// <c>score --html</c> / <c>generate --html</c>: one self-contained page (inline CSS and script, no network) with the text of
/// every sequence, each token shaded by its score, a legend with the scale, and each token's p, aleatoric, epistemic and
/// interval on hover or tap. Shading: epistemic of log p (epistemic / p²) by default; aleatoric of log p ((1−p)/p) and
/// combined ((aleatoric + epistemic) / p², calibrate's u) by a switch. The colours are written into the page, so it reads
/// without its script; the script only switches the score and shows the details.
/// </summary>
public static class ScorePage
{
    public static readonly string[] Modes = ["epistemic", "aleatoric", "combined"];

    /// <summary>The score of <paramref name="s"/> that shades it, on the log p scale.</summary>
    public static double Shade(PageScore s, string mode)
    {
        double p2 = Math.Max(s.P * s.P, 1e-300);
        return mode switch
        {
            "epistemic" => s.Epistemic / p2,
            "aleatoric" => s.Aleatoric / p2,
            "combined" => (s.Aleatoric + s.Epistemic) / p2,
            _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "epistemic, aleatoric or combined"),
        };
    }

    /// <summary>
    /// The tokens of <paramref name="text"/> as the page shows them: each token shows the input from where the one before it
    /// ended to its own end (so spaces between tokens, and a character split over byte tokens, appear once); added special
    /// tokens show nothing. <paramref name="scoreOf"/> gives the score of the token at index i, if it is a target.
    /// </summary>
    public static List<PageToken> Tokens(TokenizedText text, Func<int, PageScore?> scoreOf)
    {
        var result = new List<PageToken>(text.Count + 1);
        int shown = 0;
        for (int i = 0; i < text.Count; i++)
        {
            if (text.Added[i]) continue;
            int from = Math.Max(shown, text.Starts[i]), to = Math.Max(from, text.Ends[i]);
            if (text.Starts[i] > shown) result.Add(new PageToken(CodePoints.Slice(text.Text, shown, text.Starts[i])));
            result.Add(new PageToken(CodePoints.Slice(text.Text, from, to), scoreOf(i)));
            shown = Math.Max(shown, to);
        }
        int total = CodePoints.Count(text.Text);
        if (shown < total) result.Add(new PageToken(CodePoints.Slice(text.Text, shown, total)));
        return result;
    }

    public static void Write(string path, string title, string method, IReadOnlyList<PageSequence> sequences)
    {
        string html = Render(title, method, sequences);
        FisherKernels.IO.AtomicFile.WriteAllBytes(path, Encoding.UTF8.GetBytes(html));
    }

    /// <summary>Shades are drawn in this many steps (classes s0..s15 of the page): small markup, fast to lay out.</summary>
    public const int Steps = 16;

    /// <summary>The step of a shade in [0, 1].</summary>
    public static int Step(double t) => double.IsFinite(t) ? (int)Math.Round(Math.Clamp(t, 0, 1) * (Steps - 1)) : 0;

    /// <summary>The colour of a step: white to deep red.</summary>
    public static string Colour(int step)
    {
        double t = step / (double)(Steps - 1);
        int g = (int)Math.Round(255 - 200 * t), b = (int)Math.Round(255 - 215 * t);
        return $"rgb(255,{g},{b})";
    }

    /// <summary>The log10 range of the shades that the colour scale spans: the 2nd to the 98th percentile of the page's values.</summary>
    public static (double Low, double High) Range(IEnumerable<double> values)
    {
        var logs = values.Where(v => v > 0 && double.IsFinite(v)).Select(Math.Log10).Order().ToArray();
        if (logs.Length == 0) return (0, 1);
        double low = logs[(int)Math.Floor(0.02 * (logs.Length - 1))], high = logs[(int)Math.Ceiling(0.98 * (logs.Length - 1))];
        return high > low ? (low, high) : (low - 0.5, low + 0.5);
    }

    public static double Position(double value, (double Low, double High) range) =>
        value > 0 && double.IsFinite(value) ? (Math.Log10(value) - range.Low) / (range.High - range.Low) : 0;

    static string N(double v) => double.IsFinite(v) ? v.ToString("G5", CultureInfo.InvariantCulture) : "null";

    public static string Render(string title, string method, IReadOnlyList<PageSequence> sequences)
    {
        var scored = sequences.SelectMany(s => s.Tokens).Select(t => t.Score).OfType<PageScore>().ToList();
        var ranges = Modes.ToDictionary(m => m, m => Range(scored.Select(s => Shade(s, m))));
        var html = new StringBuilder(256 + 200 * scored.Count);
        html.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
            .Append("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
            .Append("<title>").Append(WebUtility.HtmlEncode(title)).Append("</title><style>").Append(Style);
        for (int step = 0; step < Steps; step++) html.Append(".s").Append(step.ToString(CultureInfo.InvariantCulture)).Append("{background:").Append(Colour(step)).Append('}');
        html.Append("</style></head><body>\n");
        html.Append("<header><h1>").Append(WebUtility.HtmlEncode(title)).Append("</h1><p class=\"method\">method: ").Append(WebUtility.HtmlEncode(method))
            .Append(", ").Append(scored.Count.ToString(CultureInfo.InvariantCulture)).Append(" scored tokens in ")
            .Append(sequences.Count.ToString(CultureInfo.InvariantCulture)).Append(sequences.Count == 1 ? " sequence" : " sequences").Append("</p>");
        html.Append("<form id=\"mode\">shade by the uncertainty of log p: ");
        foreach (string m in Modes)
            html.Append("<label><input type=\"radio\" name=\"mode\" value=\"").Append(m).Append('"').Append(m == "epistemic" ? " checked" : "")
                .Append("> ").Append(m).Append("</label> ");
        html.Append("</form><div id=\"legend\"><span id=\"legend-low\">").Append(N(Math.Pow(10, ranges["epistemic"].Low)))
            .Append("</span><span class=\"bar\"></span><span id=\"legend-high\">").Append(N(Math.Pow(10, ranges["epistemic"].High)))
            .Append("</span> <span class=\"note\">(log scale; hover or tap a token for p, aleatoric, epistemic and the interval)</span></div></header>\n<main>\n");

        int k = 0;
        var data = new StringBuilder(64 * scored.Count);
        foreach (var sequence in sequences)
        {
            html.Append("<section class=\"seq\"><h2>sequence ").Append(sequence.Index.ToString(CultureInfo.InvariantCulture));
            if (sequence.MeanP is { } mp)
                html.Append(" <small>mean p ").Append(N(mp)).Append(", epistemic ").Append(N(sequence.Epistemic ?? double.NaN))
                    .Append(", aleatoric ").Append(N(sequence.Aleatoric ?? double.NaN)).Append("</small>");
            html.Append("</h2><div class=\"text\">");
            foreach (var token in sequence.Tokens)
            {
                string text = WebUtility.HtmlEncode(token.Text);
                if (token.Score is not { } s)
                {
                    html.Append(text);
                    continue;
                }
                // The k-th span of the page is the k-th entry of the data: no index is written per token.
                int step = Step(Position(Shade(s, "epistemic"), ranges["epistemic"]));
                html.Append("<span class=\"t s").Append(step.ToString(CultureInfo.InvariantCulture)).Append("\">")
                    .Append(text.Length == 0 ? "&#8203;" : text).Append("</span>");
                if (data.Length > 0) data.Append(',');
                data.Append('[').Append(sequence.Index.ToString(CultureInfo.InvariantCulture)).Append(',').Append(s.Position.ToString(CultureInfo.InvariantCulture))
                    .Append(',').Append(s.Target.ToString(CultureInfo.InvariantCulture)).Append(',').Append(N(s.P)).Append(',').Append(N(s.Aleatoric))
                    .Append(',').Append(N(s.Epistemic)).Append(',').Append(s.PLow is { } lo ? N(lo) : "null").Append(',').Append(s.PHigh is { } hi ? N(hi) : "null").Append(']');
                k++;
            }
            html.Append("</div></section>\n");
        }
        html.Append("</main><div id=\"tip\" hidden></div>\n");
        // Data for the script: numbers only, so nothing in it can close the script element.
        html.Append("<script id=\"data\" type=\"application/json\">{\"tokens\":[").Append(data).Append("],\"ranges\":{");
        html.AppendJoin(',', Modes.Select(m => $"\"{m}\":[{N(ranges[m].Low)},{N(ranges[m].High)}]"));
        html.Append("}}</script>\n<script>").Append(Script).Append("</script>\n</body></html>\n");
        return html.ToString();
    }

    const string Style = """
        body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fff}
        header{position:sticky;top:0;background:#f7f7f7;border-bottom:1px solid #ddd;padding:.4em 1em;z-index:1}
        h1{font-size:1.1em;margin:.2em 0}.method{margin:.2em 0;color:#555;font-size:.9em}
        #mode label{margin-right:.8em}#legend{font-size:.85em;margin:.3em 0}
        #legend .bar{display:inline-block;width:12em;height:.9em;vertical-align:middle;margin:0 .4em;border:1px solid #ccc;background:linear-gradient(to right,rgb(255,255,255),rgb(255,55,40))}
        .note{color:#666}main{padding:0 1em 2em}
        .seq h2{font-size:.95em;margin:1em 0 .3em;color:#444}.seq small{font-weight:normal;color:#666}
        .text{white-space:pre-wrap;word-wrap:break-word;font-family:ui-monospace,monospace;font-size:14px;line-height:1.6}
        .t{border-radius:2px;cursor:pointer}.t:hover,.t.sel{outline:1px solid #333}
        #tip{position:fixed;background:#222;color:#fff;padding:.4em .6em;border-radius:4px;font-size:12px;font-family:ui-monospace,monospace;pointer-events:none;white-space:pre;z-index:2}
        """;

    const string Script = """
        (function(){
        var d=JSON.parse(document.getElementById('data').textContent),T=d.tokens;
        var STEPS=16,spans=document.querySelectorAll('span.t'),tip=document.getElementById('tip'),mode='epistemic';
        function shade(r,m){var p2=Math.max(r[3]*r[3],1e-300);return m==='epistemic'?r[5]/p2:m==='aleatoric'?r[4]/p2:(r[4]+r[5])/p2;}
        function step(t){if(!isFinite(t))t=0;return Math.round(Math.min(1,Math.max(0,t))*(STEPS-1));}
        function fmt(v){return v===null?'-':Math.abs(v)>=1e-3&&Math.abs(v)<1e4?(+v.toPrecision(4)).toString():v.toExponential(3);}
        function apply(m){mode=m;var r=d.ranges[m],lo=r[0],hi=r[1];
          for(var i=0;i<spans.length;i++){var v=shade(T[i],m);spans[i].className='t s'+step(v>0?(Math.log10(v)-lo)/(hi-lo):0);}
          document.getElementById('legend-low').textContent=fmt(Math.pow(10,lo));document.getElementById('legend-high').textContent=fmt(Math.pow(10,hi));
          document.body.dataset.mode=m;}
        function show(e,s){var r=T[Array.prototype.indexOf.call(spans,s)];
          tip.textContent='position '+r[1]+'  target '+r[2]+'\np          '+fmt(r[3])+'\naleatoric  '+fmt(r[4])+'\nepistemic  '+fmt(r[5])+
            (r[6]!==null?'\n90% interval of p  ['+fmt(r[6])+', '+fmt(r[7])+']':'')+'\n'+mode+' of log p  '+fmt(shade(r,mode));
          tip.hidden=false;var x=e.clientX+12,y=e.clientY+12;if(x+260>innerWidth)x=Math.max(0,innerWidth-260);if(y+110>innerHeight)y=e.clientY-110;
          tip.style.left=x+'px';tip.style.top=y+'px';}
        var selected=null;
        document.querySelector('main').addEventListener('mouseover',function(e){if(e.target.classList.contains('t'))show(e,e.target);});
        document.querySelector('main').addEventListener('mouseout',function(e){if(e.target.classList.contains('t')&&!selected)tip.hidden=true;});
        document.querySelector('main').addEventListener('click',function(e){if(selected)selected.classList.remove('sel');
          if(e.target.classList.contains('t')&&e.target!==selected){selected=e.target;selected.classList.add('sel');show(e,selected);}else{selected=null;tip.hidden=true;}});
        document.getElementById('mode').addEventListener('change',function(e){apply(e.target.value);});
        var h=/mode=(\w+)/.exec(location.hash);if(h&&d.ranges[h[1]]){apply(h[1]);document.querySelector('input[value='+h[1]+']').checked=true;}
        document.body.dataset.tokens=spans.length;document.body.dataset.loadMs=Math.round(performance.now());
        })();
        """;
}

using FisherKernels.IO;
using FisherKernels.Uncertainty;
using ScottPlot;

namespace FisherKernels.Cli.Demo;

/// <summary>The demo's PNG figures (ScottPlot), written atomically.</summary>
internal static class DemoPlots
{
    /// <summary>
    /// Per-token uncertainty over a text: the epistemic score of log p (epistemic / p², see
    /// <see cref="DemoReport.LogPScore"/>) as bars on a log axis, coloured by which part of the text the
    /// predicted byte belongs to, and the aleatoric score as a line (right axis), one tick per predicted byte.
    /// </summary>
    public static void PerToken(string path, string title, ScoreReport scores, int[] part, string[] partNames, string epistemicLabel)
    {
        var scored = scores.Sequences[0].Tokens;
        string[] characters = scored.Select(t => DemoReport.Show(t.Target)).ToArray();
        double[] epistemic = scored.Select(t => Math.Log10(t.Epistemic / (t.P * t.P))).ToArray();
        double[] aleatoric = scored.Select(t => t.Aleatoric).ToArray();
        part = scored.Select(t => part[t.Position]).ToArray();
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        for (int k = 0; k < partNames.Length; k++)
        {
            var bars = new List<Bar>();
            for (int i = 0; i < epistemic.Length; i++)
                if (part[i] == k) bars.Add(new Bar { Position = i, Value = epistemic[i], FillColor = palette.GetColor(k), LineWidth = 0 });
            var series = plot.Add.Bars(bars);
            series.LegendText = $"{epistemicLabel}: {partNames[k]}";
        }
        var positions = Enumerable.Range(0, aleatoric.Length).Select(i => (double)i).ToArray();
        var line = plot.Add.Scatter(positions, aleatoric);
        line.Axes.YAxis = plot.Axes.Right;
        line.Color = Colors.Black;
        line.MarkerSize = 0;
        line.LegendText = "aleatoric p(1-p)";
        plot.Axes.Right.Label.Text = "aleatoric";
        plot.Axes.Left.Label.Text = $"log10 {epistemicLabel}";
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(positions, characters);
        plot.Axes.Bottom.TickLabelStyle.FontName = Fonts.Monospace;
        plot.Axes.Bottom.TickLabelStyle.FontSize = 9;
        plot.Title(title);
        plot.ShowLegend(Alignment.UpperLeft);
        Save(plot, path, 1800, 500);
    }

    /// <summary>Reliability diagram: accuracy against mean confidence per bin, one series per calibration.</summary>
    public static void Reliability(string path, string title, IReadOnlyList<(string Label, ReliabilityBin[] Bins)> series)
    {
        var plot = new Plot();
        var diagonal = plot.Add.Line(0, 0, 1, 1);
        diagonal.LinePattern = LinePattern.Dashed;
        diagonal.Color = Colors.Gray;
        diagonal.LegendText = "perfect calibration";
        foreach (var (label, bins) in series)
        {
            var used = bins.Where(b => b.Count > 0).ToArray();
            var scatter = plot.Add.Scatter(used.Select(b => b.MeanConfidence).ToArray(), used.Select(b => b.Accuracy).ToArray());
            scatter.LegendText = label;
            scatter.MarkerSize = 8;
        }
        plot.Axes.SetLimits(0, 1, 0, 1);
        plot.Axes.Bottom.Label.Text = "confidence";
        plot.Axes.Left.Label.Text = "accuracy";
        plot.Title(title);
        plot.ShowLegend(Alignment.UpperLeft);
        Save(plot, path, 700, 650);
    }

    static void Save(Plot plot, string path, int width, int height)
    {
        byte[] png = plot.GetImage(width, height).GetImageBytes(ImageFormat.Png);
        AtomicFile.WriteAllBytes(path, png);
    }
}

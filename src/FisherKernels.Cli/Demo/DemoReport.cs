using Spectre.Console;

namespace FisherKernels.Cli.Demo;

/// <summary>Per-position scores of one estimator over the targeted positions of some windows, flattened.</summary>
internal sealed record TokenScores(string Estimator, double[] P, double[] Epistemic, double[] Aleatoric)
{
    /// <summary>Total predictive variance of the event "next token = target": E[p(1−p)] + Var[p] (law of total variance).</summary>
    public double[] Combined => Sum(Epistemic, Aleatoric);

    public static double[] Sum(double[] a, double[] b) => a.Select((x, i) => x + b[i]).ToArray();
}

/// <summary>Per-sequence scores of one estimator (SPEC §4: epistemic of p̄, mean aleatoric).</summary>
internal sealed record SequenceScores(string Estimator, double[] Epistemic, double[] Aleatoric)
{
    public double[] Combined => TokenScores.Sum(Epistemic, Aleatoric);
}

/// <summary>What the demo prints: the per-token table and the summary lines.</summary>
internal static class DemoReport
{
    /// <summary>A byte as it reads in a table: printable ASCII as itself, the rest escaped.</summary>
    public static string Show(long token) => token switch
    {
        (byte)' ' => "␠",
        (byte)'\n' => "\\n",
        (byte)'\t' => "\\t",
        >= 33 and < 127 => ((char)token).ToString(),
        _ => $"\\x{token:x2}",
    };

    /// <summary>
    /// One row per position of the example: the byte predicted there (the target), its
    /// probability, aleatoric score and the epistemic score of each estimator.
    /// </summary>
    public static void PrintTokenTable(string title, ReadOnlySpan<long> targets, IReadOnlyList<TokenScores> estimators)
    {
        var table = new Table().Title(Markup.Escape(title)).Border(TableBorder.Simple);
        table.AddColumn(new TableColumn("pos").RightAligned());
        table.AddColumn("token");
        table.AddColumn(new TableColumn("p").RightAligned());
        table.AddColumn(new TableColumn("aleatoric").RightAligned());
        foreach (var e in estimators) table.AddColumn(new TableColumn($"epistemic ({e.Estimator})").RightAligned());
        for (int i = 0; i < targets.Length; i++)
        {
            var cells = new List<string> { $"{i + 1}", Markup.Escape(Show(targets[i])), $"{estimators[0].P[i]:F3}", $"{estimators[0].Aleatoric[i]:F4}" };
            cells.AddRange(estimators.Select(e => $"{e.Epistemic[i]:E2}"));
            table.AddRow(cells.ToArray());
        }
        AnsiConsole.Write(table);
    }

    /// <summary>One line: what is told apart, by which estimator and score, and the AUROC.</summary>
    public static string AurocLine(string task, string estimator, string score, double auroc) =>
        $"AUROC  {task,-34} {estimator,-10} {score,-10} {auroc:F3}";

    public static string EceLine(string estimator, string score, double before, double beta, double after) =>
        $"ECE    {"next-token top-1 confidence",-34} {estimator,-10} {score,-10} before {before:F4}  after β={beta:G3}: {after:F4}";
}

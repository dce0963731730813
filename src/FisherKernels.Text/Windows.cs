namespace FisherKernels.Text;

/// <summary>
/// One window of a long sequence (SPEC §1): tokens [Start, Start + Length) run together; the targeted positions
/// [ScoredFrom, ScoredTo) (sequence coordinates) are scored, and fitted, in this window and no other.
/// </summary>
public readonly record struct Window(int Start, int Length, int ScoredFrom, int ScoredTo)
{
    public int End => Start + Length;
}

/// <summary>
/// Windows over a sequence longer than the model's context: starts 0, S, 2S, … and a last window ending at the sequence's
/// end (start max(0, n − N)); every position scored once, in the window that gives it the most left context (the first
/// window that holds it), as sliding-window perplexity does.
/// </summary>
public static class WindowPlan
{
    public static IReadOnlyList<Window> Plan(int length, int context, int stride)
    {
        if (length < 1) throw new ArgumentOutOfRangeException(nameof(length), "a sequence has at least one token");
        if (context < 1) throw FisherKernelsException.Argument($"--context must be at least 1, got {context}");
        if (stride < 1 || stride > context) throw FisherKernelsException.Argument($"--stride must be 1..{context} (the context), got {stride}");
        if (length <= context) return [new Window(0, length, 0, length)];
        var starts = new List<int>();
        for (int s = 0; s + context < length; s += stride) starts.Add(s);
        starts.Add(length - context);
        var windows = new List<Window>(starts.Count);
        int scored = 0;
        foreach (int s in starts)
        {
            // Positions not yet scored are those past the previous window's end: this window is the first to hold them.
            windows.Add(new Window(s, context, scored, s + context));
            scored = s + context;
        }
        return windows;
    }

    /// <summary>
    /// The targets of <paramref name="window"/> from the sequence's <paramref name="targets"/>: positions outside its scored
    /// range get -100 (no loss), so each targeted position counts in one window only.
    /// </summary>
    public static long[] WindowTargets(ReadOnlySpan<long> targets, Window window, long ignore = -100)
    {
        var result = new long[window.Length];
        for (int i = 0; i < window.Length; i++)
        {
            int t = window.Start + i;
            result[i] = t >= window.ScoredFrom && t < window.ScoredTo ? targets[t] : ignore;
        }
        return result;
    }
}

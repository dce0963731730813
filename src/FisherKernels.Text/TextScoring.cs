using FisherKernels.Onnx.Jobs;
using FisherKernels.Text.Tokenization;
using FisherKernels.Uncertainty;

namespace FisherKernels.Text;

/// <summary>
/// <c>score --text</c> (SPEC §1, §6): each sequence at its own length, window by window (<see cref="WindowPlan"/>), every
/// targeted position scored once in the window that gives it the most left context; the tokens carry the target token's
/// text and span.
/// </summary>
public static class TextScoring
{
    /// <summary>The next-token targets of a tokenized text: token t+1 at position t, none at the last.</summary>
    public static long[] NextTokenTargets(TokenizedText text)
    {
        var targets = new long[text.Count];
        for (int t = 0; t < text.Count; t++) targets[t] = t + 1 < text.Count ? text.Ids[t + 1] : -100;
        return targets;
    }

    /// <summary>
    /// Scores <paramref name="sequences"/> against <paramref name="targets"/> (per sequence, one per token; null: the next
    /// token). With next-token targets a position's text is the next token's; with given targets it is the position's own
    /// token span and the target's decoded text.
    /// </summary>
    public static ScoreReport Score(ScoreService service, TextTokenizer tokenizer, IReadOnlyList<TokenizedText> sequences,
                                    IReadOnlyList<long[]>? targets, Func<int, IReadOnlyList<Window>> windows, ScoreOptions options)
    {
        var result = new List<SequenceScore>(sequences.Count);
        ScoreReport? last = null;
        for (int i = 0; i < sequences.Count; i++)
        {
            var text = sequences[i];
            long[] sequenceTargets = targets?[i] ?? NextTokenTargets(text);
            var tokens = new List<TokenScore>();
            var plan = windows(i);
            double epistemic = double.NaN;
            foreach (var window in plan)
            {
                var windowTokens = new NdArray<long>(1, window.Length);
                for (int k = 0; k < window.Length; k++) windowTokens.Data[k] = text.Ids[window.Start + k];
                var windowTargets = new NdArray<long>([1, window.Length], WindowPlan.WindowTargets(sequenceTargets, window));
                last = service.Score(windowTokens, windowTargets, options);
                var scored = last.Sequences[0];
                if (plan.Count == 1) epistemic = scored.Epistemic;
                foreach (var token in scored.Tokens)
                {
                    int t = window.Start + token.Position;
                    tokens.Add(token with { Position = t, Text = TextOf(tokenizer, text, t, token.Target, next: targets is null) });
                }
            }
            if (plan.Count > 1) epistemic = service.SequenceEpistemic(plan.Select(w => (Tokens: Slice(text, w), Targets: WindowPlan.WindowTargets(sequenceTargets, w))).ToList(), options);
            result.Add(new SequenceScore(i, tokens, epistemic));
        }
        return new ScoreReport(last!.Model, last.Method, last.PriorPrecision, result);
    }

    static NdArray<long> Slice(TokenizedText text, Window window)
    {
        var tokens = new NdArray<long>(1, window.Length);
        for (int k = 0; k < window.Length; k++) tokens.Data[k] = text.Ids[window.Start + k];
        return tokens;
    }

    static TokenText TextOf(TextTokenizer tokenizer, TokenizedText text, int position, long target, bool next)
    {
        int index = next ? position + 1 : position;
        string shown = next ? text.TokenText(index) : tokenizer.Decode([(int)target]);
        return new TokenText(shown, text.Starts[index], text.Ends[index]);
    }
}

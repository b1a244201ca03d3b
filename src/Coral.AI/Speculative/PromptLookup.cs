namespace Coral.AI;

/// <summary>
/// Draft tokens for free from the sequence itself (prompt lookup, n-gram drafting): where the last n tokens occurred
/// before, the tokens that followed them then are proposed now. Text that copies its context — a quoted passage, a
/// name, code being edited, or a small model repeating itself — is drafted without a draft model's forward; the target
/// verifies the proposal as a chain like any draft, so acceptance stays exact.
/// </summary>
internal static class PromptLookup
{
    /// <summary>The longest n-gram matched; shorter ones are used when it has no earlier occurrence.</summary>
    public const int MaxNgram = 3;

    /// <summary>
    /// Finds the most recent earlier occurrence of the sequence's last n tokens, for the largest n ≤
    /// <see cref="MaxNgram"/> that has one (the sequence is <paramref name="context"/> followed by <paramref name="last"/>),
    /// and writes the tokens that followed it into <paramref name="continuation"/>, filling it: where the copy reaches
    /// the end of the sequence it goes on with what it copied (a repeating pattern is proposed to full length).
    /// </summary>
    /// <returns>The n of the match and the number of tokens written; (0, 0) when <paramref name="last"/> never occurred
    /// before or <paramref name="continuation"/> is empty.</returns>
    public static (int Ngram, int Count) Find(ReadOnlySpan<int> context, int last, Span<int> continuation)
    {
        if (continuation.IsEmpty)
        {
            return (0, 0);
        }

        // One scan from the right over the occurrences of `last`: the first with a match of MaxNgram ends it; the first
        // of each shorter match length is kept for when no longer match exists.
        Span<int> endOf = stackalloc int[MaxNgram + 1];
        endOf.Fill(-1);
        for (int e = context.LastIndexOf(last); e >= 0; e = e == 0 ? -1 : context[..e].LastIndexOf(last))
        {
            int n = 1;
            while (n < MaxNgram && e - n >= 0 && context[e - n] == context[^n])
            {
                n++;
            }

            if (endOf[n] < 0)
            {
                endOf[n] = e;
            }

            if (n == MaxNgram)
            {
                break;
            }
        }

        for (int n = MaxNgram; n >= 1; n--)
        {
            int e = endOf[n];
            if (e < 0)
            {
                continue;
            }

            // Copy from e + 1 on: context, then `last`, then what was copied (an overlapping copy, as in LZ77).
            for (int j = 0; j < continuation.Length; j++)
            {
                int i = e + 1 + j;
                continuation[j] = i < context.Length ? context[i] : i == context.Length ? last : continuation[i - context.Length - 1];
            }

            return (n, continuation.Length);
        }

        return (0, 0);
    }
}

namespace Coral.AI;

/// <summary>One generation: the prompt ids, how to sample, when to stop.</summary>
/// <param name="PromptIds">The prompt's token ids.</param>
/// <param name="Sampling">How to pick tokens.</param>
/// <param name="MaxNewTokens">The output cap.</param>
/// <param name="StopSequences">Texts that end generation (not emitted).</param>
/// <param name="StopTokenIds">Extra token ids that end generation like EOS (a chat template's turn terminator).</param>
internal sealed record GenerationRequest(
    IReadOnlyList<int> PromptIds,
    SamplingParameters Sampling,
    int MaxNewTokens,
    IReadOnlyList<string> StopSequences,
    IReadOnlyList<int>? StopTokenIds = null)
{
    /// <summary>Gets whether to decode speculatively when the engine has a drafter.</summary>
    public bool Speculative { get; init; } = true;

    /// <summary>Gets the draft tree for this request, or null for the engine's default.</summary>
    public TreeShape? Tree { get; init; }

    /// <summary>Gets how many tokens a prompt-lookup proposal has for this request (0 = off), or null for the engine's
    /// default.</summary>
    public int? PromptLookupTokens { get; init; }

    /// <summary>Gets what the output must be (JSON, a forced tool call), or null for free text. Constrained requests decode plainly.</summary>
    public OutputConstraint? Constraint { get; init; }
}

/// <summary>Why generation ended.</summary>
internal enum GenerationFinish
{
    Stop,
    Length,
}

/// <summary>Counters of a speculative run (null for plain decoding).</summary>
/// <param name="Cycles">Draft-verify cycles (target forwards after the prefill).</param>
/// <param name="AcceptedTokens">Tokens emitted by the cycles: accepted draft tokens plus one bonus token per cycle.</param>
/// <param name="DraftTokens">Draft tokens proposed for verification (tree nodes below the root).</param>
/// <param name="DraftTime">Time spent drafting.</param>
/// <param name="VerifyTime">Time spent in target verification forwards (logits read back included).</param>
/// <param name="AcceptedDrafted">Cycles by how many drafted tokens they accepted: element j counts the cycles that
/// accepted exactly j (bonus token excluded).</param>
internal sealed record SpeculativeStats(int Cycles, int AcceptedTokens, int DraftTokens, TimeSpan DraftTime, TimeSpan VerifyTime, IReadOnlyList<int> AcceptedDrafted)
{
    /// <summary>Gets the plain one-token steps the adaptive depth chose instead of cycles (target forwards too; their
    /// tokens are not in <see cref="AcceptedTokens"/>).</summary>
    public int PlainSteps { get; init; }

    /// <summary>Gets the time spent in those plain steps.</summary>
    public TimeSpan PlainTime { get; init; }

    /// <summary>Gets the cycles that verified a prompt-lookup proposal instead of a draft (counted in
    /// <see cref="Cycles"/>, not in <see cref="AcceptedDrafted"/>).</summary>
    public int LookupCycles { get; init; }

    /// <summary>Gets the proposal tokens those cycles accepted (bonus tokens excluded).</summary>
    public int LookupAcceptedTokens { get; init; }

    /// <summary>Gets whether the drafter took part (false: prompt lookup and plain steps only — an engine without a
    /// drafter, or one whose drafter last measured slower than plain steps for this kind of request).</summary>
    public bool UsedDrafter { get; init; }

    /// <summary>Gets the time spent in prompt-lookup cycles.</summary>
    public TimeSpan LookupTime { get; init; }

    /// <summary>Gets the speculative loop's whole time (drafter cycles, lookup cycles, plain steps, catch-ups).</summary>
    public TimeSpan LoopTime { get; init; }

    /// <summary>Gets whether the drafter's cycles, as run, yielded fewer tokens per second than the plain steps of the
    /// same loop (false when either was not measured): their tokens over the loop's time that neither plain steps nor
    /// lookup cycles took.</summary>
    public bool DraftCyclesLosing
    {
        get
        {
            int draftCycles = Cycles - LookupCycles;
            int draftTokens = AcceptedTokens - LookupCycles - LookupAcceptedTokens;
            double draftSeconds = (LoopTime - PlainTime - LookupTime).TotalSeconds;
            return draftCycles > 0 && PlainSteps > 0 && draftSeconds > 0
                && draftTokens / draftSeconds < PlainSteps / PlainTime.TotalSeconds;
        }
    }

    public double MeanAcceptedLength => Cycles == 0 ? 0 : (double)AcceptedTokens / Cycles;

    /// <summary>The counters of two parts of one request added (runs of the engine's loop and of the batch: continuous
    /// batching hands a lone request to the engine and takes it back); null when both are.</summary>
    public static SpeculativeStats? Sum(SpeculativeStats? a, SpeculativeStats? b)
    {
        if (a is null || b is null)
        {
            return a ?? b;
        }

        var acceptedDrafted = new int[Math.Max(a.AcceptedDrafted.Count, b.AcceptedDrafted.Count)];
        for (int i = 0; i < acceptedDrafted.Length; i++)
        {
            acceptedDrafted[i] = a.AcceptedDrafted.ElementAtOrDefault(i) + b.AcceptedDrafted.ElementAtOrDefault(i);
        }

        return new SpeculativeStats(a.Cycles + b.Cycles, a.AcceptedTokens + b.AcceptedTokens, a.DraftTokens + b.DraftTokens,
            a.DraftTime + b.DraftTime, a.VerifyTime + b.VerifyTime, acceptedDrafted)
        {
            PlainSteps = a.PlainSteps + b.PlainSteps, PlainTime = a.PlainTime + b.PlainTime, LookupCycles = a.LookupCycles + b.LookupCycles,
            LookupAcceptedTokens = a.LookupAcceptedTokens + b.LookupAcceptedTokens, UsedDrafter = a.UsedDrafter || b.UsedDrafter,
            LookupTime = a.LookupTime + b.LookupTime, LoopTime = a.LoopTime + b.LoopTime,
        };
    }
}

/// <summary>The outcome of a generation.</summary>
internal sealed record GenerationResult(
    IReadOnlyList<int> TokenIds,
    string Text,
    int PromptTokens,
    int CachedPromptTokens,
    GenerationFinish Finish,
    TimeSpan PrefillTime,
    TimeSpan DecodeTime,
    TimeSpan TimeToFirstToken,
    int TargetForwardPasses,
    SpeculativeStats? Speculative);

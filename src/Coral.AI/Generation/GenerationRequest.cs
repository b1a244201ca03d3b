namespace Coral.AI;

/// <summary>One generation: the prompt ids, how to sample, when to stop.</summary>
internal sealed record GenerationRequest(
    IReadOnlyList<int> PromptIds,
    SamplingParameters Sampling,
    int MaxNewTokens,
    IReadOnlyList<string> StopSequences);

/// <summary>Why generation ended.</summary>
internal enum GenerationFinish
{
    Stop,
    Length,
}

/// <summary>Counters of a speculative run (null for plain decoding).</summary>
internal sealed record SpeculativeStats(int Cycles, int AcceptedTokens, int DraftTokens)
{
    public double MeanAcceptedLength => Cycles == 0 ? 0 : (double)AcceptedTokens / Cycles;
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

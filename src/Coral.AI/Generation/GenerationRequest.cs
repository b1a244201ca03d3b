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
    IReadOnlyList<int>? StopTokenIds = null);

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

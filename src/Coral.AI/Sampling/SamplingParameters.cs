namespace Coral.AI;

/// <summary>How one request turns logits into tokens. Temperature 0 means greedy.</summary>
internal sealed record SamplingParameters
{
    public float Temperature { get; init; }
    public float? TopP { get; init; }
    public int? TopK { get; init; }
    public float? MinP { get; init; }

    /// <summary>Gets the OpenAI frequency penalty: logit -= penalty × (times the token was generated so far).</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>Gets the OpenAI presence penalty: logit -= penalty if the token was generated so far.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>Gets the HF/llama.cpp multiplicative repetition penalty over prompt and output (1 = off).</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    public long? Seed { get; init; }

    public bool IsGreedy => Temperature <= 0f;

    /// <summary>Gets whether the token is the raw logits' argmax: greedy with no penalty (the LM head may then be screened,
    /// <see cref="ScreenedHead"/>).</summary>
    public bool IsArgMax => IsGreedy && FrequencyPenalty == 0f && PresencePenalty == 0f && RepetitionPenalty == 1f;

    public static SamplingParameters Greedy { get; } = new() { Temperature = 0f };
}

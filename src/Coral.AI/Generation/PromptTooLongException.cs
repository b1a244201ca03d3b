namespace Coral.AI;

/// <summary>The prompt does not fit in the model's context window together with at least one generated token.</summary>
public sealed class PromptTooLongException : InvalidOperationException
{
    /// <summary>Initializes a new instance of the <see cref="PromptTooLongException"/> class.</summary>
    /// <param name="promptTokens">The number of prompt tokens.</param>
    /// <param name="contextLength">The usable context length.</param>
    public PromptTooLongException(int promptTokens, int contextLength)
        : base($"The prompt has {promptTokens} tokens but the context holds {contextLength} (prompt plus at least one generated token). Shorten the conversation or raise CoralChatClientOptions.ContextLength.")
    {
        PromptTokens = promptTokens;
        ContextLength = contextLength;
    }

    /// <summary>Gets the number of prompt tokens.</summary>
    public int PromptTokens { get; }

    /// <summary>Gets the usable context length.</summary>
    public int ContextLength { get; }
}

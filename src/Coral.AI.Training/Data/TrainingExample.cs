namespace Coral.AI.Training;

/// <summary>One training sequence: token ids and which of them the loss looks at (assistant tokens, or all for plain text).</summary>
/// <param name="Ids">The token ids.</param>
/// <param name="LossMask">1 where the loss counts.</param>
internal sealed record TrainingExample(int[] Ids, byte[] LossMask)
{
    /// <summary>The JSONL line's <c>"kind"</c> (e.g. <c>definition</c>, <c>faq</c>) where it has one.</summary>
    public string? Kind { get; init; }
}

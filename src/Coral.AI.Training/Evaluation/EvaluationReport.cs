namespace Coral.AI.Training;

/// <summary>A held-out evaluation: sequences read and the scores over all of them (<see cref="All"/>) and per JSONL
/// <c>"kind"</c>.</summary>
internal sealed record EvaluationReport(int Sequences, IReadOnlyDictionary<string, EvaluationScore> Scores)
{
    /// <summary>The key of the score over every sequence.</summary>
    public const string All = "all";
}

namespace Coral.AI.Training;

/// <summary>Summed next-token loss (nats), top-1 hits and scored tokens; adds up over sequences.</summary>
internal readonly record struct EvaluationScore(double Loss, long Hits, long Tokens)
{
    /// <summary>Mean loss per scored token (nats).</summary>
    public double MeanLoss => Tokens == 0 ? double.NaN : Loss / Tokens;

    /// <summary>exp of the mean loss.</summary>
    public double Perplexity => Math.Exp(MeanLoss);

    /// <summary>How often the most likely token was the next one.</summary>
    public double Accuracy => Tokens == 0 ? double.NaN : (double)Hits / Tokens;

    public static EvaluationScore operator +(EvaluationScore a, EvaluationScore b) => new(a.Loss + b.Loss, a.Hits + b.Hits, a.Tokens + b.Tokens);
}

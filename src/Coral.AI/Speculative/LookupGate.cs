namespace Coral.AI;

/// <summary>
/// Decides whether a prompt-lookup proposal (<see cref="PromptLookup"/>) is worth verifying: it keeps, per n-gram
/// length of the match, a running mean of the proposal tokens the target accepted, and the median cost of a lookup
/// cycle, and uses a proposal when its expected tokens per millisecond, (1 + accepted) / cost, are at least what the
/// alternative (the depth controller's choice: a draft cycle or a plain step) is expected to yield; the first
/// <see cref="DepthController.PlainProbes"/> proposals are always verified, so that the cost is a median of several
/// (the first one pays for compilation and would shut lookups off on its own). A proposal that
/// does not pay is still verified once in <see cref="ExploreEvery"/> times, so that the estimate can come back when the
/// text turns repetitive.
/// </summary>
internal sealed class LookupGate
{
    /// <summary>One skipped proposal in this many (per n-gram length) is verified anyway.</summary>
    public const int ExploreEvery = 16;

    private const double Rate = 0.1;
    private readonly double[] _accepted = new double[PromptLookup.MaxNgram + 1];
    private readonly int[] _seen = new int[PromptLookup.MaxNgram + 1];
    private readonly int[] _skipped = new int[PromptLookup.MaxNgram + 1];
    private readonly RecentMedian _cost = new(DepthController.PlainWindow);
    private double _costMs = -1;
    private int _observed;

    private readonly int _probes;

    /// <param name="probes">How many first proposals are verified whatever the estimates (int.MaxValue: every one, for
    /// tests that must exercise the lookup path).</param>
    public LookupGate(int probes = DepthController.PlainProbes)
    {
        _probes = probes;
        Array.Fill(_accepted, 1.0);   // the prior, counted as one observation
    }

    /// <summary>The mean accepted proposal tokens of matches of each n-gram length (index 0 unused).</summary>
    public IReadOnlyList<double> Accepted => _accepted;

    /// <summary>Whether to verify a proposal from a match of <paramref name="ngram"/> tokens, against an alternative
    /// expected to yield <paramref name="alternativeRate"/> tokens per millisecond (0 or less: unknown, use it).</summary>
    public bool Use(int ngram, double alternativeRate)
    {
        if (_observed < _probes || alternativeRate <= 0 || (1 + _accepted[ngram]) / _costMs >= alternativeRate)
        {
            _skipped[ngram] = 0;
            return true;
        }

        return ++_skipped[ngram] % ExploreEvery == 0;
    }

    /// <summary>Records a verified proposal: its match length, the proposal tokens accepted (bonus excluded) and what
    /// the cycle cost.</summary>
    public void Observe(int ngram, int accepted, double ms)
    {
        _accepted[ngram] += Math.Max(Rate, 1.0 / (_seen[ngram]++ + 2)) * (accepted - _accepted[ngram]);
        _costMs = _cost.Add(ms);
        _observed++;
    }
}

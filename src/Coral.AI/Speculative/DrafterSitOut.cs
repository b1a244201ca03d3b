namespace Coral.AI;

/// <summary>
/// Which requests run without a drafter that measured slower than plain steps, per kind of request (0 greedy, 1
/// sampled): after a request in which it lost, the next ones of that kind sit it out, and every
/// <see cref="RecheckEvery"/>-th speculates again to re-measure. A re-check that loses again doubles the wait, up to
/// <see cref="RecheckLimit"/> requests; one that wins (or any request the drafter did not lose) resets it.
/// </summary>
/// <remarks>
/// Why the doubling: a re-check request runs the drafter's cycles until the depth controller has timed enough of them
/// to fall back to plain steps, and catches the drafter up on the whole prompt first. On the demo pair a fixed one in
/// eight re-checked 6 of 48 benchmark requests and cost 2–3% of the run where the drafter never wins (greedy without
/// lookup 0.96–0.97× plain, 0.98–0.99× with the doubling, which re-checked 2) and more where a losing re-check crowds out
/// lookup cycles (the default greedy engine 1.24–1.33× against 1.31–1.45×). Doubling makes that cost fade (re-checks
/// after 8, 24, 56, 120, … requests) while a drafter that starts winning — a workload it can copy, a better drafter —
/// comes back at the next re-check. The depth controller's re-tries of cycles within a request follow the same rule.
/// </remarks>
internal sealed class DrafterSitOut
{
    private readonly bool[] _loses = new bool[2];
    private readonly int[] _since = new int[2];
    private readonly int[] _wait = new int[2];   // the current re-check interval (0: RecheckEvery)

    /// <summary>Gets or sets the first re-check interval in requests (0 = never sit out).</summary>
    public int RecheckEvery { get; set; } = 8;

    /// <summary>Gets or sets the longest re-check interval the doubling reaches.</summary>
    public int RecheckLimit { get; set; } = 64;

    /// <summary>Whether the next request of <paramref name="kind"/> runs without the drafter (counts it).</summary>
    public bool Skip(int kind)
    {
        if (!_loses[kind] || RecheckEvery <= 0)
        {
            return false;
        }

        if (++_since[kind] < Interval(kind))
        {
            return true;
        }

        _since[kind] = 0;
        return false;
    }

    /// <summary>Records how a request of <paramref name="kind"/> that used the drafter ended: whether it lost to
    /// plain steps.</summary>
    public void Observe(int kind, bool loses)
    {
        bool recheck = _loses[kind] && RecheckEvery > 0;   // it had lost before and still ran: a re-check (not "never sit out")
        _wait[kind] = loses && recheck ? Math.Min(2 * Interval(kind), Math.Max(RecheckLimit, RecheckEvery)) : 0;
        _loses[kind] = loses;
        _since[kind] = 0;
    }

    private int Interval(int kind) => Math.Max(_wait[kind], RecheckEvery);
}

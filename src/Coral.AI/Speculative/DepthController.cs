namespace Coral.AI;

/// <summary>
/// Chooses the draft depth of each speculation cycle from the acceptance observed so far, so that a drafter that is
/// rarely right past depth 2 does not pay for five draft forwards. It keeps, per depth j, an exponential moving average
/// of r_j = P(at least j drafted tokens accepted), and the cost of one draft step (s) and of a verification at each depth
/// (v_D: a deeper tree verifies more rows, which on a CPU costs arithmetic), each the median of its latest
/// <see cref="PlainWindow"/> measurements; the next depth maximises the expected tokens per millisecond
/// (1 + Σ_{j≤D} r_j) / (D·s + v_D). A depth whose verification was never timed takes the nearest timed depth's cost,
/// scaled by the ratio of the two in a prior (the engine's load-time timing of each tree size), or unscaled without
/// one. Depths never
/// drafted are estimated geometrically from the deepest drafted level's conditional acceptance r_D / r_{D−1}, and every
/// <see cref="ExploreEvery"/> cycles one level deeper than the choice is tried, so a depth that was cut can come back.
/// With a plain fallback, depth 0 means a plain one-token step: it is chosen when the measured plain step (p, the median
/// of the latest <see cref="PlainWindow"/>) yields more tokens per millisecond (1/p) than the best depth. After
/// <see cref="ExploreEvery"/> plain steps one speculative cycle is tried again; the wait doubles (up to
/// <see cref="MaxPlainRun"/>) each time that cycle yields fewer tokens per millisecond than plain steps, since a losing
/// cycle costs several plain steps, and each try drafts one level past what the previous one accepted. While
/// speculating, every other exploration is a plain step, so that neither estimate goes stale (one slow measurement must
/// not decide a whole run). The tree shape changes only; acceptance stays exact (lossless), whatever the depth.
/// </summary>
internal sealed class DepthController
{
    /// <summary>One cycle in this many drafts one level deeper than the current choice.</summary>
    public const int ExploreEvery = 16;

    /// <summary>The plain-step cost is the median of this many latest plain steps (one slow step — a JIT compilation, a
    /// machine hiccup — must not decide a run).</summary>
    public const int PlainWindow = 9;

    /// <summary>Plain steps measured at the start (steps 2..), before the first decision uses their median.</summary>
    public const int PlainProbes = 3;

    /// <summary>The longest run of plain steps between two exploration cycles.</summary>
    public const int MaxPlainRun = 128;

    private const double Rate = 0.1;
    private readonly double[] _reach;
    private readonly int[] _seen;
    // Costs: medians of the latest PlainWindow measurements each, so that one slow sample (a first call's compilation, a
    // machine hiccup) neither starts nor sways an estimate.
    private readonly RecentMedian _step = new(PlainWindow), _other = new(PlainWindow), _plain = new(PlainWindow);
    private readonly RecentMedian[] _verify;   // per depth (index 0 unused)
    private readonly double[] _verifyMs;       // per depth; −1 = not timed yet
    private readonly Func<int, double>? _verifyPrior;
    private double _stepMs = -1, _otherMs = -1, _plainMs = -1;
    private int _cycles, _plainSeen;
    private int _plainRun, _plainRunLimit = ExploreEvery;   // plain steps since the last cycle, and how many to wait
    private int _exploreDepth = 1;                          // the depth of the next cycle tried out of plain steps

    /// <param name="maxDepth">The deepest tree (the configured shape's depth).</param>
    /// <param name="plainFallback">Whether depth 0 (a plain step) may be chosen; its cost is measured by
    /// <see cref="PlainProbes"/> plain steps early on (after the first cycle) and by every plain step after that.</param>
    /// <param name="verifyPrior">Optional: the relative verification cost at each depth (any unit; only ratios are used),
    /// for depths not timed yet; without it they take the nearest timed depth's cost.</param>
    public DepthController(int maxDepth, bool plainFallback = false, Func<int, double>? verifyPrior = null)
    {
        MaxDepth = maxDepth;
        PlainFallback = plainFallback;
        _verifyPrior = verifyPrior;
        _reach = new double[maxDepth + 1];
        _seen = new int[maxDepth + 1];
        _verify = Enumerable.Range(0, maxDepth + 1).Select(_ => new RecentMedian(PlainWindow)).ToArray();
        _verifyMs = Enumerable.Repeat(-1.0, maxDepth + 1).ToArray();
        for (int j = 1; j <= maxDepth; j++)
        {
            _reach[j] = Math.Pow(0.7, j);   // prior until measured
        }

        Depth = maxDepth;
    }

    public int MaxDepth { get; }

    /// <summary>Gets whether depth 0 (a plain step instead of a cycle) may be chosen.</summary>
    public bool PlainFallback { get; }

    /// <summary>The depth chosen for the next cycle (before exploration); 0 = plain steps.</summary>
    public int Depth { get; private set; }

    /// <summary>The depth to draft in the next cycle: <see cref="Depth"/>, or one more on an exploration cycle; 0 means
    /// a plain step (the one that measures the plain cost, or the fallback's choice).</summary>
    public int NextDepth()
    {
        if (PlainFallback && _cycles >= 1 && _plainSeen < PlainProbes && _cycles <= PlainProbes)
        {
            return 0;   // the first probes of the plain cost, right after the first cycle
        }

        if (Depth == 0)
        {
            return _plainRun + 1 < _plainRunLimit ? 0 : _exploreDepth;
        }

        if (_cycles % ExploreEvery != ExploreEvery - 1)
        {
            return Depth;
        }

        // Exploration: one level deeper, or (every other time, while speculating) a plain step.
        bool plainTurn = PlainFallback && Depth > 0 && _cycles / ExploreEvery % 2 == 1;
        return plainTurn ? 0 : Math.Min(MaxDepth, Depth + 1);
    }

    /// <summary>Records a plain step of <paramref name="ms"/> milliseconds (sampling and emission included).</summary>
    public void ObservePlain(double ms)
    {
        _cycles++;
        _plainRun++;
        _plainSeen++;
        _plainMs = _plain.Add(ms);
        Decide();
    }

    /// <summary>The expected tokens per millisecond of the current choice (<see cref="Depth"/>), from the measured costs
    /// and acceptance; 0 until a cycle was measured.</summary>
    public double ExpectedRate { get; private set; }

    /// <summary>The drafter cycles observed so far (every cycle drafts level 1).</summary>
    private int DrafterCycles => _seen[1];

    /// <summary>The estimated P(at least j drafted tokens accepted), j = 1..MaxDepth (index 0 unused).</summary>
    public IReadOnlyList<double> Reach => _reach;

    /// <summary>Records a cycle: the depth drafted, how many drafted tokens were accepted (bonus excluded), and the
    /// measured draft (whole cycle) and verification times, and the rest of the cycle (acceptance, KV compaction,
    /// emission).</summary>
    public void Observe(int depth, int acceptedDrafted, double draftMs, double verifyMs, double otherMs = 0)
    {
        _cycles++;
        for (int j = 1; j <= depth; j++)
        {
            // A running mean over the first observations (the prior counts as one), then a moving average.
            _reach[j] += Math.Max(Rate, 1.0 / (_seen[j]++ + 2)) * ((acceptedDrafted >= j ? 1 : 0) - _reach[j]);
        }

        // Depths never drafted yet: extrapolated with the deepest drafted level's conditional acceptance.
        double ratio = depth >= 2 && _reach[depth - 1] > 0 ? Math.Min(1, _reach[depth] / _reach[depth - 1]) : _reach[1];
        for (int j = depth + 1; j <= MaxDepth && _seen[j] == 0; j++)
        {
            _reach[j] = _reach[j - 1] * ratio;
        }

        if (DrafterCycles > 1)
        {
            // The first cycle's costs are not a cycle's: it pays for the compilation of the drafter's and the verification's
            // code paths (measured 8.8 ms a draft step and 12 ms a verification against 0.14 / 1.5 ms after). Kept, that one
            // sample is the whole estimate, plain steps win, and exploration cycles come too seldom to outvote it.
            _stepMs = _step.Add(draftMs / Math.Max(1, depth));
            _verifyMs[depth] = _verify[depth].Add(verifyMs);
            _otherMs = _other.Add(otherMs);
        }

        bool wasPlain = Depth == 0;
        Decide();
        if (Depth > 0)
        {
            _plainRunLimit = ExploreEvery;
        }
        else if (wasPlain)
        {
            // An exploration cycle out of plain steps that plain steps still beat on average: if it also yielded fewer
            // tokens per millisecond than a plain step, wait twice as long for the next one; if it yielded more, the
            // drafter may be getting better (text it can copy): try again soon, so that the estimates can catch up.
            bool beatPlain = (acceptedDrafted + 1) * _plainMs > draftMs + verifyMs + Math.Max(0, otherMs);
            _plainRunLimit = beatPlain ? ExploreEvery : Math.Min(2 * _plainRunLimit, MaxPlainRun);
        }

        if (wasPlain)
        {
            // The next try drafts one level past what this one had accepted, so deeper levels get measured too.
            _exploreDepth = Math.Min(MaxDepth, acceptedDrafted + 1);
        }

        _plainRun = 0;
    }

    /// <summary>Picks the depth with the most expected tokens per millisecond; 0 when plain steps yield more.</summary>
    private void Decide()
    {
        if (_stepMs < 0)
        {
            return;   // no cycle measured yet
        }

        double best = double.NegativeInfinity, expected = 1;
        int depth = 1;
        for (int d = 1; d <= MaxDepth; d++)
        {
            expected += _reach[d];
            double rate = expected / (d * _stepMs + VerifyAt(d) + Math.Max(0, _otherMs));
            if (rate > best * (1 + 1e-9))
            {
                best = rate;
                depth = d;
            }
        }

        // Plain steps only once PlainProbes cycles are timed (the median then outvotes one slow cycle: the first at each
        // new tree size also pays for code paths run the first time, measured up to 30 ms).
        Depth = PlainFallback && DrafterCycles > PlainProbes && _plainMs > 0 && 1 / _plainMs > best ? 0 : depth;
        ExpectedRate = Depth == 0 ? 1 / _plainMs : best;
    }

    /// <summary>The verification cost at depth <paramref name="d"/>: its own median once timed, else the nearest timed
    /// depth's (the shallower one on a tie), scaled by the prior's ratio between the two depths when there is a prior.
    /// Called once a cycle was timed, so some depth has been.</summary>
    private double VerifyAt(int d)
    {
        if (_verifyMs[d] >= 0)
        {
            return _verifyMs[d];
        }

        int timed = -1;
        for (int offset = 1; timed < 0 && offset < MaxDepth; offset++)
        {
            timed = d - offset >= 1 && _verifyMs[d - offset] >= 0 ? d - offset
                : d + offset <= MaxDepth && _verifyMs[d + offset] >= 0 ? d + offset
                : -1;
        }

        if (timed < 0)
        {
            throw new InvalidOperationException("No verification has been timed yet.");
        }

        double from = _verifyPrior?.Invoke(timed) ?? 0, to = _verifyPrior?.Invoke(d) ?? 0;
        return from > 0 && to > 0 ? _verifyMs[timed] * to / from : _verifyMs[timed];
    }
}

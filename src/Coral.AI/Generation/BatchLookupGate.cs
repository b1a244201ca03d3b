namespace Coral.AI;

/// <summary>
/// Whether a prompt-lookup proposal pays inside a batched forward (<see cref="BatchScheduler"/>). A forward of R rows is
/// modelled as c₀ + c₁·R milliseconds, fitted to the recent decode forwards (their row counts vary with the proposals
/// verified); a proposal of k tokens from an n-gram match whose proposals have yielded a tokens on average adds k rows
/// for a tokens, so it is verified when a / (c₁·k) is at least the batch's own rate B / (c₀ + c₁·B) for its B one-token
/// rows. Where rows cost little beyond the forward's fixed part (a model that streams its weights from memory) proposals
/// pay; where every row costs its arithmetic (a model that sits in the CPU's cache) they pay only if nearly always
/// accepted. Until the fit exists, and for one skipped proposal in <see cref="LookupGate.ExploreEvery"/>, it verifies.
/// </summary>
internal sealed class BatchLookupGate
{
    private const int Window = 64;
    private const double Rate = 0.1;
    private readonly double[] _accepted = new double[PromptLookup.MaxNgram + 1];
    private readonly (double Rows, double Ms)[] _recent = new (double, double)[Window];
    private int _count, _next, _skipped;

    public BatchLookupGate()
    {
        Array.Fill(_accepted, 1.0);   // the prior, as LookupGate's
    }

    /// <summary>Gets or sets whether every proposal is verified (tests that must exercise the path).</summary>
    public bool Always { get; set; }

    /// <summary>The mean accepted tokens of proposals from matches of each n-gram length (index 0 unused).</summary>
    public IReadOnlyList<double> Accepted => _accepted;

    /// <summary>Gets the fitted cost of a forward: fixed milliseconds and milliseconds per row; null until the recent
    /// forwards' row counts vary enough to fit.</summary>
    public (double Fixed, double PerRow)? Cost
    {
        get
        {
            int n = Math.Min(_count, Window);
            if (n < 8)
            {
                return null;
            }

            double mr = 0, mt = 0;
            for (int i = 0; i < n; i++)
            {
                mr += _recent[i].Rows;
                mt += _recent[i].Ms;
            }

            mr /= n;
            mt /= n;
            double vr = 0, cov = 0;
            for (int i = 0; i < n; i++)
            {
                vr += (_recent[i].Rows - mr) * (_recent[i].Rows - mr);
                cov += (_recent[i].Rows - mr) * (_recent[i].Ms - mt);
            }

            if (vr < 0.5 * n)
            {
                return null;   // (nearly) one row count: nothing to fit a slope to
            }

            double perRow = Math.Max(cov / vr, 1e-6);
            return (Math.Max(mt - (perRow * mr), 0), perRow);
        }
    }

    /// <summary>Whether to verify a proposal of <paramref name="tokens"/> tokens from a match of <paramref name="ngram"/>
    /// tokens in a forward with <paramref name="batchRows"/> one-token rows.</summary>
    public bool Use(int ngram, int tokens, int batchRows)
    {
        if (Always || Cost is not { } c)
        {
            return true;
        }

        double marginal = _accepted[ngram] / (c.PerRow * tokens), average = batchRows / (c.Fixed + (c.PerRow * batchRows));
        return marginal >= average || ++_skipped % LookupGate.ExploreEvery == 0;
    }

    /// <summary>Records a verified proposal's accepted tokens.</summary>
    public void Observe(int ngram, int accepted) => _accepted[ngram] += Rate * (accepted - _accepted[ngram]);

    /// <summary>Records a decode forward (with its heads): its rows and milliseconds.</summary>
    public void Time(int rows, double ms)
    {
        _recent[_next] = (rows, ms);
        _next = (_next + 1) % Window;
        _count++;
    }
}

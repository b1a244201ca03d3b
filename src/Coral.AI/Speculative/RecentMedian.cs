namespace Coral.AI;

/// <summary>The median of the latest few values added: a cost estimate that one slow sample (a first call's
/// compilation, a machine hiccup) neither starts nor sways.</summary>
internal sealed class RecentMedian
{
    private readonly double[] _ring;
    private readonly double[] _sorted;
    private int _count;

    /// <param name="window">How many of the latest values the median is taken over.</param>
    public RecentMedian(int window)
    {
        _ring = new double[window];
        _sorted = new double[window];
    }

    /// <summary>Adds a value and returns the new median (the lower one of an even count).</summary>
    public double Add(double value)
    {
        _ring[_count++ % _ring.Length] = value;
        int n = Math.Min(_count, _ring.Length);
        Array.Copy(_ring, _sorted, n);
        Array.Sort(_sorted, 0, n);
        return _sorted[(n - 1) / 2];
    }
}

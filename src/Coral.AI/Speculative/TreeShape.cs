namespace Coral.AI;

/// <summary>The EAGLE-2 dynamic tree: <paramref name="Depth"/> draft levels, <paramref name="TopK"/> children per expanded
/// node and beam width, <paramref name="TotalTokens"/> nodes verified (root included).</summary>
/// <param name="Depth">Draft levels below the root (draft forwards per cycle = Depth).</param>
/// <param name="TopK">Candidates per node and nodes kept per level.</param>
/// <param name="TotalTokens">Nodes sent to verification, root included.</param>
/// <param name="RouterTopK">Groups computed per draft step when the drafter has a router; 0 = the full LM head.</param>
internal sealed record TreeShape(int Depth, int TopK, int TotalTokens, int RouterTopK)
{
    public static TreeShape Default { get; } = new(5, 8, 16, -1);

    /// <summary>The most nodes a tree of <paramref name="depth"/> levels with <paramref name="topK"/> children per
    /// expanded node can hold, root included (a beam of top-k: k at the first level, k² candidates at each deeper one).</summary>
    public static int MaxNodes(int depth, int topK) => 1 + topK + ((depth - 1) * topK * topK);

    /// <summary>The nodes verified when a cycle drafts only <paramref name="depth"/> levels of this shape (root included):
    /// all it can hold at that depth, at most <see cref="TotalTokens"/>.</summary>
    public int NodesAt(int depth) => Math.Min(TotalTokens, MaxNodes(depth, TopK));

    public void Validate()
    {
        if (Depth < 1 || TopK < 1 || TotalTokens < 2 || TotalTokens > MaxNodes(Depth, TopK))
        {
            throw new ArgumentException($"Invalid tree: depth {Depth}, top-k {TopK}, total tokens {TotalTokens} (need depth ≥ 1, top-k ≥ 1, 2 ≤ total ≤ 1 + top-k + (depth − 1)·top-k²).");
        }
    }
}

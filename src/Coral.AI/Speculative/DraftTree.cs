using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// A draft tree in topological order: node 0 is the root (the last token the target emitted, not yet in its cache);
/// every other node is a drafted token whose parent comes before it.
/// </summary>
internal sealed class DraftTree
{
    public DraftTree(int[] tokens, int[] parent, float[] scores)
    {
        Tokens = tokens;
        Parent = parent;
        Scores = scores;
        Depth = new int[tokens.Length];
        var children = Enumerable.Range(0, tokens.Length).Select(_ => new List<int>()).ToArray();
        for (int i = 1; i < tokens.Length; i++)
        {
            if (parent[i] < 0 || parent[i] >= i)
            {
                throw new ArgumentException($"Node {i} has parent {parent[i]}; parents must come first.", nameof(parent));
            }

            Depth[i] = Depth[parent[i]] + 1;
            children[parent[i]].Add(i);
        }

        // Most likely first: fewer rejections on the way to the accepted child.
        Children = children.Select(c => c.OrderByDescending(i => scores[i]).ThenBy(i => i).ToArray()).ToArray();
    }

    /// <summary>A chain: each token the only child of the one before (a prompt-lookup proposal after its root).</summary>
    public static DraftTree Chain(int[] tokens) => new(tokens, [.. Enumerable.Range(-1, tokens.Length)], new float[tokens.Length]);

    public int Count => Tokens.Length;

    public int[] Tokens { get; }

    public int[] Parent { get; }

    public int[] Depth { get; }

    /// <summary>Gets the draft's joint log-confidence of each node (0 for the root).</summary>
    public float[] Scores { get; }

    public int[][] Children { get; }

    /// <summary>Gets the ancestor-or-self mask [n, n] (true = node i attends to node j).</summary>
    public Tensor AncestorMask()
    {
        int n = Count;
        var m = new bool[n * n];
        for (int i = 0; i < n; i++)
        {
            for (int a = i; a >= 0; a = a == 0 ? -1 : Parent[a])
            {
                m[i * n + a] = true;
            }
        }

        return torch.tensor(m, [n, n]);
    }

    /// <summary>Gets the rotary positions of the nodes when the root sits at <paramref name="rootPosition"/>.</summary>
    public long[] Positions(int rootPosition) => Depth.Select(d => (long)(rootPosition + d)).ToArray();
}

using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// Builds EAGLE-2 dynamic draft trees: appends the newly accepted (feature, next token) pairs to the drafter's stable
/// cache, expands a beam of top-k nodes level by level (joint log-confidence = sum of log-probabilities along the path),
/// then keeps the best nodes overall as a connected tree. Tree nodes only ever live in temporary cache slots after the
/// stable part, which is restored at the end of every cycle.
/// </summary>
internal sealed class TreeDrafter : IDisposable
{
    private readonly DraftModel _model;
    private float[] _scratch = [];   // TopKOnHost's exponentials

    public TreeDrafter(DraftModel model, int capacity)
    {
        _model = model;
        Cache = model.CreateCache(capacity);
    }

    public DraftModel Model => _model;

    /// <summary>Gets the drafter cache; its length is the number of stable (feature, next token) pairs.</summary>
    public KvCache Cache { get; }

    /// <summary>Forgets stable pairs beyond <paramref name="pairs"/>.</summary>
    public void Truncate(int pairs) => Cache.Length = Math.Min(Cache.Length, Math.Max(pairs, 0));

    /// <summary>Appends (feature, next token) pairs to the stable cache without drafting (plain steps' pairs).</summary>
    public void Feed(Tensor features, long[] nextTokens) => _model.Forward(nextTokens, features, Cache);

    /// <summary>
    /// Feeds <paramref name="features"/> [m, d] with <paramref name="nextTokens"/> (the last one is the root token) and
    /// drafts a tree under the root. Runs inside the caller's dispose scope.
    /// </summary>
    public DraftTree Draft(Tensor features, long[] nextTokens, TreeShape shape)
    {
        int k = shape.TopK;
        Tensor h = _model.Forward(nextTokens, features, Cache);
        int stable = Cache.Length;
        var tokens = new List<int>();
        var parents = new List<int>();   // record index of the parent, −1 = root
        var scores = new List<float>();

        // Level 1: children of the root from the last pair's output.
        var (level1Tokens, level1Lp) = TopKPerRow(h.narrow(0, h.shape[0] - 1, 1), k, shape.RouterTopK);
        int[] frontier = new int[level1Tokens[0].Length];
        for (int j = 0; j < frontier.Length; j++)
        {
            frontier[j] = tokens.Count;
            tokens.Add(level1Tokens[0][j]);
            parents.Add(-1);
            scores.Add(level1Lp[0][j]);
        }

        Tensor frontierHidden = h.narrow(0, h.shape[0] - 1, 1).expand(frontier.Length, -1);
        var ancestors = new bool[frontier.Length, 0];   // frontier rows over temporary slots written so far
        try
        {
            for (int level = 1; level < shape.Depth; level++)
            {
                int f = frontier.Length, covered = ancestors.GetLength(1) + f;
                var mask = new bool[f * covered];
                for (int i = 0; i < f; i++)
                {
                    for (int j = 0; j < ancestors.GetLength(1); j++)
                    {
                        mask[i * covered + j] = ancestors[i, j];
                    }

                    mask[i * covered + ancestors.GetLength(1) + i] = true;
                }

                long[] frontierTokens = frontier.Select(r => (long)tokens[r]).ToArray();
                long[] positions = Enumerable.Repeat((long)(stable + level - 1), f).ToArray();
                Tensor hidden = _model.Forward(frontierTokens, frontierHidden, Cache, positions, torch.tensor(mask, [f, covered]));
                var (childTokens, childLp) = TopKPerRow(hidden, k, shape.RouterTopK);

                // All f·k children are candidates for the final tree; the best k become the next frontier.
                var candidates = new List<(int Record, float Score, int Row)>();
                for (int i = 0; i < f; i++)
                {
                    for (int j = 0; j < childTokens[i].Length; j++)
                    {
                        float score = scores[frontier[i]] + childLp[i][j];
                        candidates.Add((tokens.Count, score, i));
                        tokens.Add(childTokens[i][j]);
                        parents.Add(frontier[i]);
                        scores.Add(score);
                    }
                }

                var next = candidates.OrderByDescending(c => c.Score).ThenBy(c => c.Record).Take(k).ToArray();
                var nextAncestors = new bool[next.Length, covered];
                for (int i = 0; i < next.Length; i++)
                {
                    for (int j = 0; j < covered; j++)
                    {
                        nextAncestors[i, j] = mask[next[i].Row * covered + j];
                    }
                }

                using Tensor rows = torch.tensor(next.Select(c => (long)c.Row).ToArray(), device: hidden.device);
                frontierHidden = hidden.index_select(0, rows);
                frontier = next.Select(c => c.Record).ToArray();
                ancestors = nextAncestors;
            }
        }
        finally
        {
            Cache.Length = stable;   // tree nodes never stay in the drafter's cache
        }

        return Rerank(nextTokens[^1], tokens, parents, scores, shape.TotalTokens);
    }

    public void Dispose() => Cache.Dispose();

    /// <summary>Keeps the best <paramref name="total"/> − 1 records by joint score whose parents are kept, in record order.</summary>
    private static DraftTree Rerank(long root, List<int> tokens, List<int> parents, List<float> scores, int total)
    {
        var kept = new HashSet<int>();
        foreach (int r in Enumerable.Range(0, tokens.Count).OrderByDescending(r => scores[r]).ThenBy(r => r))
        {
            if (kept.Count == total - 1)
            {
                break;
            }

            if (parents[r] < 0 || kept.Contains(parents[r]))
            {
                kept.Add(r);
            }
        }

        int[] order = kept.Order().ToArray();
        var nodeOf = new Dictionary<int, int>();
        var treeTokens = new int[order.Length + 1];
        var treeParents = new int[order.Length + 1];
        var treeScores = new float[order.Length + 1];
        treeTokens[0] = (int)root;
        treeParents[0] = -1;
        for (int i = 0; i < order.Length; i++)
        {
            int r = order[i];
            nodeOf[r] = i + 1;
            treeTokens[i + 1] = tokens[r];
            treeParents[i + 1] = parents[r] < 0 ? 0 : nodeOf[parents[r]];
            treeScores[i + 1] = scores[r];
        }

        return new DraftTree(treeTokens, treeParents, treeScores);
    }

    /// <summary>
    /// Top-k tokens and log-probabilities of each row of draft outputs [R, d], through the router (whose padding columns
    /// are −∞) or the full head. For CPU logits top-k and the log-normaliser run in C# (<see cref="TopKOnHost"/>); elsewhere
    /// in libtorch, and only R·k values come back.
    /// </summary>
    internal (int[][] Tokens, float[][] LogProbs) TopKPerRow(Tensor hidden, int k, int routerTopK)
    {
        // One row (a chain's steps, a tree's first level) streams the head's bytes for itself alone, and the int8 copy
        // halves them: measured on the demo pair (Coral.Bench --profile --draft) a routed step 8–23% and a full-head step
        // 22–28% faster. From four rows up the rows share the bytes and the screen's per-row work costs as much as the
        // exact GEMM's (measured equal or slower), so those stay exact.
        bool approximate = _model.ApproximateLogits && hidden.shape[0] == 1;
        Tensor logits;
        long[]? ids = null;
        if (_model.Router is { } router && routerTopK != 0)
        {
            (logits, ids) = router.Logits(hidden, routerTopK < 0 ? router.TopK : routerTopK, approximate);
        }
        else
        {
            logits = (approximate ? ApproximateLogits(hidden) : null) ?? _model.Target.Logits(hidden);
        }

        int r = (int)logits.shape[0], kk = (int)Math.Min(k, logits.shape[1]);
        if (logits.device_type == DeviceType.CPU && logits.dtype == ScalarType.Float32)
        {
            return TopKOnHost(logits.contiguous(), kk, ids);
        }

        var (values, indices) = logits.topk(kk, dim: 1);
        float[] logProbs = Read<float>(values - logits.logsumexp(1, keepdim: true));
        long[] columns = Read<long>(indices);
        var tokens = new int[r][];
        var rowLogProbs = new float[r][];
        for (int row = 0; row < r; row++)
        {
            // Best first; −∞ entries (padding columns, or fewer finite logits than k) are not candidates.
            int n = 0;
            while (n < kk && !float.IsNegativeInfinity(logProbs[(row * kk) + n]))
            {
                n++;
            }

            tokens[row] = new int[n];
            rowLogProbs[row] = logProbs.AsSpan(row * kk, n).ToArray();
            for (int j = 0; j < n; j++)
            {
                long c = columns[(row * kk) + j];
                tokens[row][j] = (int)(ids is null ? c : ids[c]);
            }
        }

        return (tokens, rowLogProbs);
    }

    /// <summary>
    /// <see cref="TopKPerRow"/> over CPU logits in C#: one pass for the k best (ties to the lower column), one for the
    /// log-normaliser. A few µs for the demo's 1–8 rows of 6k (routed) or 50k columns, where libtorch's topk, logsumexp and
    /// two read-backs cost ≈ 0.15 ms; AggressiveOptimization keeps the tiered JIT from running it slow first.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe (int[][] Tokens, float[][] LogProbs) TopKOnHost(Tensor logits, int k, long[]? ids)
    {
        int rows = (int)logits.shape[0], width = (int)logits.shape[1];
        float* p = CpuKernels.Pointer(logits);
        if (_scratch.Length < width)
        {
            _scratch = new float[width];
        }

        var tokens = new int[rows][];
        var logProbs = new float[rows][];
        var best = new float[k];
        var columns = new int[k];
        for (int row = 0; row < rows; row++)
        {
            var x = new ReadOnlySpan<float>(p + ((long)row * width), width);
            int n = BestK.Select(x, float.NegativeInfinity, best, columns);   // −∞ (padding) is never a candidate

            float logNorm = float.NegativeInfinity;
            if (n > 0)
            {
                Span<float> e = _scratch.AsSpan(0, width);
                TensorPrimitives.Subtract(x, best[0], e);
                TensorPrimitives.Exp(e, e);
                logNorm = best[0] + MathF.Log(TensorPrimitives.Sum(e));
            }

            tokens[row] = new int[n];
            logProbs[row] = new float[n];
            for (int j = 0; j < n; j++)
            {
                tokens[row][j] = (int)(ids is null ? columns[j] : ids[columns[j]]);
                logProbs[row][j] = best[j] - logNorm;
            }
        }

        return (tokens, logProbs);
    }

    /// <summary>The full head's logits of CPU f32 rows [R, d] approximated by the target's int8 screen, or null (no
    /// screen, or a row it cannot scale).</summary>
    private unsafe Tensor? ApproximateLogits(Tensor hidden)
    {
        if (_model.Target.Screen is not { } screen || hidden.device_type != DeviceType.CPU || hidden.dtype != ScalarType.Float32 || hidden.dim() != 2)
        {
            return null;
        }

        using Tensor x = hidden.contiguous();
        int rows = (int)x.shape[0], vocab = _model.Target.Config.VocabSize;
        Tensor logits = torch.empty([rows, vocab], ScalarType.Float32);
        if (screen.TryApproxLogits(CpuKernels.Pointer(x), rows, CpuKernels.Pointer(logits), vocab))
        {
            return logits;
        }

        logits.Dispose();
        return null;
    }

    private static T[] Read<T>(Tensor t)
        where T : unmanaged
    {
        using Tensor host = t.device_type == DeviceType.CPU ? t.contiguous() : t.cpu().contiguous();
        return MemoryMarshal.Cast<byte, T>(host.bytes).ToArray();
    }
}

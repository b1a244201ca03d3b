using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>How the LM-head rows are partitioned into router groups.</summary>
internal enum GroupingMethod
{
    /// <summary>Contiguous id ranges (no permutation: the router reuses the target head's memory).</summary>
    Contiguous,

    /// <summary>Tokens ordered by frequency in the training data, then cut into groups.</summary>
    Frequency,

    /// <summary>Capacity-balanced k-means on the L2-normalised LM-head rows (tokens with similar output vectors together).</summary>
    KMeans,
}

/// <summary>Whose next-token distribution the router learns to cover.</summary>
internal enum RouterLabels
{
    /// <summary>The target's probability mass per group (the tokens a draft should propose).</summary>
    Target,

    /// <summary>The frozen drafter's own full-head probability mass per group (what the routed drafter must keep to
    /// propose what the full-head drafter would).</summary>
    Drafter,
}

/// <summary>Settings of CORAL's stage 2.</summary>
internal sealed record RouterTrainingOptions
{
    public int Groups { get; init; } = 16;
    public int TopK { get; init; } = 2;
    public int Hidden { get; init; } = 64;
    public GroupingMethod Grouping { get; init; } = GroupingMethod.KMeans;
    public int Steps { get; init; } = 200;
    public double LearningRate { get; init; } = 3e-3;
    public int KMeansIterations { get; init; } = 8;
    public int Seed { get; init; }

    /// <summary>Draft steps the examples come from: step j is unrolled on the drafter's own features of steps &lt; j, as
    /// the tree drafts at run time (1 = the teacher-forced step only).</summary>
    public int Depths { get; init; } = 1;

    /// <summary>The distribution whose group mass the router learns.</summary>
    public RouterLabels Labels { get; init; } = RouterLabels.Target;
}

/// <summary>
/// CORAL stage 2 (our reconstruction, method.md §7.5): with the drafter frozen, partition the vocabulary into equal
/// groups, then train a small router (Linear → SiLU → Linear over the draft output) with a soft cross-entropy against the
/// target's probability mass per group. Reports recall@k: how often the target's top-1 token lies in the router's top-k groups.
/// </summary>
internal sealed class RouterTrainer
{
    private readonly TrainableDrafter _drafter;
    private readonly Tensor _embedding;
    private readonly Tensor _head;
    private readonly RouterTrainingOptions _o;

    public RouterTrainer(TrainableDrafter drafter, Tensor embedding, Tensor head, RouterTrainingOptions options)
    {
        _drafter = drafter;
        _embedding = embedding.to(ScalarType.Float32);
        _head = head.to(ScalarType.Float32);
        _o = options;
    }

    /// <summary>The permutation: G·S token ids in group order (−1 = padding).</summary>
    public long[] Partition(IReadOnlyList<FeatureSequence> data)
    {
        int vocab = (int)_head.shape[0], g = _o.Groups, size = (vocab + g - 1) / g;
        long[] order = _o.Grouping switch
        {
            GroupingMethod.Contiguous => Enumerable.Range(0, vocab).Select(i => (long)i).ToArray(),
            GroupingMethod.Frequency => FrequencyOrder(data, vocab),
            _ => KMeansOrder(vocab, g, size),
        };
        return order.Concat(Enumerable.Repeat(-1L, g * size - order.Length)).ToArray();
    }

    private static long[] FrequencyOrder(IReadOnlyList<FeatureSequence> data, int vocab)
    {
        var counts = new long[vocab];
        foreach (FeatureSequence s in data)
        {
            foreach (long id in s.InputIds.data<long>().ToArray())
            {
                counts[id]++;
            }
        }

        return Enumerable.Range(0, vocab).OrderByDescending(i => counts[i]).ThenBy(i => i).Select(i => (long)i).ToArray();
    }

    private long[] KMeansOrder(int vocab, int groups, int size)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor rows = F.normalize(_head, p: 2, dim: -1);
        var generator = new Generator((ulong)_o.Seed + 7);
        Tensor centroids = rows.index_select(0, torch.randperm(vocab, generator: generator).narrow(0, 0, groups));
        int[] assignment = new int[vocab];
        for (int iteration = 0; iteration < _o.KMeansIterations; iteration++)
        {
            float[] sim = rows.matmul(centroids.t()).contiguous().data<float>().ToArray();   // [V, G]
            // Capacity-balanced assignment: most decided rows first, each to its best group with room left.
            int[] byMargin = Enumerable.Range(0, vocab).OrderByDescending(v =>
            {
                var top = sim.AsSpan(v * groups, groups).ToArray().OrderDescending().Take(2).ToArray();
                return top.Length > 1 ? top[0] - top[1] : top[0];
            }).ToArray();
            int[] fill = new int[groups];
            foreach (int v in byMargin)
            {
                int best = Enumerable.Range(0, groups).Where(c => fill[c] < size).MaxBy(c => sim[v * groups + c]);
                assignment[v] = best;
                fill[best]++;
            }

            using Tensor labels = torch.tensor(assignment.Select(a => (long)a).ToArray());
            Tensor sums = torch.zeros(groups, rows.shape[1]).index_add(0, labels, rows, 1);
            centroids = F.normalize(sums, p: 2, dim: -1);
        }

        return Enumerable.Range(0, vocab).OrderBy(v => assignment[v]).ThenBy(v => v).Select(v => (long)v).ToArray();
    }

    /// <summary>Draft outputs h of steps 1 … <see cref="RouterTrainingOptions.Depths"/> (frozen drafter; step j fed its
    /// own features of steps &lt; j, as <see cref="DraftTrainer"/>'s held-out accuracy unrolls them), with the labels' group
    /// mass, the target's top-1 group and the drafter's own top-1 group at every masked position step j really drafts.</summary>
    private List<RouterExample> Examples(IReadOnlyList<FeatureSequence> data, Tensor groupOf)
    {
        var list = new List<RouterExample>();
        using var noGrad = torch.no_grad();
        foreach (FeatureSequence s in data)
        {
            long t = s.InputIds.shape[0];
            if (t < 3)
            {
                continue;
            }

            // One scope per sequence: the [T−1, V] probabilities must not outlive it (84k tokens × 50k = 17 GB).
            using var scope = torch.NewDisposeScope();
            Tensor f = s.HiddenState.to(ScalarType.Float32);
            Tensor embeddings = _embedding.index_select(0, s.InputIds.narrow(0, 1, t - 1));
            Tensor p = F.softmax(F.linear(f.narrow(0, 1, t - 1), _head), -1);                          // [T−1, V]
            Tensor targetTop = groupOf.index_select(0, p.argmax(-1));
            Tensor mask = s.LossMask.narrow(0, 1, t - 1).clone();
            var sets = new List<Tensor> { f.narrow(0, 0, t - 1) };
            for (int j = 1; j <= _o.Depths && j < t - 1; j++)
            {
                Tensor h = _drafter.ForwardStep(embeddings, sets);
                Tensor z = F.linear(h, _head);                                                       // the drafter's own logits
                Tensor labels = _o.Labels == RouterLabels.Drafter ? F.softmax(z, -1) : p;
                Tensor mass = torch.zeros(t - 1, _o.Groups).index_add(1, groupOf, labels, 1);
                mask.narrow(0, 0, j - 1).zero_();                                                    // t < j − 1: no real step-j draft
                Tensor keep = mask.nonzero().squeeze(1);
                if (keep.numel() > 0)
                {
                    list.Add(new RouterExample(j, h.index_select(0, keep).MoveToOuterDisposeScope(), mass.index_select(0, keep).MoveToOuterDisposeScope(),
                        targetTop.index_select(0, keep).MoveToOuterDisposeScope(),
                        groupOf.index_select(0, z.argmax(-1)).index_select(0, keep).MoveToOuterDisposeScope()));
                }

                sets.Add(torch.cat([sets[^1].narrow(0, 0, 1), h.narrow(0, 0, t - 2)], 0));
            }
        }

        return list;
    }

    /// <summary>Trains the router; returns its recall (before and after training) and weights.</summary>
    public RouterTrainingResult Train(IReadOnlyList<FeatureSequence> data)
    {
        long[] perm = Partition(data);
        int vocab = (int)_head.shape[0];
        long[] groupOfToken = new long[vocab];
        int size = perm.Length / _o.Groups;
        for (int i = 0; i < perm.Length; i++)
        {
            if (perm[i] >= 0)
            {
                groupOfToken[perm[i]] = i / size;
            }
        }

        Tensor groupOf = torch.tensor(groupOfToken);
        var examples = Examples(data, groupOf);
        if (examples.Count == 0)
        {
            throw new InvalidOperationException("No loss-masked positions to train the router on.");
        }

        torch.manual_seed(_o.Seed);
        long d = _head.shape[1];
        var w1 = new Parameter(torch.randn(_o.Hidden, d) / Math.Sqrt(d));
        var b1 = new Parameter(torch.zeros(_o.Hidden));
        var w2 = new Parameter(torch.randn(_o.Groups, _o.Hidden) / Math.Sqrt(_o.Hidden));
        var b2 = new Parameter(torch.zeros(_o.Groups));
        Tensor Scores(Tensor h) => F.linear(F.silu(F.linear(h, w1, b1)), w2, b2);
        // Recall@k of the target's top-1 group (by draft step: index 0 = all steps) and of the drafter's own top-1 group.
        (double[] ByDepth, double Drafter) Recall()
        {
            using var noGrad = torch.no_grad();
            var hits = new long[_o.Depths + 1];
            var totals = new long[_o.Depths + 1];
            long drafterHits = 0;
            foreach (RouterExample e in examples)
            {
                using var scope = torch.NewDisposeScope();
                Tensor chosen = Scores(e.H).topk(_o.TopK, -1).indexes;
                long hit = chosen.eq(e.TargetTop.unsqueeze(1)).any(1).sum().item<long>();
                drafterHits += chosen.eq(e.DrafterTop.unsqueeze(1)).any(1).sum().item<long>();
                long n = e.TargetTop.shape[0];
                (hits[0], totals[0], hits[e.Depth], totals[e.Depth]) = (hits[0] + hit, totals[0] + n, hits[e.Depth] + hit, totals[e.Depth] + n);
            }

            return (hits.Select((h, i) => totals[i] > 0 ? (double)h / totals[i] : 0).ToArray(), (double)drafterHits / totals[0]);
        }

        double before = Recall().ByDepth[0];
        var optimizer = torch.optim.AdamW([w1, b1, w2, b2], _o.LearningRate, 0.9, 0.95);
        // Examples in a seeded random order: a run of fewer steps than examples still sees every part of the data.
        int[] order = Enumerable.Range(0, examples.Count).ToArray();
        new Random(_o.Seed).Shuffle(order);
        for (int step = 0; step < _o.Steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            RouterExample e = examples[order[step % order.Length]];
            optimizer.zero_grad();
            Tensor loss = -(e.Mass * F.log_softmax(Scores(e.H), -1)).sum([-1L]).mean();
            loss.backward();
            optimizer.step();
        }

        var (after, drafter) = Recall();
        var weights = new Dictionary<string, Tensor>
        {
            ["router.0.weight"] = w1.detach().clone(),
            ["router.0.bias"] = b1.detach().clone(),
            ["router.2.weight"] = w2.detach().clone(),
            ["router.2.bias"] = b2.detach().clone(),
        };
        return new RouterTrainingResult(before, after[0], drafter, after.Skip(1).ToArray(), perm, weights);
    }

    /// <summary>Writes router.safetensors into a drafter folder and adds the router keys to its config.json.</summary>
    public void Save(string drafterFolder, long[] permutation, Dictionary<string, Tensor> weights)
    {
        var tensors = weights.Select(kv => kv).Append(new KeyValuePair<string, Tensor>("group_perm", torch.tensor(permutation))).ToList();
        SafetensorsWriter.Write(Path.Combine(drafterFolder, LmHeadRouter.FileName), tensors);
        string configPath = Path.Combine(drafterFolder, "config.json");
        JsonObject config = ModelConfig.ReadJsonObject(configPath);
        config["router_groups"] = _o.Groups;
        config["router_topk"] = _o.TopK;
        config["router_hidden"] = _o.Hidden;
        config["router_grouping"] = _o.Grouping.ToString().ToLowerInvariant();
        config["router_depths"] = _o.Depths;
        config["router_labels"] = _o.Labels.ToString().ToLowerInvariant();
        File.WriteAllText(configPath, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}

/// <summary>One draft step's training positions of one sequence: the step, draft outputs h, the labels' group mass, and
/// the target's and the drafter's top-1 groups.</summary>
internal sealed record RouterExample(int Depth, Tensor H, Tensor Mass, Tensor TargetTop, Tensor DrafterTop);

/// <summary>What <see cref="RouterTrainer.Train"/> measured and learned: recall@k of the target's top-1 token's group
/// before and after training (all draft steps, then by step), of the drafter's own top-1 group, the group permutation
/// and the router's weights.</summary>
internal sealed record RouterTrainingResult(double RecallBefore, double RecallAfter, double DrafterRecall, IReadOnlyList<double> RecallByDepth,
    long[] Permutation, Dictionary<string, Tensor> Weights);

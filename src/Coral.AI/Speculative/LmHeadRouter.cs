using System.Collections.Concurrent;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// CORAL's LM-head router (our reconstruction, see docs/speculative.md): the vocabulary is partitioned into G groups of S
/// rows (a permutation of the LM head's rows); a small MLP on the draft output scores the groups, and a drafting step
/// computes logits only for the top-k groups. Verification never uses it.
/// </summary>
/// <remarks>
/// File <c>router.safetensors</c> beside the drafter: <c>router.0.weight [r, d]</c>, <c>router.0.bias [r]</c>,
/// <c>router.2.weight [G, r]</c>, <c>router.2.bias [G]</c> (Linear → SiLU → Linear), <c>group_perm [G·S]</c> int64
/// (token id of each permuted row, −1 for padding). config.json: <c>router_groups</c>, <c>router_topk</c>, <c>router_hidden</c>.
/// </remarks>
internal sealed unsafe class LmHeadRouter : IDisposable
{
    public const string FileName = "router.safetensors";

    private readonly Tensor _w1, _b1, _w2, _b2;   // f32
    private readonly Tensor? _head;              // [G·S, d] LM head rows in group order (padding rows zero), or null (below)
    private readonly Tensor? _padding;           // [G·S] bool, true at padding rows; null when there are none
    private readonly Tensor? _groupWeights;      // [G, d, S] f32: each group's head rows transposed (the CPU form)
    private readonly Tensor? _groupBias;         // [G, S] f32: 0, or −∞ at padding rows
    private readonly PackedMatrix[]? _packed;    // each group's [d, S] packed (CPU, bf16-valued head): used instead of the two above
    private readonly ScreenedHead[]? _screens;   // with _packed and VNNI: each group's int8 copy, for approximate logits
    private readonly int[][]? _paddingColumns;   // with _packed: each group's padding columns
    private readonly HostMlp? _mlp;              // with _packed: the group scorer's weights on the host (GroupScores)
    private readonly long[] _perm;
    private readonly ConcurrentDictionary<ulong, long[]> _ids = new();   // TokenIds by set of groups (a bit per group)

    private LmHeadRouter(Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor head, long[] perm, int groups, int topK, long f32Limit, bool packGroups)
    {
        (_w1, _b1, _w2, _b2, _perm) = (w1, b1, w2, b2, perm);
        Groups = groups;
        GroupSize = perm.Length / groups;
        TopK = topK;
        long d = head.shape[1];
        if (head.device_type == DeviceType.CPU && packGroups && TryPackGroups(head, groups, GroupSize) is PackedMatrix[] packed)
        {
            // With packed kernels (a bf16-valued or f16 head, as the target's), a group's logits stream half the bytes on both
            // cores: 2 of 16 groups of the demo head in ≈ 0.1 ms instead of ≈ 0.5 ms. Packed straight from the group's
            // rows, at any vocabulary (no f32 copy of the permuted head).
            _packed = packed;
            _paddingColumns = Enumerable.Range(0, groups)
                .Select(g => Enumerable.Range(0, GroupSize).Where(c => perm[(g * GroupSize) + c] < 0).ToArray()).ToArray();
            _mlp = new HostMlp(HostValues(w1), HostValues(b1), HostValues(w2), HostValues(b2));
            if (ScreenedHead.Enabled)
            {
                // Approximate logits from an int8 copy of each group: half the bytes again (see Logits). The copies are
                // built from the group's rows and keep nothing else (no exact rows: the packed groups serve those).
                ScreenedHead?[] screens = Enumerable.Range(0, groups).Select(g =>
                {
                    using Tensor rows = head.narrow(0, (long)g * GroupSize, GroupSize);
                    return ScreenedHead.TryCreate(rows, approximateOnly: true);
                }).ToArray();
                if (screens.All(x => x is not null))
                {
                    _screens = screens!;
                }
                else
                {
                    Array.ForEach(screens, x => x?.Dispose());
                }
            }

            head.Dispose();
        }
        else if (head.device_type == DeviceType.CPU && (long)perm.Length * d * 4 <= f32Limit)
        {
            // On CPU a group's logits for 1–8 rows cost ≈ 0.5 ms as a bf16 F.linear over [S, d] rows and a fraction of
            // that as an f32 x·W over [d, S]; the bias puts −∞ in padding columns within the same call (addmm).
            using Tensor head32 = head.to(ScalarType.Float32);
            using Tensor rows = head32.view(groups, GroupSize, d);
            using (Tensor columns = rows.transpose(1, 2))
            {
                _groupWeights = columns.contiguous();
            }

            using (Tensor bias = torch.tensor(perm.Select(p => p < 0 ? float.NegativeInfinity : 0f).ToArray(), device: head.device))
            {
                _groupBias = bias.view(groups, GroupSize);
            }

            head.Dispose();
        }
        else
        {
            _head = head;
            _padding = perm.Any(p => p < 0) ? torch.tensor(perm.Select(p => p < 0).ToArray(), device: head.device) : null;
        }
    }

    /// <summary>Each group's rows of the permuted head [G·S, d] packed ([d, S]), or null when the head's values are not all
    /// bf16 (nor f16-stored) or this CPU packs nothing.</summary>
    private static PackedMatrix[]? TryPackGroups(Tensor head, int groups, int size)
    {
        if (!PackedMatrix.Enabled || !head.is_contiguous())
        {
            return null;
        }

        var packed = new PackedMatrix?[groups];
        for (int g = 0; g < groups; g++)
        {
            using Tensor rows = head.narrow(0, (long)g * size, size);
            if ((packed[g] = PackedMatrix.TryCreateFromRows(rows)) is null)
            {
                Array.ForEach(packed, m => m?.Dispose());
                return null;
            }
        }

        return packed!;
    }

    private static float[] HostValues(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        return t.to(ScalarType.Float32).contiguous().data<float>().ToArray();
    }

    /// <summary>The largest f32 copy of the permuted head (G·S·d·4 bytes) kept for CPU drafting when its groups are not
    /// packed (values that are not all bf16, or no AVX-512): 256 MiB, e.g. a 50k × 256 head (51 MB) but not a 128k × 4096
    /// one, which keeps the head's own rows.</summary>
    public const long DefaultF32Limit = 256L << 20;

    public int Groups { get; }

    /// <summary>Gets whether group logits run on <see cref="PackedMatrix"/> copies (a bf16-valued head on CPU) and the
    /// group scores in C#.</summary>
    public bool UsesPackedGroups => _packed is not null;

    /// <summary>Gets the packed groups' format (bf16, or f16 for an f16 head), or null when they are not packed.</summary>
    internal ScalarType? PackedFormat => _packed?[0].Format;

    /// <summary>Gets whether <see cref="Logits"/> can compute approximate logits from int8 copies of the groups (packed
    /// groups and a CPU with VNNI, see <see cref="ScreenedHead"/>).</summary>
    public bool HasInt8Groups => _screens is not null;

    public int GroupSize { get; }

    /// <summary>Gets the default number of groups computed per drafting step.</summary>
    public int TopK { get; }

    /// <summary>Gets the token id of each permuted row (−1 = padding).</summary>
    public IReadOnlyList<long> Permutation => _perm;

    /// <summary>Loads <c>router.safetensors</c> beside a drafter, or returns null when there is none.</summary>
    /// <param name="folder">The drafter folder.</param>
    /// <param name="config">Its config.json.</param>
    /// <param name="target">The target whose LM head the router indexes.</param>
    /// <param name="f32Limit">The largest f32 copy of the permuted head kept on CPU (<see cref="DefaultF32Limit"/>) when
    /// its groups are not packed.</param>
    /// <param name="packGroups">Whether a bf16-valued head's groups are packed (on CPU with AVX-512; false keeps the other
    /// forms, for comparisons).</param>
    public static LmHeadRouter? TryLoad(string folder, JsonObject config, TransformerModel target, long f32Limit = DefaultF32Limit, bool packGroups = true)
    {
        string path = Path.Combine(folder, FileName);
        if (!File.Exists(path))
        {
            return null;
        }

        string configPath = Path.Combine(folder, "config.json");
        int groups = ModelConfig.OptionalInt(config, configPath, "router_groups") ?? throw new CoralModelException(configPath, "router_groups", $"required when {FileName} is present.");
        int topK = ModelConfig.OptionalInt(config, configPath, "router_topk") ?? Math.Max(1, groups / 8);
        int hidden = ModelConfig.OptionalInt(config, configPath, "router_hidden") ?? throw new CoralModelException(configPath, "router_hidden", $"required when {FileName} is present.");
        using var file = SafetensorsFile.Open(path);
        long d = target.Config.HiddenSize;
        Tensor Take(string name, long[] shape)
        {
            if (!file.Entries.TryGetValue(name, out SafetensorsEntry? e))
            {
                throw new CoralModelException(path, name, "required tensor is missing.");
            }

            if (!e.Shape.SequenceEqual(shape))
            {
                throw new CoralModelException(path, name, $"shape [{string.Join(", ", e.Shape)}] does not match config.json, which implies [{string.Join(", ", shape)}].");
            }

            using var scope = torch.NewDisposeScope();
            return file.Get(name).to(name == "group_perm" ? ScalarType.Int64 : ScalarType.Float32).to(target.Device).clone().MoveToOuterDisposeScope();
        }

        if (!file.Entries.TryGetValue("group_perm", out SafetensorsEntry? permEntry) || permEntry.Shape.Length != 1 || permEntry.Shape[0] % groups != 0)
        {
            throw new CoralModelException(path, "group_perm", $"must be a 1-D int64 tensor whose length is a multiple of router_groups ({groups}).");
        }

        using Tensor permTensor = Take("group_perm", [permEntry.Shape[0]]);
        using Tensor permCpu = permTensor.cpu();
        long[] perm = MemoryMarshal.Cast<byte, long>(permCpu.bytes).ToArray();
        long vocab = target.Config.VocabSize;
        if (perm.Any(p => p < -1 || p >= vocab) || perm.Where(p => p >= 0).Distinct().Count() != perm.Count(p => p >= 0))
        {
            throw new CoralModelException(path, "group_perm", $"entries must be distinct token ids in [0, {vocab}) or −1 for padding.");
        }

        Tensor w1 = Take("router.0.weight", [hidden, d]), b1 = Take("router.0.bias", [hidden]);
        Tensor w2 = Take("router.2.weight", [groups, hidden]), b2 = Take("router.2.bias", [groups]);
        Tensor head = PermutedHead(target, perm);
        return new LmHeadRouter(w1, b1, w2, b2, head, perm, groups, topK, f32Limit, packGroups);
    }

    /// <summary>Builds the permuted head: a view of the target's head when the permutation is the identity prefix.</summary>
    private static Tensor PermutedHead(TransformerModel target, long[] perm)
    {
        bool identity = true;
        for (int i = 0; i < perm.Length && identity; i++)
        {
            identity = perm[i] == (i < target.Config.VocabSize ? i : -1);
        }

        if (identity && perm.Length == target.Config.VocabSize)
        {
            return target.Head.alias();
        }

        using var scope = torch.NewDisposeScope();
        Tensor rows = target.Head.index_select(0, torch.tensor(perm.Select(p => Math.Max(p, 0)).ToArray(), device: target.Device));
        Tensor keep = torch.tensor(perm.Select(p => p >= 0 ? 1f : 0f).ToArray(), device: target.Device).to(target.Head.dtype);
        return (rows * keep.unsqueeze(1)).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>Gets the group scores (log-probabilities) [K, G] for draft outputs h [K, d].</summary>
    public Tensor GroupLogProbs(Tensor h) => F.log_softmax(F.linear(F.silu(F.linear(h, _w1, _b1)), _w2, _b2), -1);

    /// <summary>
    /// Routes once for all K rows (the groups with the highest summed log-probability), then computes logits only over
    /// those groups. Returns logits [K, k·S] in f32 (−∞ in padding columns) and the token id of each column (−1 for padding).
    /// With <paramref name="approximate"/> and <see cref="HasInt8Groups"/>, the logits are the int8 screen's values
    /// (within its proven bound of the exact ones; a drafting step only ranks tokens, and verification decides): the
    /// demo's two routed groups read 1.6 MB instead of 3.2 MB a step.
    /// </summary>
    public (Tensor Logits, long[] TokenIds) Logits(Tensor h, int topK, bool approximate = false)
    {
        topK = Math.Clamp(topK, 1, Groups);
        float[] s = GroupScores(h);
        int[] chosen = Enumerable.Range(0, Groups).OrderByDescending(g => s[g]).ThenBy(g => g).Take(topK).OrderBy(g => g).ToArray();
        long[] ids = TokenIds(chosen);
        if (_packed is not null)
        {
            return (PackedLogits(h, chosen, approximate), ids);
        }

        var parts = new List<Tensor>();

        if (_groupWeights is not null)
        {
            Tensor x32 = h.to(ScalarType.Float32);
            foreach (int g in chosen)
            {
                parts.Add(torch.addmm(_groupBias![g], x32, _groupWeights[g], beta: 1, alpha: 1));
            }

            return (parts.Count == 1 ? parts[0] : torch.cat(parts, 1), ids);
        }

        var padding = new List<Tensor>();
        Tensor x = h.to(_head!.dtype);
        for (int i = 0; i < chosen.Length;)
        {
            int run = 1;
            while (i + run < chosen.Length && chosen[i + run] == chosen[i] + run)
            {
                run++;
            }

            long start = (long)chosen[i] * GroupSize, length = (long)run * GroupSize;
            parts.Add(F.linear(x, _head.narrow(0, start, length)));
            if (_padding is not null)
            {
                padding.Add(_padding.narrow(0, start, length));
            }

            i += run;
        }

        Tensor logits = (parts.Count == 1 ? parts[0] : torch.cat(parts, 1)).to(ScalarType.Float32);
        if (_padding is not null)
        {
            logits = logits.masked_fill(padding.Count == 1 ? padding[0] : torch.cat(padding), float.NegativeInfinity);
        }

        return (logits, ids);
    }

    /// <summary>
    /// The token id of each column of the chosen groups' logits (−1 at padding), in the order of <paramref name="chosen"/>
    /// (ascending). Built once per set of groups and kept (a draft step asked for two 3,142-column groups of the demo
    /// head: 50 KB of ids per step otherwise, whose garbage showed as GC and page-fault time in drafting's profile); at most
    /// <see cref="MaxCachedGroupSets"/> sets are kept, past that each is built anew. Callers must not modify it.
    /// </summary>
    private long[] TokenIds(int[] chosen)
    {
        bool keyed = Groups <= 64;   // a set of groups is one bit per group
        ulong key = 0;
        foreach (int g in chosen)
        {
            key |= keyed ? 1UL << g : 0;
        }

        if (keyed && _ids.TryGetValue(key, out long[]? cached))
        {
            return cached;
        }

        var ids = new long[chosen.Length * GroupSize];
        for (int j = 0; j < chosen.Length; j++)
        {
            _perm.AsSpan(chosen[j] * GroupSize, GroupSize).CopyTo(ids.AsSpan(j * GroupSize));
        }

        if (keyed && _ids.Count < MaxCachedGroupSets)
        {
            _ids.TryAdd(key, ids);
        }

        return ids;
    }

    /// <summary>The most sets of groups whose token ids <see cref="TokenIds"/> keeps (120 for top-2 of 16 groups).</summary>
    private const int MaxCachedGroupSets = 256;

    /// <summary>
    /// Each group's log-probability summed over the rows of h [K, d]. With a packed head the MLP runs in C# (≈ 17k
    /// multiply-adds a row: a few µs, where its eight libtorch calls cost ≈ 0.15 ms); its sums may differ from
    /// libtorch's in the last bits, which can only change which groups are drafted from, never what is accepted.
    /// </summary>
    private float[] GroupScores(Tensor h)
    {
        if (_mlp is null)
        {
            using Tensor scores = GroupLogProbs(h).sum([0L]).cpu();
            return MemoryMarshal.Cast<byte, float>(scores.contiguous().bytes).ToArray();
        }

        if (h.dim() != 2 || h.shape[1] != _packed![0].Inputs)
        {
            throw new ArgumentException($"Expected draft outputs [K, {_packed![0].Inputs}], got [{string.Join(", ", h.shape)}].", nameof(h));
        }

        using Tensor x = h.to(ScalarType.Float32).contiguous();
        return GroupScores(_mlp, CpuKernels.Pointer(x), (int)x.shape[0], (int)x.shape[1]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float[] GroupScores(HostMlp mlp, float* x, int rows, int d)
    {
        int hidden = mlp.B1.Length, groups = mlp.B2.Length;
        ReadOnlySpan<float> w1 = mlp.W1, b1 = mlp.B1, w2 = mlp.W2, b2 = mlp.B2;
        var sums = new float[groups];
        Span<float> z = stackalloc float[hidden], g = stackalloc float[groups];
        for (int r = 0; r < rows; r++)
        {
            var xr = new ReadOnlySpan<float>(x + ((long)r * d), d);
            for (int i = 0; i < hidden; i++)
            {
                float v = TensorPrimitives.Dot(w1.Slice(i * d, d), xr) + b1[i];
                z[i] = v / (1 + MathF.Exp(-v));   // SiLU
            }

            for (int j = 0; j < groups; j++)
            {
                g[j] = TensorPrimitives.Dot(w2.Slice(j * hidden, hidden), z) + b2[j];
            }

            float max = TensorPrimitives.Max(g), sum = 0;
            foreach (float v in g)
            {
                sum += MathF.Exp(v - max);
            }

            float logNorm = max + MathF.Log(sum);
            for (int j = 0; j < groups; j++)
            {
                sums[j] += g[j] - logNorm;
            }
        }

        return sums;
    }

    /// <summary>The chosen groups' logits [R, k·S] by the packed kernels (or the int8 copies' approximations), −∞ in
    /// padding columns.</summary>
    private Tensor PackedLogits(Tensor h, int[] chosen, bool approximate)
    {
        Tensor x = h.to(ScalarType.Float32).contiguous();
        int rows = (int)x.shape[0], width = chosen.Length * GroupSize;
        Tensor logits = torch.empty([rows, width], ScalarType.Float32);
        float* xp = CpuKernels.Pointer(x), yp = CpuKernels.Pointer(logits);
        for (int j = 0; j < chosen.Length; j++)
        {
            int g = chosen[j];
            if (!approximate || _screens is null || !_screens[g].TryApproxLogits(xp, rows, yp + (j * GroupSize), width))
            {
                _packed![g].Multiply(xp, rows, yp + (j * GroupSize), width);   // exact, or a row the screen cannot scale (zero)
            }

            foreach (int c in _paddingColumns![g])
            {
                for (int r = 0; r < rows; r++)
                {
                    yp[((long)r * width) + (j * GroupSize) + c] = float.NegativeInfinity;
                }
            }
        }

        return logits;
    }

    public void Dispose()
    {
        _w1.Dispose();
        _b1.Dispose();
        _w2.Dispose();
        _b2.Dispose();
        _head?.Dispose();
        _padding?.Dispose();
        _groupWeights?.Dispose();
        _groupBias?.Dispose();
        if (_packed is not null)
        {
            Array.ForEach(_packed, m => m.Dispose());
        }

        if (_screens is not null)
        {
            Array.ForEach(_screens, x => x.Dispose());
        }
    }

    /// <summary>The group scorer (Linear → SiLU → Linear) as host arrays: w1 [r·d], b1 [r], w2 [G·r], b2 [G].</summary>
    private sealed record HostMlp(float[] W1, float[] B1, float[] W2, float[] B2);
}

using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// A decoder of the Llama family and its relatives (Mistral, Qwen, Phi-3, Gemma, Granite, SmolLM3, OLMo, Command-R, and
/// their mixtures of experts: what each adds is a <see cref="ModelConfig"/> setting) written for per-op overhead: fused QKV and gate/up weights,
/// the KV cache written in place. f32 layers on CPU run on <see cref="CpuKernels"/> (the element-wise work in C#; the GEMMs
/// on <see cref="PackedMatrix"/> when the weights' values are all bf16, as in a bf16 checkpoint, else four libtorch GEMMs
/// per layer); otherwise each layer is libtorch ops (RoPE in three ops on q and k together, grouped-query attention
/// without copying K/V).
/// </summary>
/// <remarks>
/// Precision is "mixed": weights in <see cref="WeightType"/> (bf16 or f32) for the GEMMs; residual stream, norms, RoPE,
/// attention and the KV cache in f32. Every public call expects to run inside one dispose scope per step, and one
/// forward at a time per model (the kernel path's buffers are the model's).
/// </remarks>
internal sealed unsafe class TransformerModel : IDisposable
{
    private readonly DecoderLayer[] _layers;
    private readonly Tensor _embed;       // [V, d], WeightType
    private readonly Tensor _finalNorm;   // [d], f32
    private readonly Tensor _head;        // [V, d], WeightType (the embedding itself when tied)
    private readonly RotaryTables _rope;
    private readonly RotaryTables? _localRope;   // the sliding layers' own tables (Gemma-3's local RoPE base)
    private readonly RotaryTables? _noRope;      // cos 1, sin 0: layers without RoPE (SmolLM3)
    private readonly (RotaryTables Rope, bool Sliding)[] _kinds;   // the distinct (tables, window) pairs of the layers
    private readonly int[] _kindOf;              // each layer's entry in _kinds
    private readonly CpuWorkspace? _work;  // CPU f32 layers: the kernel path (CpuKernels)
    private readonly PackedMatrix? _packedHead;   // the kernel path's LM head, when its values are bf16 or stored as f16 ([d, V])
    private readonly ScreenedHead? _screenedHead; // its int8 screen for greedy tokens
    private readonly void* _embedRows;            // the kernel path's embedding table (f32, or bf16/f16 rows widened as gathered)
    private readonly ScalarType _embedType;

    private TransformerModel(ModelConfig config, Device device, ScalarType weightType, DecoderLayer[] layers,
        Tensor embed, Tensor finalNorm, Tensor head, RotaryTables rope, RotaryTables? localRope, RotaryTables? noRope)
    {
        (_localRope, _noRope) = (localRope, noRope);
        // Each layer attends with one kind of step: its rotary tables (global, Gemma-3's local ones, or none) and whether
        // its window slides. A forward builds each kind's step once, when its first layer comes.
        var kinds = new List<(RotaryTables, bool)>();
        _kindOf = Enumerable.Range(0, config.NumLayers).Select(l =>
        {
            bool sliding = config.IsSliding(l);
            RotaryTables tables = !config.UsesRope(l) ? noRope! : sliding ? localRope ?? rope : rope;
            int k = kinds.IndexOf((tables, sliding));
            if (k < 0)
            {
                kinds.Add((tables, sliding));
                k = kinds.Count - 1;
            }

            return k;
        }).ToArray();
        _kinds = kinds.ToArray();
        Config = config;
        Device = device;
        WeightType = weightType;
        HeadType = head.dtype;
        _layers = layers;
        _embed = embed;
        _finalNorm = finalNorm;
        _head = head;
        _rope = rope;
        if (layers.All(l => l.UsesCpuKernels) && embed.dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)
        {
            _work = new CpuWorkspace(config);
            _embedType = embed.dtype;
            _embedRows = _embedType == ScalarType.Float32 ? CpuKernels.Pointer(embed) : CpuKernels.Pointer16(embed);
            if (layers.All(l => l.UsesPackedWeights))
            {
                using var noGrad = torch.no_grad();
                _packedHead = PackedMatrix.TryCreateFromRows(head);   // from [V, d] as it is: no transposed f32 copy
                _screenedHead = _packedHead is not null && ScreenedHead.Enabled ? ScreenedHead.TryCreate(head) : null;
            }
        }
    }

    public ModelConfig Config { get; }

    public Device Device { get; }

    public ScalarType WeightType { get; }

    /// <summary>Gets the LM head's dtype: <see cref="WeightType"/>, or bfloat16 for f32 layers that verify trees on CPU, or
    /// the checkpoint's own bf16 or f16 under packed f32 layers on CPU.</summary>
    public ScalarType HeadType { get; }

    /// <summary>Gets the token embedding table [V, d] (shared with drafters, never copied): in <see cref="WeightType"/>, or
    /// the checkpoint's bf16 or f16 rows under packed f32 layers on CPU.</summary>
    public Tensor Embedding => _embed;

    /// <summary>Gets the LM head [V, d] in <see cref="HeadType"/> (shared with drafters, never copied).</summary>
    public Tensor Head => _head;

    /// <summary>Gets the number of rotary positions precomputed (the hard context limit).</summary>
    public int MaxPositions => _rope.MaxPositions;

    /// <summary>Loads an HF checkpoint folder.</summary>
    /// <param name="folder">The folder with config.json and the safetensors.</param>
    /// <param name="device">Where the weights live.</param>
    /// <param name="weightType">The layers' (and embedding's) dtype.</param>
    /// <param name="maxPositions">The rotary table length (the context limit).</param>
    /// <param name="headType">The LM head's dtype, when it differs: f32 layers with a bf16 head is the CPU form for
    /// speculative decoding (a one-token f32 step is 2–5× cheaper than a bf16 one, a 16-row bf16 head 3× cheaper than an
    /// f32 one, and bf16 GEMMs are batch-invariant). A tied head is then a bf16 copy of the embedding.</param>
    /// <param name="cpuKernels">Whether f32 layers on CPU run on <see cref="CpuKernels"/> (the default; false keeps the
    /// libtorch path, for comparisons).</param>
    /// <param name="packedWeights">Whether the kernel path multiplies by <see cref="PackedMatrix"/> copies of weights
    /// whose values are all bf16, or that are stored as f16 (the default; false keeps libtorch's f32 GEMMs, for comparisons).</param>
    /// <param name="quantization">Q8_0 or Q4_0: the decoder's projections quantized at load (<see cref="WeightQuantization"/>);
    /// needs f32 compute (the kernels' blocks, or their values in f32 on libtorch).</param>
    public static TransformerModel Load(string folder, Device device, ScalarType weightType, int maxPositions, ScalarType? headType = null,
        bool cpuKernels = true, bool packedWeights = true, WeightQuantization quantization = WeightQuantization.None)
    {
        if (weightType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new ArgumentException($"Unsupported compute dtype {weightType}.", nameof(weightType));
        }

        if (quantization != WeightQuantization.None && weightType != ScalarType.Float32)
        {
            throw new ArgumentException($"{quantization} weights compute in float32, not {weightType}.", nameof(quantization));
        }

        folder = GgufImporter.Resolve(folder);
        ModelConfig c = ModelConfig.Load(Path.Combine(folder, "config.json"));
        // The reader's mappings close once loaded: weights kept as views of the file (f32-stored ones) hold their own
        // reference to the mapping, and a checkpoint converted at load (bf16-stored, loaded as f32) no longer stays mapped.
        using var reader = new CheckpointReader(folder);
        string root = reader.DecoderRoot;
        var layers = new List<DecoderLayer>();
        try
        {
            using var noGrad = torch.no_grad();
            for (int i = 0; i < c.NumLayers; i++)
            {
                layers.Add(DecoderLayer.Load(reader, $"{root}layers.{i}.", c, weightType, device, inputNorm: true, cpuKernels, packedWeights, moe: c.IsMoe(i),
                    quantization: quantization));
            }

            long d = c.HiddenSize;
            // Packed layers (f32 compute on the CPU kernels) need no f32 copy of 16-bit rows: the kernels' gather widens an
            // embedding row as it copies it, the packed head computes the logits and its int8 screen reads exact rows in
            // bf16 (f16) too. Such a table and head stay the checkpoint's mapped rows: 1.05 GB less at Llama-3.2-1B's
            // shape (tied), 4.2 GB less at Llama-3-8B's (untied). The packed head is batch-invariant at every row count,
            // so it also serves where a bf16 head is asked for (headType, for tree verification).
            bool packed = weightType == ScalarType.Float32 && device.type == DeviceType.CPU && layers.Count > 0 && layers.All(l => l.UsesPackedWeights);
            ScalarType? Rows16(string name) => packed && reader.Contains(name)
                && reader.StoredType(name) is ScalarType.BFloat16 or ScalarType.Float16
                && (long)c.VocabSize * d * 2 <= int.MaxValue   // the kernels read 16-bit tables through a byte span
                ? reader.StoredType(name) : null;
            Tensor embed = reader.Take(root + "embed_tokens.weight", [c.VocabSize, d], Rows16(root + "embed_tokens.weight") ?? weightType, device);
            Tensor finalNorm = DecoderLayer.LoadNorm(reader, root + "norm.weight", d, c, device);
            string headName = c.TieWordEmbeddings ? root + "embed_tokens.weight" : reader.HeadName;
            ScalarType ht = (headType is null or ScalarType.BFloat16 ? Rows16(headName) : null) ?? headType ?? weightType;
            Tensor head = c.TieWordEmbeddings
                ? (ht == embed.dtype ? embed.alias() : embed.to(ht))
                : reader.Take(headName, [c.VocabSize, d], ht, device);

            int positions = Math.Min(maxPositions, Math.Max(c.MaxPositionEmbeddings, 1));
            var rope = new RotaryTables(c, positions, device);
            // Gemma-3's sliding layers rotate with their own base and no scaling.
            RotaryTables? localRope = c.LocalRopeTheta is double theta
                ? new RotaryTables(c with { RopeTheta = theta, RopeScaling = null }, positions, device)
                : null;
            // SmolLM3's layers without RoPE rotate by nothing: tables of no rotary dimensions (cos 1, sin 0).
            RotaryTables? noRope = c.NoRopeLayers is { } none && none.Any(n => n) ? new RotaryTables(c with { RotaryDim = 0 }, positions, device) : null;
            return new TransformerModel(c, device, weightType, layers.ToArray(), embed, finalNorm, head, rope, localRope, noRope) { Quantization = quantization };
        }
        catch
        {
            layers.ForEach(l => l.Dispose());
            throw;
        }
    }

    /// <summary>
    /// Allocates a KV cache. <paramref name="batchInvariant"/> (for engines that verify draft trees) makes it f64 on CPU,
    /// which switches attention to <see cref="DecoderLayer.Attention"/> so that a tree node computes exactly what a
    /// one-token step computes; otherwise it stores <see cref="KvCacheType"/> and attention is fused SDPA (faster for plain
    /// decoding).
    /// </summary>
    public KvCache CreateCache(int capacity, bool batchInvariant = false) =>
        new(Config, Math.Min(capacity, MaxPositions),
            batchInvariant && Device.type == DeviceType.CPU && _work is null ? ScalarType.Float64 : KvCacheType, Device, batchInvariant,
            keysTransposed: _work is not null);

    /// <summary>
    /// Gets or sets what the KV caches this model creates store: f32 (the default) or bf16 — half the memory, keys and
    /// values rounded to nearest even as they are written. On the CPU kernels they are read back exactly as f32 (every step
    /// and every tree row sees the same values, so speculation stays exact against plain decoding with the same cache); on
    /// libtorch (a GPU) attention runs in bf16 (SDPA's bf16 kernels; the explicit form's softmax in f32). A batch-invariant
    /// cache on CPU's libtorch path stays f64 whatever this says.
    /// </summary>
    public ScalarType KvCacheType
    {
        get;
        set => field = value is ScalarType.Float32 or ScalarType.BFloat16 ? value
            : throw new ArgumentException($"KV cache type {value} is not supported; use Float32 or BFloat16.", nameof(value));
    } = ScalarType.Float32;

    /// <summary>Gets whether forwards run on <see cref="CpuKernels"/> (f32 layers on CPU).</summary>
    public bool UsesCpuKernels => _work is not null;

    /// <summary>Gets whether the kernel path multiplies by <see cref="PackedMatrix"/> weights, layers and LM head: every
    /// row then has the same bits at any row count, so one-token steps need no padding.</summary>
    public bool UsesPackedWeights => _packedHead is not null;

    /// <summary>Gets whether the decoder's Q8_0 projections multiply int8 activations (AVX-VNNI; <see cref="PackedMatrix.Int8Activations"/>).</summary>
    public bool UsesInt8Activations => _layers.Any(l => l.UsesInt8Activations);

    /// <summary>Gets the decoder's packed projections.</summary>
    internal IEnumerable<PackedMatrix> PackedLayerWeights => _layers.SelectMany(l => l.PackedWeights);

    /// <summary>Gets how the decoder's projections were quantized at load.</summary>
    public WeightQuantization Quantization { get; private init; }


    /// <summary>
    /// Runs <paramref name="ids"/> through the decoder, writing their K/V to cache slots
    /// [<c>cache.Length</c>, <c>cache.Length + T</c>) and advancing <c>cache.Length</c> by T.
    /// </summary>
    /// <param name="ids">The T new tokens.</param>
    /// <param name="cache">The sequence's cache.</param>
    /// <param name="positions">Rotary positions of the new tokens; null means their slot indices.</param>
    /// <param name="treeMask">A [T, M] bool mask (true = attend) over the last M slots, the T new tokens included;
    /// null means causal. Earlier slots are always visible.</param>
    /// <returns>The final (post-norm) hidden states [T, d] in f32.</returns>
    public Tensor Forward(long[] ids, KvCache cache, long[]? positions = null, Tensor? treeMask = null)
    {
        int t = ids.Length, start = cache.Length;
        if (start + t > cache.Capacity)
        {
            throw new InvalidOperationException($"KV cache overflow: {start} + {t} > {cache.Capacity}.");
        }

        // A batch-invariant (speculative) forward on libtorch's f32 GEMMs runs its rows padded to whole blocks (the last
        // token repeated; see InvariantRows); bf16 GEMMs and packed weights need no padding.
        int rows = RowsFor(t, cache.BatchInvariant);
        bool pad = rows != t;
        if (_work is not null)
        {
            return ForwardCpu(ids, cache, positions, treeMask, rows);
        }

        using Tensor idx = torch.tensor(pad ? [.. ids, .. Enumerable.Repeat(ids[^1], rows - t)] : ids, device: Device);
        Tensor x = _embed.index_select(0, idx).to(ScalarType.Float32);            // [T, d] ([rows, d] padded)
        if (Config.EmbeddingScale != 1f)
        {
            x = x.mul_(Config.EmbeddingScale);
        }

        // Layers of different kinds differ in the mask and the rotary tables: each kind's inputs are built once, when a
        // layer of that kind comes.
        var inputs = new LayerInputs?[_kinds.Length];
        LayerInputs Inputs(int kind)
        {
            var (tables, sliding) = _kinds[kind];
            var (cos, sin) = tables.At(start, t, positions);
            int group = Config.NumHeads / Config.NumKvHeads;
            Tensor? mask = RotaryTables.Mask(t, start, group, treeMask, positions, sliding ? Config.SlidingWindow : null, Device);
            if (pad)
            {
                // Padding rows are copies of the last token: its rotary angles and, in each head group, its mask row.
                (cos, sin) = (PadRows(cos, 0, rows), PadRows(sin, 0, rows));
                mask = mask is null ? null : PadRows(mask.view(group, t, -1), 1, rows).reshape(group * rows, -1);
            }

            if (mask is not null && Device.type != DeviceType.CPU)
            {
                // On a GPU: additive (0 / −∞, in the cache's dtype), built once for all layers, where SDPA would convert a bool
                // mask in every layer's call (launches that a verify forward pays 32 times over on an 8B model). On CPU the
                // mask stays bool: libtorch's CPU SDPA picks another kernel for an additive one, and tree rows would no longer
                // equal one-token steps bit for bit.
                mask = RotaryTables.Additive(mask, cache.Keys[0].dtype);
            }

            return new LayerInputs(cos, sin, mask, start, t);
        }

        for (int l = 0; l < _layers.Length; l++)
        {
            int k = _kindOf[l];
            x = _layers[l].Forward(x, inputs[k] ??= Inputs(k), cache.Keys[l], cache.Values[l]);
        }

        cache.Length = start + t;
        Tensor last = pad ? x.narrow(0, 0, t) : x;
        return DecoderLayer.Norm(last, _finalNorm, Config.RmsNormEps, Config.LayerNorms);
    }

    /// <summary>
    /// The rows an f32-GEMM forward of <paramref name="t"/> tokens runs so that each row's bits do not depend on how many
    /// rows share the GEMM: a multiple of <see cref="InvariantRowBlock"/>. libtorch's f32 GEMM (MKL) computes a row in one
    /// of its whole 4-row blocks the same way at any row count, but rows past the last whole block another way (a GEMV
    /// for one row; measured on AMD EPYC: tail rows below 12 rows differ; on Intel Xeon any count from 2 agreed). A
    /// speculative engine's tree rows and its one-token steps, and a batch's rows and each sequence's, then agree bit for
    /// bit. Packed and bf16 weights are batch-invariant at every row count: no padding.
    /// </summary>
    private int RowsFor(int t, bool batchInvariant) =>
        batchInvariant && WeightType == ScalarType.Float32 && _packedHead is null ? InvariantRows(t) : t;

    /// <summary>The block of rows that libtorch's f32 GEMMs compute alike at any row count (see <see cref="RowsFor"/>).</summary>
    internal const int InvariantRowBlock = 4;

    /// <summary><paramref name="t"/> rounded up to a whole number of <see cref="InvariantRowBlock"/>s.</summary>
    internal static int InvariantRows(int t) => (t + InvariantRowBlock - 1) / InvariantRowBlock * InvariantRowBlock;

    /// <summary>x with its last entry along <paramref name="dim"/> repeated up to <paramref name="rows"/> entries.</summary>
    private static Tensor PadRows(Tensor x, int dim, int rows)
    {
        long n = x.shape[dim];
        return n >= rows ? x : torch.cat([x, x.narrow(dim, n - 1, 1).expand(x.shape.Select((s, i) => i == dim ? rows - n : s).ToArray())], dim);
    }

    private Tensor ForwardCpu(long[] ids, KvCache cache, long[]? positions, Tensor? treeMask, int rows)
    {
        int t = ids.Length, start = cache.Length;
        Tensor y = ForwardCpu(ids, rows, t, k => [new CpuSegment(
            _kinds[k].Rope.KernelStep(start, t, rows, positions, treeMask, _kinds[k].Sliding ? Config.SlidingWindow : null), cache, 0)]);
        cache.Length = start + t;
        return y;
    }

    /// <summary>The kernel path's forward over <paramref name="rows"/> workspace rows (<paramref name="ids"/>, the last
    /// repeated for padding rows): each layer over the segments of its kind (<paramref name="segmentsOf"/>, built once per
    /// kind); returns the final hidden states of the first <paramref name="outputRows"/> rows. Callers advance the caches.</summary>
    private Tensor ForwardCpu(long[] ids, int rows, int outputRows, Func<int, CpuSegment[]> segmentsOf)
    {
        int d = Config.HiddenSize;
        CpuWorkspace.Views views = _work!.Rows(rows);
        GatherEmbeddings(ids, rows, _work.X);
        if (Config.EmbeddingScale != 1f)
        {
            TensorPrimitives.Multiply(new ReadOnlySpan<float>(_work.X, rows * d), Config.EmbeddingScale, new Span<float>(_work.X, rows * d));
        }

        var parts = new CpuSegment[_kinds.Length][];
        for (int l = 0; l < _layers.Length; l++)
        {
            int k = _kindOf[l];
            _layers[l].ForwardCpuBatch(parts[k] ??= segmentsOf(k), rows, _work, views, l);
        }

        Tensor y = torch.empty([outputRows, d], ScalarType.Float32);
        CpuKernels.Norm(Config.LayerNorms, _work.X, CpuKernels.Pointer(_finalNorm), CpuKernels.Pointer(y), outputRows, d, (float)Config.RmsNormEps);
        return y;
    }

    /// <summary>
    /// Runs several sequences' new tokens through the decoder in one forward (continuous batching): each segment's tokens
    /// go causally after its own cache's contents, as <see cref="Forward"/> would take them alone, and advance that cache.
    /// On the CPU kernel path the projections see all rows at once and attention runs per segment; elsewhere the segments
    /// run one after another.
    /// </summary>
    /// <returns>The final hidden states [Σ T, d], the segments' rows in order.</returns>
    public Tensor ForwardBatch(IReadOnlyList<(long[] Ids, KvCache Cache)> segments)
    {
        int rows = segments.Sum(g => g.Ids.Length);
        if (segments.Count == 1 || _work is null || rows == 1)
        {
            return segments.Count == 1 ? Forward(segments[0].Ids, segments[0].Cache) : torch.cat(segments.Select(g => Forward(g.Ids, g.Cache)).ToArray(), 0);
        }

        foreach (var (ids, cache) in segments)
        {
            if (ids.Length == 0 || cache.Length + ids.Length > cache.Capacity)
            {
                throw new InvalidOperationException($"KV cache overflow or empty segment: {cache.Length} + {ids.Length} > {cache.Capacity}.");
            }
        }

        // The kernel path counts every sequence's cache as batch-invariant: rows padded as a speculative step pads them.
        Tensor y = ForwardCpu(segments.SelectMany(g => g.Ids).ToArray(), RowsFor(rows, batchInvariant: true), rows, Segments);
        foreach (var (ids, cache) in segments)
        {
            cache.Length += ids.Length;
        }

        return y;

        CpuSegment[] Segments(int kind)
        {
            var (rope, sliding) = _kinds[kind];
            var result = new CpuSegment[segments.Count];
            for (int i = 0, row = 0; i < result.Length; row += segments[i].Ids.Length, i++)
            {
                var (ids, cache) = segments[i];
                result[i] = new CpuSegment(rope.KernelStep(cache.Length, ids.Length, ids.Length, null, null, sliding ? Config.SlidingWindow : null), cache, row);
            }

            return result;
        }
    }

    /// <summary>The embedding rows of <paramref name="ids"/> as f32 into <paramref name="y"/> (rows
    /// <paramref name="stride"/> floats apart; 0: d), on the CPU kernel path (<see cref="UsesCpuKernels"/>); the last id
    /// repeats for rows beyond it.</summary>
    internal void GatherEmbeddings(long[] ids, int rows, float* y, int stride = 0)
    {
        if (_embedRows == null)
        {
            throw new InvalidOperationException("The embedding table is gathered on the CPU kernel path only.");
        }

        if (_embedType != ScalarType.Float32)
        {
            CpuKernels.Gather((ushort*)_embedRows, _embedType, Config.VocabSize, ids, rows, y, Config.HiddenSize, stride);
        }
        else
        {
            CpuKernels.Gather((float*)_embedRows, Config.VocabSize, ids, rows, y, Config.HiddenSize, stride);
        }
    }

    /// <summary>Projects hidden rows [R, d] to f32 logits [R, V].</summary>
    public Tensor Logits(Tensor hidden)
    {
        if (hidden.dim() < 1 || hidden.shape[^1] != Config.HiddenSize)
        {
            throw new ArgumentException($"Expected hidden rows of width {Config.HiddenSize}, got [{string.Join(", ", hidden.shape)}].", nameof(hidden));
        }

        if (_packedHead is null || hidden.device_type != DeviceType.CPU || hidden.dtype != ScalarType.Float32)
        {
            return FinishLogits(DecoderLayer.Linear(hidden, _head, null));
        }

        if (hidden.dim() != 2)
        {
            using Tensor rows = hidden.reshape(-1, Config.HiddenSize);
            using Tensor flat = Logits(rows);
            return flat.reshape([.. hidden.shape[..^1], Config.VocabSize]);
        }

        Tensor x = hidden.contiguous();
        Tensor y = torch.empty([x.shape[0], Config.VocabSize], ScalarType.Float32);
        _packedHead.Multiply(CpuKernels.Pointer(x), (int)x.shape[0], CpuKernels.Pointer(y));
        return FinishLogits(y);
    }

    /// <summary>The logits <paramref name="y"/> (f32) finished in place where the model asks: divided by Granite's
    /// <c>logits_scaling</c>, soft-capped as c·tanh(l/c) by Gemma-2's <c>final_logit_softcapping</c>; the same arithmetic
    /// on every CPU path (<see cref="FinishLogits(Span{float})"/>), so tree rows and one-token rows keep equal bits.</summary>
    private Tensor FinishLogits(Tensor y)
    {
        if (Config.FinalLogitSoftcap is null && Config.LogitDivisor == 1f)
        {
            return y;
        }

        if (y.device_type == DeviceType.CPU && y.dtype == ScalarType.Float32 && y.is_contiguous())
        {
            FinishLogits(new Span<float>(CpuKernels.Pointer(y), checked((int)y.numel())));
            return y;
        }

        if (Config.LogitDivisor != 1f)
        {
            y = y.div_(Config.LogitDivisor);
        }

        return Config.FinalLogitSoftcap is double c ? y.div_(c).tanh_().mul_(c) : y;
    }

    /// <summary>Finishes f32 logits in place (see <see cref="FinishLogits(Tensor)"/>).</summary>
    private void FinishLogits(Span<float> logits)
    {
        if (Config.LogitDivisor != 1f)
        {
            TensorPrimitives.Divide(logits, Config.LogitDivisor, logits);
        }

        if (Config.FinalLogitSoftcap is double c)
        {
            TensorPrimitives.Multiply(logits, (float)(1 / c), logits);
            TensorPrimitives.Tanh(logits, logits);
            TensorPrimitives.Multiply(logits, (float)c, logits);
        }
    }

    /// <summary>Gets the int8 screen of the packed LM head, when there is one (<see cref="ArgMax"/>).</summary>
    internal ScreenedHead? Screen => _screenedHead;

    /// <summary>
    /// The greedy token of one hidden row [1, d]: the index of the largest logit that <see cref="Logits(Tensor)"/> would
    /// give (the first on ties), found through the int8 screen of the packed head with half its bytes; null when there is
    /// no screen (not the packed CPU path) or it was not decisive — then compute the logits.
    /// </summary>
    public int? ArgMax(Tensor hidden)
    {
        Span<int> token = stackalloc int[1];
        return hidden.numel() == Config.HiddenSize && TryArgMax(hidden, token) ? token[0] : null;
    }

    /// <summary>The greedy token of each hidden row [R, d] into <paramref name="tokens"/> (R entries), as
    /// <see cref="ArgMax"/>; false (nothing to use) when there is no screen or a row was not decided.</summary>
    public bool TryArgMax(Tensor hidden, Span<int> tokens)
    {
        long rows = hidden.numel() / Config.HiddenSize;
        if (_screenedHead is null || hidden.device_type != DeviceType.CPU || hidden.dtype != ScalarType.Float32
            || hidden.shape[^1] != Config.HiddenSize || rows != tokens.Length)
        {
            return false;
        }

        using Tensor x = hidden.contiguous();
        return _screenedHead.TryArgMax(CpuKernels.Pointer(x), (int)rows, tokens);
    }

    /// <summary>Projects hidden rows [R, d] to f32 logits written row after row into <paramref name="destination"/>
    /// (at least R·V floats): the packed head writes them there directly (no [R, V] tensor, no copy; a verified tree's
    /// rows are 200 KB each on the demo model), other heads go through <see cref="Logits(Tensor)"/> and a copy.</summary>
    public void Logits(Tensor hidden, Span<float> destination)
    {
        long rows = hidden.dim() == 2 ? hidden.shape[0] : 1;
        if (destination.Length < rows * Config.VocabSize)
        {
            throw new ArgumentException($"{rows} rows of logits need {rows * Config.VocabSize} floats; the destination holds {destination.Length}.", nameof(destination));
        }

        if (_packedHead is null || hidden.device_type != DeviceType.CPU || hidden.dtype != ScalarType.Float32 || hidden.dim() != 2
            || hidden.shape[1] != Config.HiddenSize)
        {
            using Tensor logits = Logits(hidden);
            using Tensor host = logits.device_type == DeviceType.CPU ? logits.contiguous() : logits.cpu().contiguous();
            MemoryMarshal.Cast<byte, float>(host.bytes).CopyTo(destination);
            return;
        }

        using Tensor x = hidden.contiguous();
        fixed (float* y = destination)
        {
            _packedHead.Multiply(CpuKernels.Pointer(x), (int)rows, y);
        }

        FinishLogits(destination[..(int)(rows * Config.VocabSize)]);
    }

    public void Dispose()
    {
        _screenedHead?.Dispose();
        foreach (DecoderLayer l in _layers)
        {
            l.Dispose();
        }

        _embed.Dispose();
        _finalNorm.Dispose();
        _head.Dispose();
        _rope.Dispose();
        _localRope?.Dispose();
        _noRope?.Dispose();
        _work?.Dispose();
        _packedHead?.Dispose();
    }
}

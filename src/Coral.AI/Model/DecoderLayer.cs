using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI;

/// <summary>What every layer of one forward shares: rotary tables for the new tokens, the mask, where they go in the cache.</summary>
/// <param name="Cos">[T, 1, hd] cosines at the new tokens' positions.</param>
/// <param name="SinSigned">[T, 1, hd] sines with rotate_half's sign folded in.</param>
/// <param name="Mask">[group·T, S] mask, additive (0 / −∞ in the cache's dtype; <see cref="TransformerModel.Forward"/>) or bool
/// (true = attend), or null when every cached slot and the (single) new token are visible.</param>
/// <param name="Start">The first cache slot of the new tokens.</param>
/// <param name="Count">The number of new tokens T.</param>
internal readonly record struct LayerInputs(Tensor Cos, Tensor SinSigned, Tensor? Mask, int Start, int Count);

/// <summary>What every layer of one CPU-kernel forward shares (<see cref="DecoderLayer.ForwardCpu"/>).</summary>
internal readonly unsafe struct CpuStep
{
    /// <summary>Creates the step.</summary>
    /// <param name="rows">Rows in the buffers: the new tokens, then copies padding them to whole f32 GEMM blocks (<see cref="TransformerModel.InvariantRows"/>).</param>
    /// <param name="count">New tokens T: rows whose K/V go into the cache.</param>
    /// <param name="start">The first cache slot of the new tokens.</param>
    /// <param name="positions">Each row's rotary position.</param>
    /// <param name="mask">[T, start + T] visibility (true = attend), or null when every slot is visible.</param>
    /// <param name="rope">The rotary tables.</param>
    public CpuStep(int rows, int count, int start, int[] positions, bool[]? mask, RotaryTables rope)
    {
        (Rows, Count, Start, Positions, Mask) = (rows, count, start, positions, mask);
        Cos = rope.CosPointer;
        SinSigned = rope.SinSignedPointer;
    }

    public int Rows { get; }

    public int Count { get; }

    public int Start { get; }

    public int[] Positions { get; }

    public bool[]? Mask { get; }

    public float* Cos { get; }

    public float* SinSigned { get; }
}

/// <summary>One sequence's rows within a CPU-kernel forward of several (<see cref="DecoderLayer.ForwardCpuBatch"/>):
/// its step, its cache, and the workspace row its rows start at.</summary>
internal readonly record struct CpuSegment(CpuStep Step, KvCache Cache, int Row);

/// <summary>One sequence's rows for <see cref="CpuKernels.AttentionSegments"/>: its q|k|v rows, their count, its cache,
/// the slots they see (<paramref name="Total"/>, masked by <paramref name="Mask"/>), and its first row in the output.</summary>
internal readonly record struct AttentionSegment(nint Qkv, int Count, KvCache Cache, int Total, bool[]? Mask, int Row);

/// <summary>
/// One Llama-family decoder layer with fused QKV and gate/up weights; used by the target (all layers) and by EAGLE-style
/// drafters (one layer without the input norm). Weights in the compute dtype, activations in f32.
/// </summary>
internal sealed unsafe class DecoderLayer : IDisposable
{
    private readonly Tensor? _attnNorm;   // [d] f32; null for an EAGLE drafter's layer 0
    // Projections are [out, in] in bf16, [in, out] in f32 (Projection); null once packed (PackedMatrix holds them then).
    private readonly Tensor? _qkv;        // [(H + 2Hkv)·hd, d]
    private readonly Tensor? _qkvBias;
    private readonly Tensor? _qkNorm;     // [H + Hkv, hd] f32 (Qwen3, Gemma-3); [(H + Hkv)·hd] over whole projections (OLMo-2)
    private readonly bool _qkNormWhole;
    private readonly Tensor? _o;          // [d, H·hd]
    private readonly Tensor? _oBias;
    private readonly Tensor? _mlpNorm;    // [d] f32; null for OLMo-2 (no norm before the MLP)
    private readonly Tensor? _postAttnNorm, _postMlpNorm;   // [d] f32 (Gemma's norms on the attention and MLP outputs)
    private readonly Tensor? _gateUp;     // [2·ff, d]
    private readonly Tensor? _down;       // [d, ff]
    private readonly int _heads, _kvHeads;
    private readonly long _headDim;
    private readonly double _eps;
    private readonly double _scale;
    private readonly double? _softcap;
    private readonly float _residualScale;
    private readonly bool _layerNorm, _parallel;   // Cohere: LayerNorms; attention and MLP on one normed input
    private readonly MlpActivation _activation;
    private readonly int _d, _ff;
    private readonly float* _attnNormP, _mlpNormP, _qkNormP, _qkvBiasP, _oBiasP, _postAttnNormP, _postMlpNormP;   // CPU f32 layers (CpuKernels)
    private readonly PackedMatrix? _qkvP, _oP, _gateUpP, _downP;                     // the same weights packed, when all are bf16 values

    /// <summary>Gets the layer's packed projections (none off the packed path).</summary>
    internal IEnumerable<PackedMatrix> PackedWeights => new[] { _qkvP, _oP, _gateUpP, _downP }.OfType<PackedMatrix>().Concat(_moe?.PackedWeights ?? []);
    private readonly ExpertMlp? _moe;                                                // a mixture of experts in place of the MLP

    private DecoderLayer(ModelConfig c, Tensor? attnNorm, Tensor? qkv, Tensor? qkvBias, Tensor? qkNorm, Tensor? o, Tensor? oBias,
        (Tensor? Mlp, Tensor? PostAttn, Tensor? PostMlp) norms, Tensor? gateUp, Tensor? down, bool cpuKernels, PackedMatrix[]? prepacked = null,
        ExpertMlp? moe = null)
    {
        // Experts run on the kernel path only packed; unpacked ones keep the whole layer (and so the model) on libtorch.
        UsesCpuKernels = prepacked is not null
            || (cpuKernels && CpuKernels.Enabled && qkv!.dtype == ScalarType.Float32 && qkv.device_type == DeviceType.CPU && moe is null);
        _moe = moe;
        (_attnNorm, _qkv, _qkvBias, _qkNorm, _o, _oBias, _gateUp, _down) = (attnNorm, qkv, qkvBias, qkNorm, o, oBias, gateUp, down);
        (_mlpNorm, _postAttnNorm, _postMlpNorm) = norms;
        _qkNormWhole = c.QkNormWholeProjection;
        (_layerNorm, _parallel) = (c.LayerNorms, c.ParallelBlock);
        (_heads, _kvHeads, _headDim, _eps) = (c.NumHeads, c.NumKvHeads, c.HeadDim, c.RmsNormEps);
        (_scale, _softcap, _activation, _residualScale) = (c.AttentionScale, c.AttentionSoftcap, c.Activation, c.ResidualScale);
        (_d, _ff) = (c.HiddenSize, c.IntermediateSize);
        if (UsesCpuKernels)
        {
            float* P(Tensor? t) => t is null ? null : CpuKernels.Pointer(t);
            _attnNormP = P(attnNorm);
            _mlpNormP = P(_mlpNorm);
            _postAttnNormP = P(_postAttnNorm);
            _postMlpNormP = P(_postMlpNorm);
            _qkNormP = P(qkNorm);
            _qkvBiasP = P(qkvBias);
            _oBiasP = P(oBias);
            if (prepacked is not null)
            {
                // No f32 copies exist (the kernel path is this layer's only path): a 7B model loaded as f32 keeps 14 GB
                // of packed weights instead of 28 GB of f32.
                (_qkvP, _oP) = (prepacked[0], prepacked[1]);
                (_gateUpP, _downP) = prepacked.Length == 4 ? (prepacked[2], prepacked[3]) : (null, null);   // experts: _moe
            }
        }
    }

    /// <summary>Gets whether <see cref="ForwardCpu"/> multiplies by <see cref="PackedMatrix"/> weights (batch-invariant
    /// for any row count) rather than libtorch's f32 GEMMs (batch-invariant only in whole blocks of rows). Packing happens only straight
    /// from the checkpoint's rows (<see cref="TryPackDirect"/>): no f32 copy of a packed layer is ever made.</summary>
    public bool UsesPackedWeights => _qkvP is not null;

    /// <summary>Gets whether the layer's Q8_0 projections multiply int8 activations (<see cref="PackedMatrix.UsesInt8Activations"/>).</summary>
    public bool UsesInt8Activations => _qkvP?.UsesInt8Activations == true;

    /// <summary>Gets whether <see cref="ForwardCpu"/> runs this layer: f32 weights on CPU, kernels enabled.</summary>
    public bool UsesCpuKernels { get; }

    /// <summary>Loads the tensors under <paramref name="prefix"/> (e.g. <c>model.layers.3.</c> or <c>layers.0.</c>);
    /// <paramref name="cpuKernels"/> false keeps f32 CPU layers on the libtorch path; <paramref name="packed"/> false keeps the
    /// kernel path's GEMMs in libtorch even for bf16-valued weights; <paramref name="quantization"/> (Q8_0, Q4_0) quantizes
    /// the projections (packed as such blocks, or their quantized values in f32 on libtorch).</summary>
    public static DecoderLayer Load(CheckpointReader reader, string prefix, ModelConfig c, ScalarType dtype, Device device, bool inputNorm,
        bool cpuKernels = true, bool packed = true, bool roundToBf16 = false, bool moe = false, WeightQuantization quantization = WeightQuantization.None)
    {
        long d = c.HiddenSize, hd = c.HeadDim, nq = c.NumHeads * hd, nkv = c.NumKvHeads * hd, ff = c.IntermediateSize;
        Tensor W(string name, params long[] shape) => reader.Take(prefix + name, shape, dtype, device);
        Tensor Norm(string name, long n) => LoadNorm(reader, prefix + name, n, c, device);
        // A Llama's pre-MLP norm is post_attention_layernorm; Gemma's normalises the attention output, and
        // pre/post_feedforward_layernorm surround the MLP.
        (Tensor?, Tensor?, Tensor?) Norms() => c.NormPlacement switch
        {
            NormPlacement.Sandwich => (Norm("pre_feedforward_layernorm.weight", d), Norm("post_attention_layernorm.weight", d), Norm("post_feedforward_layernorm.weight", d)),
            NormPlacement.Post => (null, Norm("post_attention_layernorm.weight", d), Norm("post_feedforward_layernorm.weight", d)),
            _ when c.ParallelBlock => (null, null, null),   // Cohere: the MLP reads the attention's normed input
            _ => (Norm("post_attention_layernorm.weight", d), null, null),
        };
        inputNorm &= c.NormPlacement != NormPlacement.Post;
        Tensor? QkvBias() => c.QkvBias
            ? Reorder(torch.cat([W("self_attn.q_proj.bias", nq), W("self_attn.k_proj.bias", nkv), W("self_attn.v_proj.bias", nkv)]), RotaryRows(c), 0)
            : null;
        Tensor? QkNorm() => c.QkNorm && c.QkNormWholeProjection
            ? Reorder(torch.cat([Norm("self_attn.q_norm.weight", nq), Norm("self_attn.k_norm.weight", nkv)]), RotaryRows(c)?[..(int)(nq + nkv)], 0)
            : c.QkNorm
            ? Reorder(torch.cat([Norm("self_attn.q_norm.weight", hd).unsqueeze(0).expand(c.NumHeads, hd), Norm("self_attn.k_norm.weight", hd).unsqueeze(0).expand(c.NumKvHeads, hd)]),
                c.RotaryOrder()?.Select(i => (long)i).ToArray(), 1)
            : null;

        // q|k|v and gate|up as the forward fuses them: concatenated, or as a Phi-3 checkpoint already stores them.
        Tensor Fused(string[] names, long[] rows, string fusedName)
        {
            if (c.FusedProjections)
            {
                return W(fusedName, rows.Sum(), d);
            }

            Tensor[] parts = names.Select((n, i) => W(n, rows[i], d)).ToArray();
            try
            {
                return torch.cat(parts);
            }
            finally
            {
                Array.ForEach(parts, t => t.Dispose());
            }
        }

        if (packed && PackedMatrix.Enabled && cpuKernels && CpuKernels.Enabled && dtype == ScalarType.Float32 && device.type == DeviceType.CPU
            && TryPackDirect(reader, prefix, c, roundToBf16, moe, quantization) is PackedMatrix[] direct)
        {
            // The kernel path packed straight from the checkpoint's [out, in] rows (a bf16 checkpoint's mapped tensors):
            // no f32 copy, no concatenation, no transpose. The norms and biases are small and f32 as always.
            ExpertMlp? experts = moe ? ExpertMlp.Load(reader, prefix, c, dtype, device, pack: true, roundToBf16, Projection, quantization) : null;
            if (!moe || experts is not null)
            {
                using var scope = torch.NewDisposeScope();
                var (mlpNorm, postAttn, postMlp) = Norms();
                return new DecoderLayer(c, inputNorm ? Norm("input_layernorm.weight", d).MoveToOuterDisposeScope() : null, null,
                    QkvBias()?.MoveToOuterDisposeScope(), QkNorm()?.MoveToOuterDisposeScope(), null,
                    c.OutputBias ? W("self_attn.o_proj.bias", d).MoveToOuterDisposeScope() : null,
                    (mlpNorm?.MoveToOuterDisposeScope(), postAttn?.MoveToOuterDisposeScope(), postMlp?.MoveToOuterDisposeScope()), null, null, cpuKernels, direct,
                    experts);
            }

            Array.ForEach(direct, m => m.Dispose());   // experts that cannot pack: the whole layer on libtorch
        }

        Tensor? qkvBias, qkNorm;
        using (var scope = torch.NewDisposeScope())
        {
            (qkvBias, qkNorm) = (QkvBias()?.MoveToOuterDisposeScope(), QkNorm()?.MoveToOuterDisposeScope());
        }

        // Quantized weights as their quantized values (f32) on this path (a value that is not finite fails naming the tensor:
        // the kernel path's packing refused it and came here).
        Tensor Q(Tensor t, string name)
        {
            using (t)
            {
                return QuantBlocks.Apply(t, quantization, reader.Folder, prefix + name);
            }
        }

        using Tensor o = Q(W("self_attn.o_proj.weight", d, nq), "self_attn.o_proj.weight");
        using Tensor qkv = Q(Reorder(Fused(["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], [nq, nkv, nkv], "self_attn.qkv_proj.weight"),
            RotaryRows(c), 0), "self_attn.{q,k,v}_proj.weight");
        if (moe)
        {
            ExpertMlp experts = ExpertMlp.Load(reader, prefix, c, dtype, device, pack: false, roundToBf16, Projection, quantization)!;
            return new DecoderLayer(c, inputNorm ? Norm("input_layernorm.weight", d) : null, Projection(qkv), qkvBias, qkNorm, Projection(o),
                c.OutputBias ? W("self_attn.o_proj.bias", d) : null, Norms(), null, null, cpuKernels, moe: experts);
        }

        using Tensor down = Q(W("mlp.down_proj.weight", d, ff), "mlp.down_proj.weight");
        using Tensor gateUp = Q(Fused(["mlp.gate_proj.weight", "mlp.up_proj.weight"], [ff, ff], "mlp.gate_up_proj.weight"), "mlp.{gate,up}_proj.weight");
        return new DecoderLayer(
            c,
            inputNorm ? Norm("input_layernorm.weight", d) : null,
            Projection(qkv),
            qkvBias,
            qkNorm,
            Projection(o),
            c.OutputBias ? W("self_attn.o_proj.bias", d) : null,
            Norms(),
            Projection(gateUp),
            Projection(down),
            cpuKernels);
    }

    /// <summary>The four packed projections (q|k|v, o, gate|up, down) made from the stored rows, or null when a weight is not
    /// all bf16 values (the layer then keeps libtorch's f32 GEMMs) or not stored as f32/bf16/f16. A layer stored in f16
    /// packs its f16 values as they are (exact); with <paramref name="round"/> (a drafter's layer) f32 values — and f16
    /// ones in a layer that mixes dtypes — are rounded to bf16 instead of refused. With <paramref name="quantization"/>
    /// Q8_0 or Q4_0 the projections are quantized from whatever float dtype they are stored in.</summary>
    private static PackedMatrix[]? TryPackDirect(CheckpointReader reader, string prefix, ModelConfig c, bool round, bool moe, WeightQuantization quantization)
    {
        long d = c.HiddenSize, hd = c.HeadDim, nq = c.NumHeads * hd, nkv = c.NumKvHeads * hd, ff = c.IntermediateSize;
        // Each packed projection's parts: q|k|v, o, gate|up, down (Phi-3 stores q|k|v and gate|up fused already).
        string[][] names = c.FusedProjections
            ? [["self_attn.qkv_proj.weight"], ["self_attn.o_proj.weight"], ["mlp.gate_up_proj.weight"], ["mlp.down_proj.weight"]]
            : [["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], ["self_attn.o_proj.weight"],
                ["mlp.gate_proj.weight", "mlp.up_proj.weight"], ["mlp.down_proj.weight"]];
        long[][][] shapes = c.FusedProjections
            ? [[[nq + 2 * nkv, d]], [[d, nq]], [[2 * ff, d]], [[d, ff]]]
            : [[[nq, d], [nkv, d], [nkv, d]], [[d, nq]], [[ff, d], [ff, d]], [[d, ff]]];
        if (moe)
        {
            (names, shapes) = (names[..2], shapes[..2]);   // q|k|v and o: the experts pack on their own (ExpertMlp)
        }

        string[] all = names.SelectMany(n => n).ToArray();
        if (all.Any(n => !reader.Contains(prefix + n)
            || reader.StoredType(prefix + n) is not (ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float16)))
        {
            return null;   // missing (the f32 path names it)
        }

        bool f16 = all.All(n => reader.StoredType(prefix + n) == ScalarType.Float16);
        if (!f16 && !round && quantization == WeightQuantization.None && all.Any(n => reader.StoredType(prefix + n) == ScalarType.Float16))
        {
            return null;   // f16 mixed with other dtypes: values bf16 cannot all hold
        }

        ScalarType Read(string name) => reader.StoredType(name) switch
        {
            ScalarType.BFloat16 => ScalarType.BFloat16,
            ScalarType.Float16 when f16 => ScalarType.Float16,
            _ => ScalarType.Float32,
        };

        using var scope = torch.NewDisposeScope();
        Tensor[] Parts(int j)
        {
            Tensor[] parts = names[j].Select((n, i) => reader.Take(prefix + n, shapes[j][i], Read(prefix + n), torch.CPU)).ToArray();
            return j == 0 && RotaryRows(c) is long[] order ? [Reorder(torch.cat(parts), order, 0)] : parts;   // partial rotation
        }

        // A GGUF file's Q4_K projections stay the file's blocks where Q8_0 would be made (same values, fewer bytes).
        PackedMatrix? Blocks(int j) =>
            quantization == WeightQuantization.Q8_0 && names[j].Select(n => reader.Q4Blocks(prefix + n)).ToArray() is var blocks && blocks.All(b => b is not null)
                ? PackedMatrix.TryFromBlocks([.. blocks.Select(b => b!.Value)], (int)shapes[j][0][1], j == 0 ? RotaryRows(c) : null)
                : null;
        PackedMatrix?[] p = Enumerable.Range(0, names.Length).Select(j => Blocks(j) ?? PackedMatrix.TryPack(Parts(j), round, quantization)).ToArray();
        if (p.All(m => m is not null))
        {
            return p!;
        }

        Array.ForEach(p, m => m?.Dispose());
        return null;
    }

    /// <summary>An RMSNorm weight [n] in f32 as the forward multiplies by it: Gemma's stored offsets from one get the one
    /// added (<see cref="ModelConfig.NormWeightsOffsetByOne"/>; in f32, as transformers computes 1 + w).</summary>
    internal static Tensor LoadNorm(CheckpointReader reader, string name, long n, ModelConfig c, Device device)
    {
        Tensor w = reader.Take(name, [n], ScalarType.Float32, device);
        if (!c.NormWeightsOffsetByOne)
        {
            return w;
        }

        using (w)
        {
            return w + 1;   // not in place: an f32-stored weight may be a view of the mapped file
        }
    }

    /// <summary>The rows of q|k|v (or of its bias) in the forward's rotary order (<see cref="ModelConfig.RotaryOrder"/>):
    /// each q and k head's dimensions reordered, v's rows kept; null when every dimension rotates.</summary>
    internal static long[]? RotaryRows(ModelConfig c)
    {
        if (c.RotaryOrder() is not int[] order)
        {
            return null;
        }

        int hd = c.HeadDim, qk = c.NumHeads + c.NumKvHeads;
        return Enumerable.Range(0, (qk + c.NumKvHeads) * hd)
            .Select(row => (long)(row < qk * hd ? (row / hd * hd) + order[row % hd] : row)).ToArray();
    }

    /// <summary><paramref name="t"/> with its entries along <paramref name="dim"/> taken in <paramref name="order"/> (the
    /// input disposed), or <paramref name="t"/> itself when the order is null.</summary>
    private static Tensor Reorder(Tensor t, long[]? order, int dim)
    {
        if (order is null)
        {
            return t;
        }

        using (t)
        using (Tensor index = torch.tensor(order, device: t.device))
        {
            return t.index_select(dim, index);
        }
    }

    /// <summary>
    /// A projection weight [out, in] as the layer keeps it: f32 transposed to [in, out] (contiguous), because on CPU
    /// x·W with that layout runs up to 2× faster than <c>F.linear</c> on the [out, in] layout for a few rows (measured:
    /// 16 × 256 → 1536 in 97 µs vs 185 µs; one row 17 vs 28 µs, <c>Coral.Bench --profile</c>); bf16 keeps [out, in],
    /// where <c>F.linear</c> is the faster form.
    /// </summary>
    private static Tensor Projection(Tensor w)
    {
        if (w.dtype != ScalarType.Float32)
        {
            return w.alias();
        }

        using Tensor t = w.t();
        return t.contiguous();
    }

    /// <summary>
    /// Runs the layer on x [R, d] (f32), writing the K/V of its first <see cref="LayerInputs.Count"/> rows into
    /// <paramref name="keys"/>/<paramref name="values"/> [1, Hkv, cap, hd]. R exceeds the count only for a one-token step
    /// padded to whole f32 GEMM blocks (see <see cref="TransformerModel.Forward"/>).
    /// </summary>
    public Tensor Forward(Tensor x, in LayerInputs s, Tensor keys, Tensor values)
    {
        if (_qkv is null)
        {
            throw new InvalidOperationException("This layer's weights are packed: it runs on the CPU kernels (ForwardCpu) only.");
        }

        int t = s.Count, rows = (int)x.shape[0], group = _heads / _kvHeads;
        long hd = _headDim;
        Tensor h = _attnNorm is null ? x : Norm(x, _attnNorm);
        // Projections return the weight's dtype. The o and down results go into the f32 residual adds as they are (type
        // promotion converts bf16 exactly, at the cost of a separate cast); qkv is cast once, since RoPE's mixed-dtype
        // products would cost more than the cast (measured: 13.1 vs 11.5 µs for one row).
        Tensor qkv = Project(h, _qkv!, _qkvBias);                                   // [R, (H + 2Hkv)·hd]
        if (qkv.dtype != ScalarType.Float32)
        {
            qkv = qkv.to(ScalarType.Float32);
        }

        Tensor qk = qkv.narrow(1, 0, (_heads + _kvHeads) * hd);
        if (_qkNorm is not null && _qkNormWhole)
        {
            // OLMo-2: q over all its heads, k over all its heads.
            qk = torch.cat([RmsNorm(qk.narrow(1, 0, _heads * hd), _qkNorm.narrow(0, 0, _heads * hd), _eps),
                RmsNorm(qk.narrow(1, _heads * hd, _kvHeads * hd), _qkNorm.narrow(0, _heads * hd, _kvHeads * hd), _eps)], 1);
        }

        qk = qk.view(rows, _heads + _kvHeads, hd);
        if (_qkNorm is not null && !_qkNormWhole)
        {
            qk = RmsNorm(qk, _qkNorm, _eps);
        }

        qk = qk * s.Cos + qk.roll(hd / 2, -1) * s.SinSigned;                       // RoPE on q and k together
        Tensor k = qk.narrow(1, _heads, _kvHeads);                                 // [R, Hkv, hd]
        Tensor v = qkv.narrow(1, (_heads + _kvHeads) * hd, _kvHeads * hd).view(rows, _kvHeads, hd);
        if (rows != t)
        {
            (k, v) = (k.narrow(0, 0, t), v.narrow(0, 0, t));
        }

        keys.narrow(2, s.Start, t).copy_(k.transpose(0, 1));                        // [Hkv, t, hd] into [1, Hkv, t, hd]
        values.narrow(2, s.Start, t).copy_(v.transpose(0, 1));
        int total = s.Start + t;
        // Query heads sharing a KV head become rows of one attention call: [1, Hkv, group·R, hd].
        Tensor q = qk.narrow(1, 0, _heads).reshape(rows, _kvHeads, group, hd).permute(1, 2, 0, 3).reshape(1, _kvHeads, group * rows, hd);
        Tensor k4 = keys.narrow(2, 0, total), v4 = values.narrow(2, 0, total);
        // Fused SDPA in the cache's dtype (f32: accumulation order depends on the batch; f64 cache: batch-invariant, for
        // speculative engines), or the explicit form for a scale other than 1/√hd or a soft cap.
        Tensor att = Attention(q, k4, v4, s.Mask, _scale, _softcap);
        Tensor o = Project(att.view(_kvHeads, group, rows, hd).permute(2, 0, 1, 3).reshape(rows, _heads * hd), _o!, _oBias);
        x = x + Branch(_postAttnNorm is null ? o : RmsNorm(o, _postAttnNorm, _eps));

        Tensor mlpIn = _parallel ? h : _mlpNorm is null ? x : Norm(x, _mlpNorm);
        Tensor mlp;
        if (_moe is not null)
        {
            mlp = _moe.Forward(mlpIn, (a, w) => Project(a, w, null));
        }
        else
        {
            Tensor gateUp = Project(mlpIn, _gateUp!, null);
            Tensor[] gu = (gateUp.dtype == ScalarType.Float32 ? gateUp : gateUp.to(ScalarType.Float32)).chunk(2, -1);   // SwiGLU/GeGLU in f32
            mlp = Project((_activation == MlpActivation.GeluTanh ? GeluTanh(gu[0]) : F.silu(gu[0])) * gu[1], _down!, null);
        }

        return x + Branch(_postMlpNorm is null ? mlp : RmsNorm(mlp, _postMlpNorm, _eps));
    }

    /// <summary>A residual branch's output as it is added: times Granite's <c>residual_multiplier</c> (1 elsewhere).</summary>
    private Tensor Branch(Tensor y) => _residualScale == 1f ? y : y * _residualScale;

    /// <summary>gelu with the tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as <c>gelu_pytorch_tanh</c>.</summary>
    private static Tensor GeluTanh(Tensor x) => x * 0.5 * ((x + x.pow(3) * 0.044715) * Math.Sqrt(2 / Math.PI)).tanh_().add_(1);

    /// <summary>
    /// Runs the layer on the workspace's residual stream <see cref="CpuWorkspace.X"/> [rows, d] in place: the four GEMMs
    /// by <see cref="PackedMatrix"/> (or, for weights that are not all bf16 values, in libtorch: <c>addmm_</c> into the
    /// workspace), everything else in <see cref="CpuKernels"/>. K/V of the first
    /// <see cref="CpuStep.Count"/> rows go to slots from <see cref="CpuStep.Start"/> of the cache's layer (f32, keys transposed:
    /// <see cref="KvCache.KeyStride"/>).
    /// </summary>
    public void ForwardCpu(in CpuStep s, CpuWorkspace work, in CpuWorkspace.Views v, KvCache cache, int layer)
    {
        var one = new CpuSegment(s, cache, 0);
        ForwardCpuBatch(new ReadOnlySpan<CpuSegment>(in one), s.Rows, work, v, layer);
    }

    /// <summary>
    /// Runs the layer on the rows of several sequences at once (continuous batching): the GEMMs, norms and activations
    /// over all <paramref name="rows"/>, RoPE and attention per segment against its own cache. Every row computes the
    /// bits it computes alone where the GEMMs are batch-invariant (<see cref="PackedMatrix"/> weights).
    /// </summary>
    public void ForwardCpuBatch(ReadOnlySpan<CpuSegment> segments, int rows, CpuWorkspace work, in CpuWorkspace.Views v, int layer)
    {
        int hd = (int)_headDim, qkvWidth = (_heads + 2 * _kvHeads) * hd;
        float eps = (float)_eps;
        Tensor input = v.X;
        float* inputP = work.X;
        if (_attnNorm is not null)
        {
            CpuKernels.Norm(_layerNorm, work.X, _attnNormP, work.H, rows, _d, eps);
            input = v.H;
            inputP = work.H;
        }

        Gemm(_qkvP, _qkv, input, inputP, v.Qkv, work.Qkv, rows);
        if (_qkvBiasP != null)
        {
            CpuKernels.AddRows(work.Qkv, _qkvBiasP, rows, qkvWidth);
        }

        if (_qkNormWhole)
        {
            // OLMo-2: q over all its heads, k over all its heads, before RoPE.
            for (int r = 0; r < rows; r++)
            {
                float* q = work.Qkv + ((long)r * qkvWidth), k = q + (_heads * hd);
                CpuKernels.RmsNorm(q, _qkNormP, q, 1, _heads * hd, eps);
                CpuKernels.RmsNorm(k, _qkNormP + (_heads * hd), k, 1, _kvHeads * hd, eps);
            }
        }

        foreach (ref readonly CpuSegment g in segments)
        {
            CpuStep s = g.Step;
            CpuKernels.RopeAndCache(work.Qkv + ((long)g.Row * qkvWidth), s.Rows, s.Count, qkvWidth, _heads, _kvHeads, hd, s.Cos, s.SinSigned, s.Positions,
                _qkNormWhole ? null : _qkNormP, eps, g.Cache, layer, s.Start);
        }

        if (segments.Length == 1)
        {
            CpuStep s = segments[0].Step;
            CpuKernels.Attention(work.Qkv, s.Rows, s.Count, qkvWidth, _heads, _kvHeads, hd, segments[0].Cache, layer, s.Start + s.Count, s.Mask,
                (float)_scale, work.O, (float)(_softcap ?? 0));
        }
        else
        {
            // Several sequences (continuous batching): one dispatch for all their (row, head) parts.
            var parts = new AttentionSegment[segments.Length];
            for (int i = 0; i < parts.Length; i++)
            {
                CpuStep s = segments[i].Step;
                parts[i] = new AttentionSegment((nint)(work.Qkv + ((long)segments[i].Row * qkvWidth)), s.Count, segments[i].Cache, s.Start + s.Count, s.Mask, segments[i].Row);
            }

            CpuKernels.AttentionSegments(parts, qkvWidth, _heads, _kvHeads, hd, layer, (float)_scale, work.O, (float)(_softcap ?? 0));
            // Rows past the last segment pad the batch to whole GEMM blocks (TransformerModel.InvariantRows): row 0's output.
            long width = (long)_heads * hd;
            for (int r = segments[^1].Row + segments[^1].Step.Count; r < rows; r++)
            {
                new ReadOnlySpan<float>(work.O, (int)width).CopyTo(new Span<float>(work.O + (r * width), (int)width));
            }
        }

        Gemm(_oP, _o, v.O, work.O, v.Proj, work.Proj, rows);
        if (_oBiasP != null)
        {
            CpuKernels.AddRows(work.Proj, _oBiasP, rows, _d);
        }

        if (_postAttnNormP != null)
        {
            CpuKernels.RmsNorm(work.Proj, _postAttnNormP, work.Proj, rows, _d, eps);
        }

        AddBranch(work, rows);
        if (_mlpNormP != null)
        {
            CpuKernels.Norm(_layerNorm, work.X, _mlpNormP, work.H, rows, _d, eps);
        }

        if (_moe is not null)
        {
            _moe.ForwardCpu(_mlpNormP != null ? work.H : work.X, rows, work.Proj);
            if (_postMlpNormP != null)
            {
                CpuKernels.RmsNorm(work.Proj, _postMlpNormP, work.Proj, rows, _d, eps);
            }

            AddBranch(work, rows);
            return;
        }

        if (_mlpNormP != null || _parallel)
        {
            Gemm(_gateUpP, _gateUp, v.H, work.H, v.GateUp, work.GateUp, rows);   // (Cohere: H is still the layer's normed input)
        }
        else
        {
            Gemm(_gateUpP, _gateUp, v.X, work.X, v.GateUp, work.GateUp, rows);   // OLMo-2: the residual stream itself
        }
        if (_activation == MlpActivation.GeluTanh)
        {
            CpuKernels.GeluTanhMul(work.GateUp, work.Act, rows, _ff);
        }
        else
        {
            CpuKernels.SiluMul(work.GateUp, work.Act, rows, _ff);
        }

        Gemm(_downP, _down, v.Act, work.Act, v.Proj, work.Proj, rows);
        if (_postMlpNormP != null)
        {
            CpuKernels.RmsNorm(work.Proj, _postMlpNormP, work.Proj, rows, _d, eps);
        }

        AddBranch(work, rows);
    }

    /// <summary>x += the branch output in <see cref="CpuWorkspace.Proj"/>, times the residual multiplier (Granite).</summary>
    private void AddBranch(CpuWorkspace work, int rows)
    {
        long n = (long)rows * _d;
        if (_residualScale != 1f)
        {
            var proj = new Span<float>(work.Proj, checked((int)n));
            System.Numerics.Tensors.TensorPrimitives.Multiply(proj, _residualScale, proj);
        }

        CpuKernels.Add(work.X, work.Proj, n);
    }

    /// <summary>y = x · w into the workspace: the packed weight when there is one, else libtorch's <c>addmm_</c> (β = 0).</summary>
    private static void Gemm(PackedMatrix? packed, Tensor? w, Tensor x, float* xP, Tensor y, float* yP, int rows)
    {
        if (packed is null)
        {
            y.addmm_(x, w!, 0, 1);
        }
        else
        {
            packed.Multiply(xP, rows, yP);
        }
    }

    /// <summary>
    /// Softmax attention in the KV cache's dtype (a bf16 cache's explicit form takes the softmax in f32). With the f64 cache used on CPU, a query's result does not depend on
    /// how many queries share the call or which masked keys sit between the keys it sees: dot products, the softmax sum
    /// and the weighted sum over values all accumulate in f64, so their f32 result is the same (short of an exact rounding
    /// tie) whether a token runs alone or as a node of a verified tree. That keeps speculative greedy decoding token-
    /// identical to plain greedy decoding in bf16 too; fused f32 SDPA's accumulation order shifts with both.
    /// </summary>
    /// <remarks>A scale other than 1/√hd (Gemma's <c>query_pre_attn_scalar</c>) or a soft cap c on the scores
    /// (c·tanh(s/c), Gemma-2) is computed step by step: scores, cap, mask, softmax, weighted sum.</remarks>
    public static Tensor Attention(Tensor q, Tensor keys, Tensor values, Tensor? mask, double scale, double? softcap = null)
    {
        q = q.to(keys.dtype);
        if (softcap is null && scale == 1.0 / Math.Sqrt(q.shape[^1]))
        {
            return F.scaled_dot_product_attention(q, keys, values, mask).to(ScalarType.Float32);
        }

        // A bf16 cache: the products in bf16, the softmax in f32.
        Tensor scores = q.matmul(keys.transpose(-2, -1));
        scores = (scores.dtype == ScalarType.BFloat16 ? scores.to(ScalarType.Float32) : scores).mul_(scale);
        if (softcap is double c)
        {
            scores = scores.div_(c).tanh_().mul_(c);
        }

        if (mask is not null)
        {
            // A bool mask (true = attend) or an additive one (0 / −∞).
            scores = mask.dtype == ScalarType.Bool ? scores.masked_fill(mask.logical_not(), double.NegativeInfinity) : scores.add_(mask);
        }

        return scores.softmax(-1).to(values.dtype).matmul(values).to(ScalarType.Float32);
    }

    /// <summary>x [T, in] through a layer projection kept by <see cref="Projection"/> (f32 [in, out] or bf16 [out, in]); the
    /// result is in the weight's dtype.</summary>
    private static Tensor Project(Tensor x, Tensor w, Tensor? b)
    {
        if (w.dtype != ScalarType.Float32)
        {
            return F.linear(x.to(w.dtype), w, b);
        }

        Tensor y = x.matmul(w);
        return b is null ? y : y.add_(b);
    }

    /// <summary>x [T, in] through a weight [out, in] in its own dtype; the result is f32.</summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? b) =>
        w.dtype == ScalarType.Float32 ? F.linear(x, w, b) : F.linear(x.to(w.dtype), w, b).to(ScalarType.Float32);

    /// <summary>The layer's norm (see <see cref="Norm(Tensor, Tensor, double, bool)"/>).</summary>
    private Tensor Norm(Tensor x, Tensor w) => Norm(x, w, _eps, _layerNorm);

    /// <summary>The model's norm: RMSNorm, or Cohere's LayerNorm without bias, (x − mean) · rsqrt(var + eps) · w.</summary>
    public static Tensor Norm(Tensor x, Tensor w, double eps, bool layerNorm) =>
        layerNorm ? F.layer_norm(x, [x.shape[^1]], w, null, eps) : RmsNorm(x, w, eps);

    public static Tensor RmsNorm(Tensor x, Tensor w, double eps) =>
        x * (x.square().mean([-1L], keepdim: true) + eps).rsqrt() * w;

    public void Dispose()
    {
        foreach (Tensor? t in new[] { _attnNorm, _qkv, _qkvBias, _qkNorm, _o, _oBias, _mlpNorm, _postAttnNorm, _postMlpNorm, _gateUp, _down })
        {
            t?.Dispose();
        }

        foreach (PackedMatrix? m in new[] { _qkvP, _oP, _gateUpP, _downP })
        {
            m?.Dispose();
        }

        _moe?.Dispose();
    }
}

using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI;

/// <summary>
/// A Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) written for per-op overhead: fused QKV and gate/up weights,
/// RoPE in three ops on q and k together, grouped-query attention without copying K/V, the KV cache written in place.
/// </summary>
/// <remarks>
/// Precision is "mixed": weights in <see cref="WeightType"/> (bf16 or f32) for the GEMMs; residual stream, norms, RoPE,
/// attention and the KV cache in f32. Every public call expects to run inside one dispose scope per step.
/// </remarks>
internal sealed class TransformerModel : IDisposable
{
    private readonly Layer[] _layers;
    private readonly Tensor _embed;       // [V, d], WeightType
    private readonly Tensor _finalNorm;   // [d], f32
    private readonly Tensor _head;        // f32: [d, V] (transposed, for matmul); bf16: [V, d] (for linear)
    private readonly Tensor _cos;         // [maxPos, hd] f32
    private readonly Tensor _sinSigned;   // [maxPos, hd] f32, rotate_half's sign folded in
    private readonly CheckpointReader _reader;

    private TransformerModel(ModelConfig config, Device device, ScalarType weightType, CheckpointReader reader, Layer[] layers,
        Tensor embed, Tensor finalNorm, Tensor head, Tensor cos, Tensor sinSigned)
    {
        Config = config;
        Device = device;
        WeightType = weightType;
        _reader = reader;
        _layers = layers;
        _embed = embed;
        _finalNorm = finalNorm;
        _head = head;
        _cos = cos;
        _sinSigned = sinSigned;
    }

    public ModelConfig Config { get; }

    public Device Device { get; }

    public ScalarType WeightType { get; }

    /// <summary>Gets the token embedding table [V, d] (shared with drafters, never copied).</summary>
    public Tensor Embedding => _embed;

    /// <summary>Gets the number of rotary positions precomputed (the hard context limit).</summary>
    public int MaxPositions => (int)_cos.shape[0];

    public static TransformerModel Load(string folder, Device device, ScalarType weightType, int maxPositions)
    {
        if (weightType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new ArgumentException($"Unsupported compute dtype {weightType}.", nameof(weightType));
        }

        ModelConfig c = ModelConfig.Load(Path.Combine(folder, "config.json"));
        var reader = new CheckpointReader(folder);
        try
        {
            using var noGrad = torch.no_grad();
            long d = c.HiddenSize, hd = c.HeadDim, nq = c.NumHeads * hd, nkv = c.NumKvHeads * hd, ff = c.IntermediateSize;
            Tensor W(string name, params long[] shape) => reader.Take(name, shape, weightType).to(device);
            Tensor Norm(string name, long n) => reader.Take(name, [n], ScalarType.Float32).to(device);

            var layers = new Layer[c.NumLayers];
            for (int i = 0; i < c.NumLayers; i++)
            {
                string p = $"model.layers.{i}.";
                using Tensor q = W(p + "self_attn.q_proj.weight", nq, d);
                using Tensor k = W(p + "self_attn.k_proj.weight", nkv, d);
                using Tensor v = W(p + "self_attn.v_proj.weight", nkv, d);
                using Tensor gate = W(p + "mlp.gate_proj.weight", ff, d);
                using Tensor up = W(p + "mlp.up_proj.weight", ff, d);
                Tensor? qkvBias = null;
                if (c.QkvBias)
                {
                    using Tensor bq = W(p + "self_attn.q_proj.bias", nq);
                    using Tensor bk = W(p + "self_attn.k_proj.bias", nkv);
                    using Tensor bv = W(p + "self_attn.v_proj.bias", nkv);
                    qkvBias = torch.cat([bq, bk, bv]);
                }

                Tensor? qkNorm = null;
                if (c.QkNorm)
                {
                    using Tensor qn = Norm(p + "self_attn.q_norm.weight", hd);
                    using Tensor kn = Norm(p + "self_attn.k_norm.weight", hd);
                    qkNorm = torch.cat([qn.unsqueeze(0).expand(c.NumHeads, hd), kn.unsqueeze(0).expand(c.NumKvHeads, hd)]);
                }

                layers[i] = new Layer(
                    Norm(p + "input_layernorm.weight", d),
                    torch.cat([q, k, v]),
                    qkvBias,
                    qkNorm,
                    W(p + "self_attn.o_proj.weight", d, nq),
                    c.OutputBias ? W(p + "self_attn.o_proj.bias", d) : null,
                    Norm(p + "post_attention_layernorm.weight", d),
                    torch.cat([gate, up]),
                    W(p + "mlp.down_proj.weight", d, ff));
            }

            Tensor embed = W("model.embed_tokens.weight", c.VocabSize, d);
            Tensor finalNorm = Norm("model.norm.weight", d);
            Tensor head;
            if (c.TieWordEmbeddings)
            {
                head = weightType == ScalarType.Float32 ? embed.t().contiguous() : embed.alias();
            }
            else
            {
                using Tensor lm = W("lm_head.weight", c.VocabSize, d);
                head = weightType == ScalarType.Float32 ? lm.t().contiguous() : lm.contiguous();
            }

            var (cos, sin) = BuildRope(c, Math.Min(maxPositions, Math.Max(c.MaxPositionEmbeddings, 1)), device);
            return new TransformerModel(c, device, weightType, reader, layers, embed, finalNorm, head, cos, sin);
        }
        catch
        {
            reader.Dispose();
            throw;
        }
    }

    public KvCache CreateCache(int capacity) => new(Config, Math.Min(capacity, MaxPositions), ScalarType.Float32, Device);

    /// <summary>
    /// Runs <paramref name="ids"/> through the decoder, writing their K/V to cache slots
    /// [<c>cache.Length</c>, <c>cache.Length + T</c>) and advancing <c>cache.Length</c> by T.
    /// </summary>
    /// <param name="ids">The T new tokens.</param>
    /// <param name="cache">The sequence's cache.</param>
    /// <param name="positions">Rotary positions of the new tokens; null means their slot indices.</param>
    /// <param name="treeMask">A [T, T] bool mask among the new tokens (true = attend); null means causal.
    /// All cached slots before them are always visible.</param>
    /// <returns>The final (post-norm) hidden states [T, d] in f32.</returns>
    public Tensor Forward(long[] ids, KvCache cache, long[]? positions = null, Tensor? treeMask = null)
    {
        int t = ids.Length;
        int start = cache.Length;
        if (start + t > cache.Capacity)
        {
            throw new InvalidOperationException($"KV cache overflow: {start} + {t} > {cache.Capacity}.");
        }

        long hd = Config.HeadDim;
        int heads = Config.NumHeads, kvHeads = Config.NumKvHeads, group = heads / kvHeads;
        using Tensor idx = torch.tensor(ids, device: Device);
        Tensor x = _embed.index_select(0, idx).to(ScalarType.Float32);            // [T, d]

        Tensor cos, sin;
        if (positions is null)
        {
            if (start + t > MaxPositions)
            {
                throw new InvalidOperationException($"Position {start + t} exceeds the rotary table ({MaxPositions}).");
            }

            cos = _cos.narrow(0, start, t).unsqueeze(1);                        // [T, 1, hd]
            sin = _sinSigned.narrow(0, start, t).unsqueeze(1);
        }
        else
        {
            using Tensor pos = torch.tensor(positions, device: Device);
            cos = _cos.index_select(0, pos).unsqueeze(1);
            sin = _sinSigned.index_select(0, pos).unsqueeze(1);
        }

        Tensor? mask = BuildMask(t, start, treeMask, positions);                 // [group*T, S] or null
        int total = start + t;
        for (int l = 0; l < _layers.Length; l++)
        {
            Layer layer = _layers[l];
            // Attention: fused QKV, q/k norm (Qwen3) and RoPE on q and k together.
            Tensor h = RmsNorm(x, layer.AttnNorm);
            Tensor qkv = Linear(h, layer.Qkv, layer.QkvBias);                      // [T, (H + 2Hkv) * hd]
            Tensor qk = qkv.narrow(1, 0, (heads + kvHeads) * hd).view(t, heads + kvHeads, hd);
            if (layer.QkNorm is not null)
            {
                qk = RmsNorm(qk, layer.QkNorm);
            }

            qk = qk * cos + qk.roll(hd / 2, -1) * sin;
            Tensor q = qk.narrow(1, 0, heads);                                     // [T, H, hd]
            Tensor k = qk.narrow(1, heads, kvHeads);                               // [T, Hkv, hd]
            Tensor v = qkv.narrow(1, (heads + kvHeads) * hd, kvHeads * hd).view(t, kvHeads, hd);
            cache.Keys[l].narrow(1, start, t).copy_(k.transpose(0, 1));
            cache.Values[l].narrow(1, start, t).copy_(v.transpose(0, 1));
            Tensor keys = cache.Keys[l].narrow(1, 0, total).unsqueeze(0);     // [1, Hkv, S, hd]
            Tensor values = cache.Values[l].narrow(1, 0, total).unsqueeze(0);
            // The query heads that share a KV head become rows of one attention call: [1, Hkv, group*T, hd].
            Tensor qg = q.reshape(t, kvHeads, group, hd).permute(1, 2, 0, 3).reshape(1, kvHeads, group * t, hd);
            Tensor att = F.scaled_dot_product_attention(qg, keys, values, mask);
            Tensor o = att.view(kvHeads, group, t, hd).permute(2, 0, 1, 3).reshape(t, heads * hd);
            x = x + Linear(o, layer.O, layer.OBias);

            // SwiGLU MLP with fused gate/up.
            Tensor gu = Linear(RmsNorm(x, layer.MlpNorm), layer.GateUp, null);
            Tensor[] parts = gu.chunk(2, -1);
            x = x + Linear(F.silu(parts[0]) * parts[1], layer.Down, null);
        }

        cache.Length = total;
        return RmsNorm(x, _finalNorm);
    }

    /// <summary>Projects hidden rows [R, d] to f32 logits [R, V].</summary>
    public Tensor Logits(Tensor hidden) => WeightType == ScalarType.Float32
        ? hidden.matmul(_head)
        : F.linear(hidden.to(WeightType), _head).to(ScalarType.Float32);

    public void Dispose()
    {
        foreach (Layer l in _layers)
        {
            l.Dispose();
        }

        _embed.Dispose();
        _finalNorm.Dispose();
        _head.Dispose();
        _cos.Dispose();
        _sinSigned.Dispose();
        _reader.Dispose();
    }

    private Tensor? BuildMask(int t, int start, Tensor? treeMask, long[]? positions)
    {
        int total = start + t;
        int group = Config.NumHeads / Config.NumKvHeads;
        Tensor mask;
        if (treeMask is not null)
        {
            mask = torch.cat([torch.ones([t, start], ScalarType.Bool, Device), treeMask.to(Device)], 1);
            if (Config.SlidingWindow is int window)
            {
                // Key j is visible to query i only while pos(i) - pos(j) < window; cached slots hold position = slot.
                Tensor q = positions is null ? torch.arange(start, total, device: Device) : torch.tensor(positions, device: Device);
                Tensor k = torch.cat([torch.arange(start, device: Device), q]);
                mask = mask.logical_and((q.unsqueeze(1) - k.unsqueeze(0)).lt(window));
            }
        }
        else
        {
            bool windowed = Config.SlidingWindow is int w && total > w;
            if (t == 1 && !windowed)
            {
                return null;
            }

            mask = torch.ones([t, total], ScalarType.Bool, Device).tril(start);
            if (windowed)
            {
                mask = mask.triu(start - Config.SlidingWindow!.Value + 1);
            }
        }

        return group == 1 ? mask : mask.repeat(group, 1);
    }

    private static Tensor Linear(Tensor x, Tensor w, Tensor? b)
    {
        if (w.dtype == ScalarType.Float32)
        {
            return F.linear(x, w, b);
        }

        return F.linear(x.to(w.dtype), w, b).to(ScalarType.Float32);
    }

    private Tensor RmsNorm(Tensor x, Tensor w) =>
        x * (x.square().mean([-1L], keepdim: true) + Config.RmsNormEps).rsqrt() * w;

    private static (Tensor Cos, Tensor SinSigned) BuildRope(ModelConfig c, int maxPositions, Device device)
    {
        int hd = c.HeadDim, half = hd / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++)
        {
            // transformers computes inv_freq in float32; round the same way.
            inv[i] = (float)(1.0 / Math.Pow(c.RopeTheta, (2.0 * i) / hd));
        }

        if (c.RopeScaling is { } s)
        {
            double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
            double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
            for (int i = 0; i < half; i++)
            {
                double wavelen = 2 * Math.PI / inv[i];
                if (wavelen > lowWavelen)
                {
                    inv[i] /= s.Factor;
                }
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    inv[i] = (1 - smooth) * inv[i] / s.Factor + smooth * inv[i];
                }
            }
        }

        var cos = new float[maxPositions * hd];
        var sin = new float[maxPositions * hd];
        for (int p = 0; p < maxPositions; p++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = (float)p * (float)inv[i];
                float cv = MathF.Cos(angle), sv = MathF.Sin(angle);
                cos[p * hd + i] = cv;
                cos[p * hd + half + i] = cv;
                sin[p * hd + i] = -sv;       // rotate_half(x) = [-x2, x1]; roll(x, half) = [x2, x1]
                sin[p * hd + half + i] = sv;
            }
        }

        return (torch.tensor(cos, [maxPositions, hd]).to(device), torch.tensor(sin, [maxPositions, hd]).to(device));
    }

    private sealed record Layer(
        Tensor AttnNorm, Tensor Qkv, Tensor? QkvBias, Tensor? QkNorm, Tensor O, Tensor? OBias,
        Tensor MlpNorm, Tensor GateUp, Tensor Down) : IDisposable
    {
        public void Dispose()
        {
            foreach (Tensor? t in new[] { AttnNorm, Qkv, QkvBias, QkNorm, O, OBias, MlpNorm, GateUp, Down })
            {
                t?.Dispose();
            }
        }
    }
}

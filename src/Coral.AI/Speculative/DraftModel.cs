using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// An EAGLE-family drafter (EAGLE-1/2, HASS, CORAL): <c>h = Layer(FC([E(x_{t+1}); f_t]))</c>, one Llama decoder layer
/// without its input norm, no final norm; <c>h</c> predicts the target's next feature and goes through the target's own
/// LM head (or the CORAL router's subset of it). The embedding and LM head are the target's, never copied.
/// </summary>
/// <remarks>
/// Checkpoint: a folder with config.json (Llama-style, <c>bias</c> — FC bias, true when absent — and <c>qkv_bias</c>) and
/// <c>model.safetensors</c> with the published unprefixed keys <c>fc.weight [d, 2d]</c>, <c>fc.bias</c>,
/// <c>layers.0.self_attn.{q,k,v,o}_proj.*</c>, <c>layers.0.mlp.*</c>, <c>layers.0.post_attention_layernorm.weight</c>;
/// an <c>embed_tokens.weight</c> copy may be present and is ignored. CORAL adds <c>router.safetensors</c>.
/// </remarks>
internal sealed unsafe class DraftModel : IDisposable
{
    private readonly TransformerModel _target;
    private readonly DecoderLayer _layer;
    private readonly Tensor _fc;          // [d, 2d]
    private readonly Tensor? _fcBias;     // [d]
    private readonly RotaryTables _rope;
    private readonly CpuWorkspace? _work;  // CPU: the layer runs on CpuKernels
    private readonly PackedMatrix? _fcPacked;   // CPU, packed layer and an f32 target embedding: the FC too ([2d, d])
    private readonly float* _fcBiasP;
    private float* _fcInput;                    // [rows, 2d]: embedding ‖ feature, the FC's input
    private int _fcInputRows;

    private DraftModel(TransformerModel target, ModelConfig config, DecoderLayer layer, Tensor fc, Tensor? fcBias,
        RotaryTables rope, LmHeadRouter? router, bool roundToBf16)
    {
        _target = target;
        Config = config;
        _layer = layer;
        _fc = fc;
        _fcBias = fcBias;
        _rope = rope;
        Router = router;
        _work = layer.UsesCpuKernels ? new CpuWorkspace(config) : null;
        if (_work is not null && layer.UsesPackedWeights && target.UsesCpuKernels)   // the target gathers the FC's embedding rows
        {
            using var noGrad = torch.no_grad();
            _fcPacked = PackedMatrix.TryCreateFromRows([fc], roundToBf16);
            _fcBiasP = _fcPacked is not null && fcBias is not null ? CpuKernels.Pointer(fcBias) : null;
        }
    }

    public ModelConfig Config { get; }

    public LmHeadRouter? Router { get; }

    /// <summary>
    /// Gets or sets whether one-row drafting steps rank tokens by the int8 screens' approximate logits where they exist
    /// (the target's <see cref="ScreenedHead"/> for the full head, <see cref="LmHeadRouter.HasInt8Groups"/> for routed
    /// groups): half the bytes of the bf16 head per step, and only the proposals change — verification decides what is
    /// emitted. On by default; <c>CORAL_DRAFT_INT8=0</c> turns it off (A/B measurements).
    /// </summary>
    public bool ApproximateLogits { get; set; } = Environment.GetEnvironmentVariable("CORAL_DRAFT_INT8") is not ("0" or "false");

    public TransformerModel Target => _target;

    /// <summary>Gets whether the drafter's layer runs on <see cref="PackedMatrix"/> weights (stored values all bf16, CPU).</summary>
    public bool UsesPackedWeights => _layer.UsesPackedWeights;

    /// <summary>Loads a drafter for <paramref name="target"/>. On CPU its layer and FC run on the packed kernels, their
    /// values rounded to bf16 where stored as f32 or f16 (a drafter's precision decides only what is proposed; half the
    /// bytes of f32 a step: at Llama-3.2-1B's shape 12.7 against 24.4 ms); <paramref name="exactWeights"/> keeps f32 values
    /// that bf16 cannot hold unrounded (libtorch's f32 GEMMs), as the trainer computes them.</summary>
    public static DraftModel Load(string folder, TransformerModel target, int maxPositions, bool exactWeights = false)
    {
        string configPath = Path.Combine(folder, "config.json");
        JsonObject raw = ModelConfig.ReadJsonObject(configPath);
        ModelConfig c = ModelConfig.Load(configPath);
        bool fcBias = raw["bias"]?.GetValue<bool>() ?? true;
        c = c with { QkvBias = c.QkvBias || (raw["qkv_bias"]?.GetValue<bool>() ?? false), QkNorm = false, NumLayers = 1, SlidingWindow = null };
        if (c.HiddenSize != target.Config.HiddenSize)
        {
            throw new CoralModelException(configPath, "hidden_size",
                $"the drafter has {c.HiddenSize} but the target has {target.Config.HiddenSize}; this drafter was trained for another model.");
        }

        if (c.VocabSize != target.Config.VocabSize)
        {
            throw new CoralModelException(configPath, "vocab_size",
                $"the drafter has {c.VocabSize} but the target has {target.Config.VocabSize}; this drafter was trained for another model.");
        }

        using var reader = new CheckpointReader(folder);   // closes once loaded (views of the file keep their mapping)
        DecoderLayer? layer = null;
        try
        {
            using var noGrad = torch.no_grad();
            // On CPU the drafter's own weights (one layer and the FC) are f32-computed whatever the target's dtype: its
            // steps are 1–8 rows, where libtorch's bf16 GEMMs cost 85–110 µs against 20–40 µs in f32 (Coral.Bench
            // --profile), and the packed kernels stream bf16 with f32 arithmetic. It needs no batch invariance:
            // verification decides what is kept.
            ScalarType dtype = target.Device.type == DeviceType.CPU ? ScalarType.Float32 : target.WeightType;
            long d = c.HiddenSize;
            layer = DecoderLayer.Load(reader, "layers.0.", c, dtype, target.Device, inputNorm: false, roundToBf16: !exactWeights);
            Tensor fc = reader.Take("fc.weight", [d, 2 * d], dtype, target.Device);
            Tensor? bias = fcBias ? reader.Take("fc.bias", [d], dtype, target.Device) : null;
            var rope = new RotaryTables(c, maxPositions, target.Device, applyScaling: false);
            LmHeadRouter? router = LmHeadRouter.TryLoad(folder, raw, target);
            return new DraftModel(target, c, layer, fc, bias, rope, router, roundToBf16: !exactWeights);
        }
        catch
        {
            layer?.Dispose();
            throw;
        }
    }

    public KvCache CreateCache(int capacity) =>
        new(Config, Math.Min(capacity, _rope.MaxPositions), ScalarType.Float32, _target.Device, keysTransposed: _work is not null);

    /// <summary>
    /// Runs T (feature, next-token) pairs: <paramref name="features"/> [T, d] f32 and <paramref name="tokens"/> [T], writing
    /// their K/V at <c>cache.Length</c> and advancing it. Returns the draft outputs h [T, d] (predicted next features).
    /// </summary>
    public Tensor Forward(long[] tokens, Tensor features, KvCache cache, long[]? positions = null, Tensor? treeMask = null)
    {
        int t = tokens.Length, start = cache.Length;
        if (start + t > cache.Capacity)
        {
            throw new InvalidOperationException($"Draft KV cache overflow: {start} + {t} > {cache.Capacity}.");
        }

        if (_work is not null)
        {
            int d = Config.HiddenSize;
            CpuWorkspace.Views views = _work.Rows(t);
            if (_fcPacked is not null)
            {
                FcOnHost(tokens, features, t, d);
            }
            else
            {
                CpuKernels.Copy(CpuKernels.Pointer(Fc(tokens, features).contiguous()), _work.X, (long)t * d);
            }

            CpuStep step = _rope.KernelStep(start, t, t, positions, treeMask, null);
            _layer.ForwardCpu(step, _work, views, cache, 0);
            cache.Length = start + t;
            Tensor y = torch.empty([t, d], ScalarType.Float32);
            CpuKernels.Copy(_work.X, CpuKernels.Pointer(y), (long)t * d);
            return y;
        }

        Tensor u = Fc(tokens, features);
        var (cos, sin) = _rope.At(start, t, positions);
        Tensor? mask = RotaryTables.Mask(t, start, Config.NumHeads / Config.NumKvHeads, treeMask, positions, null, _target.Device);
        Tensor h = _layer.Forward(u, new LayerInputs(cos, sin, mask, start, t), cache.Keys[0], cache.Values[0]);
        cache.Length = start + t;
        return h;
    }

    /// <summary>u = FC([embedding(token) ‖ feature]) [T, d] in libtorch.</summary>
    private Tensor Fc(long[] tokens, Tensor features)
    {
        using Tensor idx = torch.tensor(tokens, device: _target.Device);
        Tensor e = _target.Embedding.index_select(0, idx).to(ScalarType.Float32);
        return DecoderLayer.Linear(torch.cat([e, features], 1), _fc, _fcBias);
    }

    /// <summary>The FC on the packed kernels, straight into the workspace's residual stream: the embedding rows and the
    /// features side by side in a host buffer, then one <see cref="PackedMatrix.Multiply"/> (five libtorch calls fewer
    /// per draft step).</summary>
    private void FcOnHost(long[] tokens, Tensor features, int t, int d)
    {
        if (_fcInputRows < t)
        {
            NativeMemory.Free(_fcInput);
            _fcInput = (float*)NativeMemory.Alloc((nuint)t * 2 * (nuint)d * sizeof(float));
            _fcInputRows = t;
        }

        if (features.dim() != 2 || features.shape[0] != t || features.shape[1] != d)
        {
            throw new ArgumentException($"Expected features [{t}, {d}], got [{string.Join(", ", features.shape)}].", nameof(features));
        }

        using Tensor f = features.to(ScalarType.Float32).contiguous();
        float* fp = CpuKernels.Pointer(f);
        _target.GatherEmbeddings(tokens, t, _fcInput, 2 * d);
        for (int r = 0; r < t; r++)
        {
            CpuKernels.Copy(fp + ((long)r * d), _fcInput + ((long)r * 2 * d) + d, d);
        }

        _fcPacked!.Multiply(_fcInput, t, _work!.X);
        if (_fcBiasP != null)
        {
            CpuKernels.AddRows(_work.X, _fcBiasP, t, d);
        }
    }

    public void Dispose()
    {
        _fcPacked?.Dispose();
        NativeMemory.Free(_fcInput);
        _fcInput = null;
        _layer.Dispose();
        _fc.Dispose();
        _fcBias?.Dispose();
        _rope.Dispose();
        Router?.Dispose();
        _work?.Dispose();
    }
}

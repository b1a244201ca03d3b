using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>
/// The EAGLE drafter's weights as trainable f32 parameters, with a whole-sequence (teacher-forced, causal) forward that
/// computes exactly what <see cref="DraftModel.Forward"/> computes step by step at inference. Saves in the published
/// EAGLE layout, which the speculative engine loads.
/// </summary>
internal sealed class TrainableDrafter : IDisposable
{
    private readonly Dictionary<string, Parameter> _p = new(StringComparer.Ordinal);
    private readonly Tensor _cos, _sinSigned;   // [maxPos, hd]

    private TrainableDrafter(ModelConfig target, bool fcBias, int maxPositions)
    {
        if (target.RotaryDim != target.HeadDim)
        {
            throw new NotSupportedException(
                $"Training a drafter for a target with partial rotary embeddings (partial_rotary_factor: {target.RotaryDim} of {target.HeadDim} dimensions) is not supported yet.");
        }

        Target = target;
        FcBias = fcBias;
        double[] inv = RotaryTables.InverseFrequencies(target, applyScaling: false);
        int hd = target.HeadDim, half = hd / 2;
        var cos = new float[maxPositions * hd];
        var sin = new float[maxPositions * hd];
        for (int p = 0; p < maxPositions; p++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = (float)p * (float)inv[i];
                cos[p * hd + i] = cos[p * hd + half + i] = MathF.Cos(angle);
                sin[p * hd + i] = -MathF.Sin(angle);
                sin[p * hd + half + i] = MathF.Sin(angle);
            }
        }

        _cos = torch.tensor(cos, [maxPositions, hd]);
        _sinSigned = torch.tensor(sin, [maxPositions, hd]);
    }

    public ModelConfig Target { get; }

    public bool FcBias { get; }

    public IEnumerable<Parameter> Parameters => _p.Values;

    /// <summary>Loads a drafter folder (EAGLE layout, e.g. from <c>coral draft-init</c>) as trainable parameters.</summary>
    public static TrainableDrafter Load(string folder, ModelConfig target, int maxPositions = 4096)
    {
        using var reader = new CheckpointReader(folder);
        long d = target.HiddenSize, hd = target.HeadDim, nq = target.NumHeads * hd, nkv = target.NumKvHeads * hd, ff = target.IntermediateSize;
        var drafter = new TrainableDrafter(target, reader.Contains("fc.bias"), maxPositions);
        void Add(string name, params long[] shape) => drafter._p[name] = new Parameter(reader.Take(name, shape, ScalarType.Float32).clone(), requires_grad: true);
        Add("fc.weight", d, 2 * d);
        if (drafter.FcBias)
        {
            Add("fc.bias", d);
        }

        Add("layers.0.self_attn.q_proj.weight", nq, d);
        Add("layers.0.self_attn.k_proj.weight", nkv, d);
        Add("layers.0.self_attn.v_proj.weight", nkv, d);
        Add("layers.0.self_attn.o_proj.weight", d, nq);
        Add("layers.0.mlp.gate_proj.weight", ff, d);
        Add("layers.0.mlp.up_proj.weight", ff, d);
        Add("layers.0.mlp.down_proj.weight", d, ff);
        Add("layers.0.post_attention_layernorm.weight", d);
        return drafter;
    }

    /// <summary>
    /// Teacher-forced forward over one sequence of pairs: <paramref name="embeddings"/> [T, d] of the next tokens and
    /// <paramref name="features"/> [T, d]; causal attention over positions 0..T−1. Returns h [T, d].
    /// </summary>
    public Tensor Forward(Tensor embeddings, Tensor features) => ForwardStep(embeddings, [features]);

    /// <summary>
    /// HASS step j = <paramref name="featureSets"/>.Count: set 1 holds the target features, set m ≥ 2 the (detached)
    /// predictions of step m − 1 shifted right by one. Queries and the residual stream come from the newest set; keys and
    /// values from all sets, where at query t set 1 offers keys s ≤ t − (j − 1) and set m ≥ 2 only key s = t − (j − m).
    /// One softmax over the merged keys, so position t sees exactly what drafting step j sees at inference.
    /// </summary>
    public Tensor ForwardStep(Tensor embeddings, IReadOnlyList<Tensor> featureSets)
    {
        long t = embeddings.shape[0], hd = Target.HeadDim;
        int heads = Target.NumHeads, kvHeads = Target.NumKvHeads, j = featureSets.Count;
        Tensor Heads(Tensor x, int n) => x.view(t, n, hd).transpose(0, 1);                        // [n, T, hd]
        Tensor cos = _cos.narrow(0, 0, t).unsqueeze(0), sin = _sinSigned.narrow(0, 0, t).unsqueeze(0);
        Tensor Rope(Tensor x) => x * cos + x.roll(hd / 2, -1) * sin;
        Tensor Expand(Tensor x) => heads == kvHeads ? x : x.repeat_interleave(heads / kvHeads, 0);
        Tensor[] u = featureSets.Select(f => F.linear(torch.cat([embeddings, f], 1), _p["fc.weight"], FcBias ? _p["fc.bias"] : null)).ToArray();
        Tensor q = Rope(Heads(F.linear(u[^1], _p["layers.0.self_attn.q_proj.weight"]), heads));
        Tensor? scores = null, keep = null;
        var values = new List<(Tensor Mask, Tensor V)>();
        for (int m = 1; m <= j; m++)
        {
            Tensor k = Expand(Rope(Heads(F.linear(u[m - 1], _p["layers.0.self_attn.k_proj.weight"]), kvHeads)));
            Tensor v = Expand(Heads(F.linear(u[m - 1], _p["layers.0.self_attn.v_proj.weight"]), kvHeads));
            Tensor mask = m == 1
                ? torch.ones(t, t, ScalarType.Bool).tril(-(j - 1))                                                    // s ≤ t − (j − 1)
                : torch.ones(t, t, ScalarType.Bool).tril(-(j - m)).logical_and(torch.ones(t, t, ScalarType.Bool).triu(-(j - m)));   // s = t − (j − m)

            Tensor sm = q.matmul(k.transpose(1, 2)) / Math.Sqrt(hd);                               // [H, T, T]
            scores = scores is null ? sm.masked_fill(mask.logical_not(), 0) : scores + sm.masked_fill(mask.logical_not(), 0);
            keep = keep is null ? mask : keep.logical_or(mask);
            values.Add((mask, v));
        }

        Tensor attention = F.softmax(scores!.masked_fill(keep!.logical_not(), double.NegativeInfinity), -1);
        Tensor att = values.Select(x => attention.masked_fill(x.Mask.logical_not(), 0).matmul(x.V)).Aggregate((x, y) => x + y);   // [H, T, hd]
        Tensor a = u[^1] + F.linear(att.transpose(0, 1).reshape(t, heads * hd), _p["layers.0.self_attn.o_proj.weight"]);
        Tensor n = DecoderLayer.RmsNorm(a, _p["layers.0.post_attention_layernorm.weight"], Target.RmsNormEps);
        return a + F.linear(F.silu(F.linear(n, _p["layers.0.mlp.gate_proj.weight"])) * F.linear(n, _p["layers.0.mlp.up_proj.weight"]),
            _p["layers.0.mlp.down_proj.weight"]);
    }

    /// <summary>Copies the weights of a saved drafter (same shapes) into these parameters (checkpoint resume).</summary>
    public void LoadWeights(string folder) => ParameterLoader.Load(folder, _p);

    /// <summary>Writes the drafter in the EAGLE layout (config.json with <c>bias</c>, unprefixed keys), f32 or bf16.</summary>
    public void Save(string folder, bool bf16 = false)
    {
        Directory.CreateDirectory(folder);
        DraftCheckpoint.WriteConfig(Target, folder, new DraftInitOptions { FcBias = FcBias });
        using var noGrad = torch.no_grad();
        SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"),
            _p.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, bf16 ? kv.Value.detach().to(ScalarType.BFloat16) : kv.Value.detach())),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    public void Dispose()
    {
        foreach (Parameter p in _p.Values)
        {
            p.Dispose();
        }

        _cos.Dispose();
        _sinSigned.Dispose();
    }
}

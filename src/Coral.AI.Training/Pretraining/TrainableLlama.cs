using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>The shape of a small Llama to train from scratch (<c>coral pretrain --config</c>).</summary>
internal sealed record PretrainConfig
{
    public int HiddenSize { get; init; } = 256;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 8;
    public int KvHeads { get; init; } = 4;
    public int IntermediateSize { get; init; } = 704;
    public int MaxPositions { get; init; } = 1024;
    public double RopeTheta { get; init; } = 10000;
    public double RmsNormEps { get; init; } = 1e-5;

    public static PretrainConfig Load(string path)
    {
        JsonObject o = ModelConfig.ReadJsonObject(path);
        var c = new PretrainConfig();
        c = c with
        {
            HiddenSize = ModelConfig.OptionalInt(o, path, "hidden_size") ?? c.HiddenSize,
            Layers = ModelConfig.OptionalInt(o, path, "num_hidden_layers") ?? c.Layers,
            Heads = ModelConfig.OptionalInt(o, path, "num_attention_heads") ?? c.Heads,
            KvHeads = ModelConfig.OptionalInt(o, path, "num_key_value_heads") ?? c.KvHeads,
            IntermediateSize = ModelConfig.OptionalInt(o, path, "intermediate_size") ?? c.IntermediateSize,
            MaxPositions = ModelConfig.OptionalInt(o, path, "max_position_embeddings") ?? c.MaxPositions,
            RopeTheta = ModelConfig.OptionalRopeTheta(o, path) ?? c.RopeTheta,
            RmsNormEps = ModelConfig.OptionalDouble(o, path, "rms_norm_eps") ?? c.RmsNormEps,
        };
        foreach ((string field, int value) in new[] { ("hidden_size", c.HiddenSize), ("num_hidden_layers", c.Layers), ("num_attention_heads", c.Heads),
            ("num_key_value_heads", c.KvHeads), ("intermediate_size", c.IntermediateSize), ("max_position_embeddings", c.MaxPositions) })
        {
            if (value <= 0)
            {
                throw new CoralModelException(path, field, $"must be positive, not {value}.");
            }
        }

        if (c.HiddenSize % c.Heads != 0 || (c.HiddenSize / c.Heads) % 2 != 0)
        {
            throw new CoralModelException(path, "num_attention_heads", $"hidden_size {c.HiddenSize} / {c.Heads} heads must be an even head size.");
        }

        if (c.Heads % c.KvHeads != 0)
        {
            throw new CoralModelException(path, "num_key_value_heads", $"{c.KvHeads} does not divide num_attention_heads {c.Heads}.");
        }

        return c;
    }
}

/// <summary>
/// A Llama (tied embeddings) as trainable f32 parameters under the Hugging Face tensor names, with a causal forward for
/// training and a writer for a standard HF folder that <see cref="InferenceEngine"/> (and transformers) load.
/// </summary>
internal sealed class TrainableLlama : IDisposable
{
    private readonly Dictionary<string, Parameter> _p = new(StringComparer.Ordinal);
    private readonly Tensor _cos, _sinSigned, _cos16, _sinSigned16;

    public TrainableLlama(PretrainConfig config, int vocabSize, int seed)
    {
        Config = config;
        VocabSize = vocabSize;
        var gen = new Generator((ulong)seed);
        long d = config.HiddenSize, hd = d / config.Heads, ff = config.IntermediateSize;
        void Linear(string name, long rows, long cols) => _p[name] = new Parameter(torch.randn([rows, cols], generator: gen) * (1.0 / Math.Sqrt(cols)));
        _p["model.embed_tokens.weight"] = new Parameter(torch.randn([vocabSize, d], generator: gen) * 0.02);
        for (int i = 0; i < config.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            _p[p + "input_layernorm.weight"] = new Parameter(torch.ones(d));
            Linear(p + "self_attn.q_proj.weight", config.Heads * hd, d);
            Linear(p + "self_attn.k_proj.weight", config.KvHeads * hd, d);
            Linear(p + "self_attn.v_proj.weight", config.KvHeads * hd, d);
            Linear(p + "self_attn.o_proj.weight", d, config.Heads * hd);
            _p[p + "post_attention_layernorm.weight"] = new Parameter(torch.ones(d));
            Linear(p + "mlp.gate_proj.weight", ff, d);
            Linear(p + "mlp.up_proj.weight", ff, d);
            Linear(p + "mlp.down_proj.weight", d, ff);
        }

        _p["model.norm.weight"] = new Parameter(torch.ones(d));
        double[] inv = Enumerable.Range(0, (int)hd / 2).Select(i => (double)(float)(1.0 / Math.Pow(config.RopeTheta, 2.0 * i / hd))).ToArray();
        var cos = new float[config.MaxPositions * hd];
        var sin = new float[config.MaxPositions * hd];
        for (int pos = 0; pos < config.MaxPositions; pos++)
        {
            for (int i = 0; i < hd / 2; i++)
            {
                float angle = (float)pos * (float)inv[i];
                cos[pos * hd + i] = cos[pos * hd + hd / 2 + i] = MathF.Cos(angle);
                sin[pos * hd + i] = -MathF.Sin(angle);
                sin[pos * hd + hd / 2 + i] = MathF.Sin(angle);
            }
        }

        _cos = torch.tensor(cos, [config.MaxPositions, hd]);
        _sinSigned = torch.tensor(sin, [config.MaxPositions, hd]);
        _cos16 = _cos.to(ScalarType.BFloat16);
        _sinSigned16 = _sinSigned.to(ScalarType.BFloat16);
    }

    public PretrainConfig Config { get; }

    public int VocabSize { get; }

    public IEnumerable<Parameter> Parameters => _p.Values;

    /// <summary>When set, the projections and the LM head multiply in bf16, and the activations between the projections
    /// of a layer (q, k, v, RoPE, attention; gate, up, SiLU) stay bf16, as under PyTorch's bf16 autocast; the master
    /// weights, the residual stream, the norms and the softmax of the loss are f32.</summary>
    public bool Bf16Matmuls { get; set; }

    /// <summary>Copies the weights of a standard HF folder written by <see cref="Save"/> (to continue training).</summary>
    public void LoadWeights(string folder) => ParameterLoader.Load(folder, _p);

    /// <summary>
    /// Next-token cross-entropy over packed blocks <paramref name="ids"/> [B, T+1] on positions whose target token has
    /// mask 1. The LM head's cross-entropy is chunked over rows (<see cref="ChunkedCrossEntropy"/>): no [B·T × V] logits
    /// or gradients are held whole. Returns the mean loss and a surrogate whose gradient is the loss's gradient.
    /// </summary>
    public (double Loss, Tensor Surrogate) Loss(Tensor ids, Tensor mask)
    {
        long b = ids.shape[0], t = ids.shape[1] - 1;
        Tensor input = ids.narrow(1, 0, t), labels = ids.narrow(1, 1, t).reshape(-1);
        Tensor weight = mask.narrow(1, 1, t).reshape(-1).to(ScalarType.Float32);
        Tensor h = Hidden(input).reshape(b * t, Config.HiddenSize);
        Parameter head = _p["model.embed_tokens.weight"];
        (double loss, Tensor gradH, Tensor gradW) = ChunkedCrossEntropy.Compute(h, head, labels, weight, Bf16Matmuls);
        return (loss, (h * gradH).sum() + (head * gradW).sum());
    }

    /// <summary>The logits of one sequence (f32; for tests).</summary>
    public Tensor Logits(long[] ids)
    {
        Tensor h = Hidden(torch.tensor(ids).unsqueeze(0)).squeeze(0);
        return F.linear(h, _p["model.embed_tokens.weight"]);
    }

    /// <summary>x through the named projections, fused into one GEMM (their weights stacked by rows: q|k|v, gate|up),
    /// in the activation dtype (bf16 with <see cref="Bf16Matmuls"/>, else f32).</summary>
    private Tensor Project(Tensor x, params string[] names)
    {
        ScalarType act = Bf16Matmuls ? ScalarType.BFloat16 : ScalarType.Float32;
        Tensor w = names.Length == 1 ? _p[names[0]] : torch.cat(names.Select(n => (Tensor)_p[n]).ToArray());
        return F.linear(x.to(act), w.to(act));
    }

    private Tensor Hidden(Tensor ids)
    {
        long b = ids.shape[0], t = ids.shape[1], d = Config.HiddenSize, hd = d / Config.Heads, ff = Config.IntermediateSize;
        int heads = Config.Heads, kvHeads = Config.KvHeads;
        Tensor x = _p["model.embed_tokens.weight"].index_select(0, ids.reshape(-1)).view(b, t, d);
        Tensor cos = (Bf16Matmuls ? _cos16 : _cos).narrow(0, 0, t), sin = (Bf16Matmuls ? _sinSigned16 : _sinSigned).narrow(0, 0, t);
        Tensor Rope(Tensor v) => v * cos + v.roll(hd / 2, -1) * sin;
        Tensor Heads(Tensor qkv, long start, int n) => qkv.narrow(-1, start * hd, n * hd).view(b, t, n, hd).transpose(1, 2);
        for (int i = 0; i < Config.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            Tensor n1 = DecoderLayer.RmsNorm(x, _p[p + "input_layernorm.weight"], Config.RmsNormEps);
            Tensor qkv = Project(n1, p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight");
            Tensor q = Rope(Heads(qkv, 0, heads));
            Tensor k = Rope(Heads(qkv, heads, kvHeads)).repeat_interleave(heads / kvHeads, 1);
            Tensor v = Heads(qkv, heads + kvHeads, kvHeads).repeat_interleave(heads / kvHeads, 1);
            Tensor att = F.scaled_dot_product_attention(q, k, v, is_casual: true);
            x = x + Project(att.transpose(1, 2).reshape(b, t, heads * hd), p + "self_attn.o_proj.weight");
            Tensor n2 = DecoderLayer.RmsNorm(x, _p[p + "post_attention_layernorm.weight"], Config.RmsNormEps);
            Tensor gateUp = Project(n2, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight");
            x = x + Project(F.silu(gateUp.narrow(-1, 0, ff)) * gateUp.narrow(-1, ff, ff), p + "mlp.down_proj.weight");
        }

        return DecoderLayer.RmsNorm(x, _p["model.norm.weight"], Config.RmsNormEps);
    }

    /// <summary>Writes a standard HF folder: config.json, model.safetensors (bf16 or f32), tokenizer files, generation_config.json.</summary>
    public void Save(string folder, string tokenizerFolder, int bosId, int eosId, string chatTemplate, bool bf16 = false)
    {
        Directory.CreateDirectory(folder);
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = Config.HiddenSize,
            ["intermediate_size"] = Config.IntermediateSize,
            ["num_hidden_layers"] = Config.Layers,
            ["num_attention_heads"] = Config.Heads,
            ["num_key_value_heads"] = Config.KvHeads,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = Config.MaxPositions,
            ["rms_norm_eps"] = Config.RmsNormEps,
            ["rope_theta"] = Config.RopeTheta,
            ["vocab_size"] = VocabSize,
            ["tie_word_embeddings"] = true,
            ["attention_bias"] = false,
            ["bos_token_id"] = bosId,
            ["eos_token_id"] = eosId,
            ["torch_dtype"] = bf16 ? "bfloat16" : "float32",
        };
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), new JsonObject { ["bos_token_id"] = bosId, ["eos_token_id"] = new JsonArray(eosId) }.ToJsonString());
        if (Path.TrimEndingDirectorySeparator(Path.GetFullPath(tokenizerFolder)) != Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder)))   // continuing in place keeps the folder's own
        {
            File.Copy(Path.Combine(tokenizerFolder, "tokenizer.json"), Path.Combine(folder, "tokenizer.json"), overwrite: true);
        }

        string sourceConfig = Path.Combine(tokenizerFolder, "tokenizer_config.json");
        JsonObject tokenizerConfig = File.Exists(sourceConfig) ? ModelConfig.ReadJsonObject(sourceConfig) : new JsonObject();
        tokenizerConfig["chat_template"] = chatTemplate;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), tokenizerConfig.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
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
        _cos16.Dispose();
        _sinSigned16.Dispose();
    }
}

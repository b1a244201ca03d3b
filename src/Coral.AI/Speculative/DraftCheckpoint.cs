using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>How <see cref="DraftCheckpoint.CreateRandom"/> lays out a new drafter.</summary>
internal sealed record DraftInitOptions
{
    public int Seed { get; init; }

    /// <summary>Gets whether FC has a bias (written as <c>"bias": true</c>; null writes no key, which means true).</summary>
    public bool? FcBias { get; init; } = false;

    /// <summary>Gets whether to store a copy of the target's embedding as <c>embed_tokens.weight</c>, as some published drafts do.</summary>
    public bool IncludeEmbedding { get; init; }

    /// <summary>Gets the router's group count, or 0 for no router.</summary>
    public int RouterGroups { get; init; }

    public int RouterTopK { get; init; } = 2;

    public int RouterHidden { get; init; } = 64;

    /// <summary>Gets whether the router's groups are a random permutation of the vocabulary (else contiguous id ranges).</summary>
    public bool ShuffleGroups { get; init; }

    /// <summary>Gets the scale of the random weights (0 gives a drafter whose layer adds nothing).</summary>
    public float Scale { get; init; } = 1f;

    /// <summary>Gets whether the weights are stored as bf16 (as published drafters and <c>train-draft --bf16</c> store
    /// them; on CPU such a drafter runs on the packed kernels) instead of f32.</summary>
    public bool Bf16 { get; init; }
}

/// <summary>Writes drafters in the published EAGLE layout (plus CORAL's router file).</summary>
internal static class DraftCheckpoint
{
    /// <summary>Writes a randomly initialised drafter for the target in <paramref name="targetFolder"/>.</summary>
    public static void CreateRandom(string targetFolder, string outFolder, DraftInitOptions options)
    {
        targetFolder = GgufImporter.Resolve(targetFolder);   // a GGUF target: its imported folder
        ModelConfig t = ModelConfig.Load(Path.Combine(targetFolder, "config.json"));
        Directory.CreateDirectory(outFolder);
        WriteConfig(t, outFolder, options);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var gen = new torch.Generator((ulong)options.Seed);
        long d = t.HiddenSize, hd = t.HeadDim, ff = t.IntermediateSize;
        float s = options.Scale;
        ScalarType storage = options.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        Tensor Rand(long rows, long cols) => (torch.randn([rows, cols], generator: gen) * (s * 0.7 / Math.Sqrt(cols))).to(storage);
        var tensors = new List<KeyValuePair<string, Tensor>>
        {
            new("fc.weight", Rand(d, 2 * d)),
            new("layers.0.self_attn.q_proj.weight", Rand(t.NumHeads * hd, d)),
            new("layers.0.self_attn.k_proj.weight", Rand(t.NumKvHeads * hd, d)),
            new("layers.0.self_attn.v_proj.weight", Rand(t.NumKvHeads * hd, d)),
            new("layers.0.self_attn.o_proj.weight", Rand(d, t.NumHeads * hd)),
            new("layers.0.mlp.gate_proj.weight", Rand(ff, d)),
            new("layers.0.mlp.up_proj.weight", Rand(ff, d)),
            new("layers.0.mlp.down_proj.weight", Rand(d, ff)),
            new("layers.0.post_attention_layernorm.weight", torch.ones(d, storage)),
        };
        if (options.FcBias ?? true)
        {
            tensors.Add(new("fc.bias", torch.zeros(d, storage)));
        }

        if (options.IncludeEmbedding)
        {
            using var reader = new CheckpointReader(targetFolder);
            tensors.Add(new("embed_tokens.weight", reader.Take(reader.DecoderRoot + "embed_tokens.weight", [t.VocabSize, d], ScalarType.Float32).clone()));
        }

        SafetensorsWriter.Write(Path.Combine(outFolder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        if (options.RouterGroups > 0)
        {
            WriteRouter(t, outFolder, options, gen);
        }
    }

    /// <summary>Writes config.json: the target's shape with one layer, EAGLE's <c>bias</c> key and CORAL's router keys.</summary>
    internal static void WriteConfig(ModelConfig t, string outFolder, DraftInitOptions options)
    {
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = t.HiddenSize,
            ["intermediate_size"] = t.IntermediateSize,
            ["num_hidden_layers"] = 1,
            ["num_attention_heads"] = t.NumHeads,
            ["num_key_value_heads"] = t.NumKvHeads,
            ["head_dim"] = t.HeadDim,
            ["rms_norm_eps"] = t.RmsNormEps,
            ["rope_theta"] = t.RopeTheta,
            ["max_position_embeddings"] = t.MaxPositionEmbeddings,
            ["vocab_size"] = t.VocabSize,
            ["hidden_act"] = "silu",
            ["qkv_bias"] = false,
            ["torch_dtype"] = options.Bf16 ? "bfloat16" : "float32",
        };
        if (options.FcBias is bool bias)
        {
            config["bias"] = bias;
        }

        if (options.RouterGroups > 0)
        {
            config["router_groups"] = options.RouterGroups;
            config["router_topk"] = options.RouterTopK;
            config["router_hidden"] = options.RouterHidden;
        }

        File.WriteAllText(Path.Combine(outFolder, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    private static void WriteRouter(ModelConfig t, string outFolder, DraftInitOptions options, torch.Generator gen)
    {
        int g = options.RouterGroups, size = (t.VocabSize + g - 1) / g;
        long[] perm = Enumerable.Range(0, g * size).Select(i => i < t.VocabSize ? (long)i : -1).ToArray();
        if (options.ShuffleGroups)
        {
            var rng = new Random(options.Seed);
            long[] ids = perm.Where(p => p >= 0).ToArray();
            rng.Shuffle(ids);
            perm = ids.Concat(Enumerable.Repeat(-1L, g * size - ids.Length)).ToArray();
        }

        long d = t.HiddenSize, r = options.RouterHidden;
        var tensors = new List<KeyValuePair<string, Tensor>>
        {
            new("router.0.weight", torch.randn([r, d], generator: gen) / Math.Sqrt(d)),
            new("router.0.bias", torch.zeros(r)),
            new("router.2.weight", torch.randn([g, r], generator: gen) / Math.Sqrt(r)),
            new("router.2.bias", torch.zeros(g)),
            new("group_perm", torch.tensor(perm)),
        };
        SafetensorsWriter.Write(Path.Combine(outFolder, LmHeadRouter.FileName), tensors);
    }
}

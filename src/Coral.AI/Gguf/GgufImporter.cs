using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>
/// Loads a GGUF file (llama.cpp's, Ollama's) as a model folder: the file's metadata becomes <c>config.json</c>, its
/// tokenizer <c>tokenizer.json</c> and <c>tokenizer_config.json</c> (with its chat template), written once to a cache
/// folder keyed by the file's path, size and time, beside a <c>gguf.json</c> that points <see cref="CheckpointReader"/>
/// at the file's tensors under their Hugging Face names. The weights are never copied: they are read from the file as
/// the model loads. Architectures: llama (Llama 1–3.x, Mistral, SmolLM; Mixtral with experts), qwen2, qwen3, qwen2moe,
/// qwen3moe, olmoe, phi3, gemma, gemma2, gemma3, granite, smollm3, olmo2, command-r, cohere2; byte-level BPE and
/// SentencePiece tokenizers.
/// </summary>
internal static class GgufImporter
{
    /// <summary>The file in an imported folder that names the GGUF file and maps its tensors.</summary>
    public const string MapFile = "gguf.json";

    /// <summary>The version of what an import writes, part of the cache key: a Coral that maps files differently never
    /// reuses an older import.</summary>
    private const int ImportVersion = 4;

    /// <summary>Whether <paramref name="path"/> names a GGUF file or an Ollama model (<see cref="OllamaStore"/>) rather than
    /// a model folder.</summary>
    public static bool IsGguf(string? path) =>
        OllamaStore.IsName(path) || (path is not null && path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) && File.Exists(path));

    /// <summary>The model folder to load for <paramref name="path"/>: the folder itself, or the imported folder of a GGUF
    /// file or of an Ollama model's GGUF blob.</summary>
    public static string Resolve(string path) => OllamaStore.IsName(path) ? Prepare(OllamaStore.Resolve(path)) : IsGguf(path) ? Prepare(path) : path;

    /// <summary>The model id a GGUF path reports by default: the file's name without its extension, or the Ollama name as
    /// given; null for a model folder.</summary>
    public static string? ModelId(string? path) =>
        OllamaStore.IsName(path) ? OllamaStore.ModelId(path!) : IsGguf(path) ? Path.GetFileNameWithoutExtension(path) : null;

    /// <summary>Writes (once) and returns the imported folder of the GGUF file at <paramref name="ggufPath"/>.</summary>
    /// <exception cref="CoralModelException">The file is not a GGUF file Coral can load; the message names the key or tensor.</exception>
    public static string Prepare(string ggufPath)
    {
        string full = Path.GetFullPath(ggufPath);
        var info = new FileInfo(full);
        string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes($"{ImportVersion}|{full}|{info.Length}|{info.LastWriteTimeUtc.Ticks}")))[..16].ToLowerInvariant();
        string folder = Path.Combine(Path.GetTempPath(), "coral-gguf", $"{Path.GetFileNameWithoutExtension(full)}-{key}");
        if (File.Exists(Path.Combine(folder, MapFile)))
        {
            return folder;
        }

        string staging = folder + ".tmp-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        Directory.CreateDirectory(staging);
        try
        {
            using (GgufFile file = GgufFile.Open(full))
            {
                Write(file, staging);
            }

            try
            {
                Directory.Move(staging, folder);
            }
            catch (IOException) when (File.Exists(Path.Combine(folder, MapFile)))
            {
                Directory.Delete(staging, recursive: true);   // another load imported it first
            }
        }
        catch
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }

            throw;
        }

        return folder;
    }

    private static void Write(GgufFile g, string folder)
    {
        string arch = g.GetString("general.architecture") ?? throw new CoralModelException(g.Path, "general.architecture", "missing.");
        long experts = g.GetInteger($"{arch}.expert_count") ?? 0;
        (string hfArch, string modelType) = arch switch
        {
            "llama" when experts > 0 => ("MixtralForCausalLM", "mixtral"),   // llama.cpp runs Mixtral as a llama with experts
            "llama" => ("LlamaForCausalLM", "llama"),
            "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
            "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
            "qwen2moe" => ("Qwen2MoeForCausalLM", "qwen2_moe"),
            "qwen3moe" => ("Qwen3MoeForCausalLM", "qwen3_moe"),
            "olmoe" => ("OlmoeForCausalLM", "olmoe"),
            "phi3" => ("Phi3ForCausalLM", "phi3"),
            "gemma" => ("GemmaForCausalLM", "gemma"),
            "gemma2" => ("Gemma2ForCausalLM", "gemma2"),
            "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
            "granite" => ("GraniteForCausalLM", "granite"),
            "granitemoe" => ("GraniteMoeForCausalLM", "granitemoe"),
            "smollm3" => ("SmolLM3ForCausalLM", "smollm3"),
            "olmo2" => ("Olmo2ForCausalLM", "olmo2"),
            "command-r" => ("CohereForCausalLM", "cohere"),
            "cohere2" => ("Cohere2ForCausalLM", "cohere2"),
            _ => throw new CoralModelException(g.Path, "general.architecture",
                $"'{arch}' cannot be loaded from GGUF yet (llama, qwen2, qwen3, qwen2moe, qwen3moe, olmoe, phi3, gemma, gemma2, gemma3, granite, granitemoe, smollm3, olmo2, command-r and cohere2 can; other architectures load from their Hugging Face folder)."),
        };

        long Required(string name) => g.GetInteger($"{arch}.{name}") ?? throw new CoralModelException(g.Path, $"{arch}.{name}", "missing.");
        long layers = Required("block_count"), hidden = Required("embedding_length"), heads = Required("attention.head_count");
        long kvHeads = g.GetInteger($"{arch}.attention.head_count_kv") ?? heads;
        long headDim = g.GetInteger($"{arch}.attention.key_length") ?? hidden / heads;
        long rotary = g.GetInteger($"{arch}.rope.dimension_count") ?? headDim;
        if (rotary != headDim && arch != "phi3")
        {
            // llama.cpp's other graphs rotate whole heads (phi3 rotates the first n_rot dimensions, NEOX style).
            throw new CoralModelException(g.Path, $"{arch}.rope.dimension_count", $"{rotary} rotary dimensions of {headDim}: only phi3 rotates part of a head.");
        }

        string[] tokens = g.GetArray<string>("tokenizer.ggml.tokens") ?? throw new CoralModelException(g.Path, "tokenizer.ggml.tokens", "missing.");
        GgufTensorInfo embed = Tensor(g, "token_embd.weight");
        if (embed.Shape is not [var vocab, var width] || width != hidden)
        {
            throw new CoralModelException(g.Path, "token_embd.weight", $"shape [{string.Join(", ", embed.Shape)}] does not match embedding_length {hidden}.");
        }

        bool tied = !g.Tensors.ContainsKey("output.weight");
        long? expertWidth = experts > 0 ? g.GetInteger($"{arch}.expert_feed_forward_length") ?? Required("feed_forward_length") : null;
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray(hfArch),
            ["model_type"] = modelType,
            ["hidden_size"] = hidden,
            ["intermediate_size"] = g.GetInteger($"{arch}.feed_forward_length") ?? expertWidth ?? Required("feed_forward_length"),
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = kvHeads,
            ["head_dim"] = headDim,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = g.GetNumber($"{arch}.attention.layer_norm_rms_epsilon") ?? 1e-6,
            ["layer_norm_eps"] = g.GetNumber($"{arch}.attention.layer_norm_epsilon") ?? 1e-5,   // Cohere's LayerNorms
            ["rope_theta"] = g.GetNumber($"{arch}.rope.freq_base") ?? 10000.0,
            ["max_position_embeddings"] = g.GetInteger($"{arch}.context_length") ?? 4096,
            ["vocab_size"] = vocab,
            ["tie_word_embeddings"] = tied,
            ["attention_bias"] = g.Tensors.ContainsKey("blk.0.attn_q.bias"),
            ["torch_dtype"] = embed.Type switch { GgmlType.F16 => "float16", GgmlType.F32 => "float32", _ => "bfloat16" },
        };
        if (g.GetInteger("tokenizer.ggml.bos_token_id") is long bos)
        {
            config["bos_token_id"] = bos;
        }

        var eos = new[] { "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id" }
            .Select(g.GetInteger).OfType<long>().Distinct().ToArray();
        if (eos.Length > 0)
        {
            config["eos_token_id"] = eos.Length == 1 ? eos[0] : new JsonArray(eos.Select(e => (JsonNode)e).ToArray());
        }

        if (rotary != headDim)
        {
            config["partial_rotary_factor"] = (double)rotary / headDim;
        }

        switch (arch)
        {
            case "granite" or "granitemoe":
                // Granite's multipliers, under llama.cpp's names.
                config["embedding_multiplier"] = g.GetNumber($"{arch}.embedding_scale") ?? 1.0;
                config["residual_multiplier"] = g.GetNumber($"{arch}.residual_scale") ?? 1.0;
                config["attention_multiplier"] = g.GetNumber($"{arch}.attention.scale") ?? 1.0;
                config["logits_scaling"] = g.GetNumber($"{arch}.logit_scale") ?? 1.0;
                break;
            case "smollm3":
                // llama.cpp's smollm3 leaves RoPE out of every fourth layer.
                config["no_rope_layers"] = new JsonArray([.. Enumerable.Range(0, (int)layers).Select(i => (JsonNode)((i + 1) % 4 != 0 ? 1 : 0))]);
                break;
            case "command-r" or "cohere2":
                config["logit_scale"] = g.GetNumber($"{arch}.logit_scale") ?? 1.0;
                config["tie_word_embeddings"] = true;
                break;
        }

        bool gemma = arch.StartsWith("gemma", StringComparison.Ordinal);
        if (gemma)
        {
            // What llama.cpp's gemma graphs compute: the tanh GELU, queries scaled by 1/√head_dim (1/√(d/heads) for the
            // 27B shapes), Gemma-2's soft caps, Gemma-3's sliding layers five of six on a local RoPE base of 10,000.
            bool large = layers == (arch == "gemma2" ? 46 : 62);
            config["hidden_activation"] = "gelu_pytorch_tanh";
            config["query_pre_attn_scalar"] = arch != "gemma" && large ? hidden / heads : headDim;
            config["attn_logit_softcapping"] = g.GetNumber($"{arch}.attn_logit_softcapping");
            config["final_logit_softcapping"] = g.GetNumber($"{arch}.final_logit_softcapping");
            if (arch == "gemma3")
            {
                config["sliding_window_pattern"] = 6;
                config["rope_local_base_freq"] = 10000.0;
            }
        }

        if (g.GetInteger($"{arch}.attention.sliding_window") is long window)
        {
            config["sliding_window"] = window;
        }

        if (experts > 0)
        {
            // The experts' shape; which chosen weights llama.cpp renormalises is fixed per architecture (Mixtral and
            // Qwen3-MoE do, Qwen2-MoE and OLMoE do not).
            config[modelType is "mixtral" or "granitemoe" ? "num_local_experts" : "num_experts"] = experts;
            config["num_experts_per_tok"] = Required("expert_used_count");
            config["norm_topk_prob"] = modelType is not ("qwen2_moe" or "olmoe");
            if (modelType is "mixtral" or "olmoe" or "granitemoe")
            {
                config["intermediate_size"] = expertWidth;   // their experts are intermediate_size wide
            }
            else
            {
                config["moe_intermediate_size"] = expertWidth;
                config["decoder_sparse_step"] = 1;
                config["mlp_only_layers"] = new JsonArray();
            }

            if (g.GetInteger($"{arch}.expert_shared_feed_forward_length") is long shared)
            {
                config["shared_expert_intermediate_size"] = shared;
            }
        }

        if (RopeScaling(g, arch, headDim, config["rope_theta"]!.GetValue<double>()) is JsonObject scaling)
        {
            config["rope_scaling"] = scaling;
        }

        Save(Path.Combine(folder, "config.json"), config);
        if (g.Tensors.TryGetValue("rope_freqs.weight", out GgufTensorInfo? freqs))
        {
            CheckLlama3Frequencies(g, freqs, Path.Combine(folder, "config.json"));
        }

        WriteTokenizer(g, folder, tokens);
        WriteGenerationConfig(g, folder);

        JsonObject map = TensorMap(g, ModelConfig.Load(Path.Combine(folder, "config.json")), arch, layers, heads, kvHeads, experts);
        var mapped = map.Select(kv => kv.Value!["gguf"]!.GetValue<string>()).ToHashSet(StringComparer.Ordinal);
        string[] inConfig = ["rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"];   // read into rope_scaling
        foreach (GgufTensorInfo t in g.Tensors.Values.Where(t => !mapped.Contains(t.Name) && !inConfig.Contains(t.Name)))
        {
            throw new CoralModelException(g.Path, t.Name, $"is not a tensor of the {arch} architecture as Coral reads it.");
        }

        foreach (var (hf, entry) in map)
        {
            GgufTensorInfo t = g.Tensors[entry!["gguf"]!.GetValue<string>()];
            if (!GgmlBlocks.Readable(t.Type))
            {
                throw new CoralModelException(g.Path, t.Name, $"is stored as {t.Type}, which Coral cannot read yet (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS).");
            }
        }

        // What a file of quantized projections loads as by default: their values exactly (Q8_0, Q4_0 blocks are Coral's
        // own), or Q8_0 — where Q4_K projections stay the file's blocks (DecoderLayer, ExpertMlp) and the other types become
        // Q8_0 blocks of their values (about their precision, without f32 weights in memory).
        GgmlType[] projections = [.. g.Tensors.Values.Where(t => t.Name.StartsWith("blk.", StringComparison.Ordinal) && t.Shape.Length >= 2
            && !t.Name.Contains("ffn_gate_inp", StringComparison.Ordinal)).Select(t => t.Type)];   // routers stay f32 in quantized files
        string? quantization = projections.Length == 0 || projections.All(t => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) ? null
            : projections.All(t => t == GgmlType.Q4_0) ? "q4_0" : "q8_0";
        Save(Path.Combine(folder, MapFile), new JsonObject { ["file"] = g.Path, ["quantization"] = quantization, ["tensors"] = map });
    }

    /// <summary>The tensor map: Hugging Face name → GGUF name, with llama's q/k rows to be put back from llama.cpp's
    /// interleaved RoPE order, each expert a slice of llama.cpp's stacked [experts, rows, columns] tensors, and Gemma's
    /// norms their offset again.</summary>
    private static JsonObject TensorMap(GgufFile g, ModelConfig c, string arch, long layers, long heads, long kvHeads, long experts)
    {
        bool gemma = arch.StartsWith("gemma", StringComparison.Ordinal);
        var map = new JsonObject();
        void Map(string hf, string gguf, long permuteHeads = 0, int expert = -1)
        {
            if (g.Tensors.ContainsKey(gguf))
            {
                // Gemma's norms as llama.cpp's converter writes them, 1 + the checkpoint's offset: the offset back.
                bool norm = gemma && gguf.EndsWith("norm.weight", StringComparison.Ordinal);
                map[hf] = new JsonObject { ["gguf"] = gguf, ["permute_heads"] = permuteHeads, ["expert"] = expert, ["add"] = norm ? -1.0 : 0.0 };
            }
        }

        bool permute = arch is "llama" or "granite" or "granitemoe" or "smollm3";   // llama.cpp's adjacent-pair RoPE over rotate-half rows
        Map("model.embed_tokens.weight", "token_embd.weight");
        Map("model.norm.weight", "output_norm.weight");
        Map("lm_head.weight", "output.weight");
        for (int i = 0; i < layers; i++)
        {
            string h = $"model.layers.{i}.", b = $"blk.{i}.";
            Map(h + "input_layernorm.weight", b + "attn_norm.weight");
            Map(h + "self_attn.qkv_proj.weight", b + "attn_qkv.weight");   // phi3: q|k|v in one tensor, NEOX RoPE
            Map(h + "self_attn.q_proj.weight", b + "attn_q.weight", permute ? heads : 0);
            Map(h + "self_attn.k_proj.weight", b + "attn_k.weight", permute ? kvHeads : 0);
            Map(h + "self_attn.v_proj.weight", b + "attn_v.weight");
            Map(h + "self_attn.o_proj.weight", b + "attn_output.weight");
            Map(h + "self_attn.q_proj.bias", b + "attn_q.bias", permute ? heads : 0);
            Map(h + "self_attn.k_proj.bias", b + "attn_k.bias", permute ? kvHeads : 0);
            Map(h + "self_attn.v_proj.bias", b + "attn_v.bias");
            Map(h + "self_attn.q_norm.weight", b + "attn_q_norm.weight");
            Map(h + "self_attn.k_norm.weight", b + "attn_k_norm.weight");
            if (arch == "olmo2")
            {
                // Norms after attention and after the MLP only.
                Map(h + "post_attention_layernorm.weight", b + "post_attention_norm.weight");
                Map(h + "post_feedforward_layernorm.weight", b + "post_ffw_norm.weight");
            }
            else if (arch is "gemma2" or "gemma3")
            {
                // Sandwich norms: after attention, before and after the MLP.
                Map(h + "post_attention_layernorm.weight", b + "post_attention_norm.weight");
                Map(h + "pre_feedforward_layernorm.weight", b + "ffn_norm.weight");
                Map(h + "post_feedforward_layernorm.weight", b + "post_ffw_norm.weight");
            }
            else
            {
                Map(h + "post_attention_layernorm.weight", b + "ffn_norm.weight");
            }

            if (experts > 0)
            {
                // Expert by expert, as slices of the stacked tensors (Granite-MoE's gate|up too: its checkpoint's stacked
                // input_linear is llama.cpp's ffn_gate_exps and ffn_up_exps, so the loader reads the experts one by one).
                Map(c.RouterName(h), b + "ffn_gate_inp.weight");
                for (int e = 0; e < experts; e++)
                {
                    Map(c.ExpertWeightName(h, e, "gate"), b + "ffn_gate_exps.weight", expert: e);
                    Map(c.ExpertWeightName(h, e, "up"), b + "ffn_up_exps.weight", expert: e);
                    Map(c.ExpertWeightName(h, e, "down"), b + "ffn_down_exps.weight", expert: e);
                }

                Map(ModelConfig.SharedExpertGateName(h), b + "ffn_gate_inp_shexp.weight");
                Map(ModelConfig.SharedExpertWeightName(h, "gate"), b + "ffn_gate_shexp.weight");
                Map(ModelConfig.SharedExpertWeightName(h, "up"), b + "ffn_up_shexp.weight");
                Map(ModelConfig.SharedExpertWeightName(h, "down"), b + "ffn_down_shexp.weight");
                continue;
            }

            Map(h + "mlp.gate_proj.weight", b + "ffn_gate.weight");
            Map(arch == "phi3" ? h + "mlp.gate_up_proj.weight" : h + "mlp.up_proj.weight", b + "ffn_up.weight");   // phi3: gate|up fused
            Map(h + "mlp.down_proj.weight", b + "ffn_down.weight");
        }

        return map;
    }

    /// <summary>The quantization an imported folder loads with when none is asked for (null: none).</summary>
    public static string? SuggestedQuantization(string folder)
    {
        string map = Path.Combine(folder, MapFile);
        return File.Exists(map) && ModelConfig.ReadJsonObject(map)["quantization"] is JsonValue v && v.TryGetValue(out string? q) ? q : null;
    }

    private static GgufTensorInfo Tensor(GgufFile g, string name) =>
        g.Tensors.TryGetValue(name, out GgufTensorInfo? t) ? t : throw new CoralModelException(g.Path, name, "required tensor is missing from the file.");

    private static JsonObject? RopeScaling(GgufFile g, string arch, long headDim, double theta)
    {
        string? type = g.GetString($"{arch}.rope.scaling.type");
        double factor = g.GetNumber($"{arch}.rope.scaling.factor") ?? 1;
        if (type is null && (g.Tensors.ContainsKey("rope_factors_long.weight") || g.Tensors.ContainsKey("rope_factors_short.weight")))
        {
            return LongRope(g, arch);
        }

        return type switch
        {
            null or "none" => g.Tensors.TryGetValue("rope_freqs.weight", out GgufTensorInfo? f) ? Llama3Scaling(g, f, headDim, theta) : null,
            "linear" => new JsonObject { ["rope_type"] = "linear", ["factor"] = factor },
            "yarn" => new JsonObject
            {
                ["rope_type"] = "yarn", ["factor"] = factor,
                ["original_max_position_embeddings"] = g.GetInteger($"{arch}.rope.scaling.original_context_length")
                    ?? throw new CoralModelException(g.Path, $"{arch}.rope.scaling.original_context_length", "missing for YaRN."),
            },
            _ => throw new CoralModelException(g.Path, $"{arch}.rope.scaling.type", $"'{type}' is not read (linear, yarn and llama3's rope_freqs are)."),
        };
    }

    /// <summary>LongRoPE as llama.cpp's phi3 converter keeps it: the short and long factors as two F32 vectors, the
    /// pretraining context and the attention factor as keys (the file's context length is the extended one).</summary>
    private static JsonObject LongRope(GgufFile g, string arch)
    {
        var scaling = new JsonObject
        {
            ["rope_type"] = "longrope",
            ["short_factor"] = new JsonArray([.. Divisors(g, Tensor(g, "rope_factors_short.weight")).Select(x => (JsonNode)(double)x)]),
            ["long_factor"] = new JsonArray([.. Divisors(g, Tensor(g, "rope_factors_long.weight")).Select(x => (JsonNode)(double)x)]),
            ["original_max_position_embeddings"] = g.GetInteger($"{arch}.rope.scaling.original_context_length")
                ?? throw new CoralModelException(g.Path, $"{arch}.rope.scaling.original_context_length", "missing for LongRoPE (rope_factors_long/short)."),
        };
        if (g.GetNumber($"{arch}.rope.scaling.attn_factor") is double attention)
        {
            scaling["attention_factor"] = attention;
        }

        return scaling;
    }

    private static unsafe float[] Divisors(GgufFile g, GgufTensorInfo f)
    {
        if (f.Type != GgmlType.F32 || f.Shape.Length != 1)
        {
            throw new CoralModelException(g.Path, f.Name, "must be a vector of F32.");
        }

        return new ReadOnlySpan<float>(g.Pointer(f), (int)f.Shape[0]).ToArray();
    }

    /// <summary>
    /// llama3 scaling from llama.cpp's per-frequency divisors (all the file keeps): the factor is the largest divisor; with
    /// the low and high frequency factors of every Llama 3.x (1 and 4), each divisor between 1 and the factor gives the
    /// original context length (its wavelength λ and blend s = (1/divisor − 1/factor) / (1 − 1/factor) satisfy
    /// original = λ·(1 + 3s)); 8,192 when no divisor is in between. Checked against every divisor afterwards.
    /// </summary>
    private static JsonObject Llama3Scaling(GgufFile g, GgufTensorInfo f, long headDim, double theta)
    {
        float[] divisors = Divisors(g, f);
        double factor = divisors.Max();
        var originals = new List<double>();
        for (int i = 0; i < divisors.Length; i++)
        {
            if (divisors[i] > 1 + 1e-4 && divisors[i] < factor * (1 - 1e-4))
            {
                double wavelength = 2 * Math.PI * Math.Pow(theta, 2.0 * i / headDim);
                double blend = ((1 / divisors[i]) - (1 / factor)) / (1 - (1 / factor));
                originals.Add(wavelength * (1 + (3 * blend)));
            }
        }

        return new JsonObject
        {
            ["rope_type"] = "llama3", ["factor"] = factor, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
            ["original_max_position_embeddings"] = originals.Count == 0 ? 8192 : (long)Math.Round(originals.Order().ElementAt(originals.Count / 2)),
        };
    }

    private static void CheckLlama3Frequencies(GgufFile g, GgufTensorInfo f, string configPath)
    {
        float[] stored = Divisors(g, f);
        float[] ours = GgufExporter.RopeFrequencyFactors(ModelConfig.Load(configPath));
        if (ours.Length != stored.Length || ours.Zip(stored).Any(p => Math.Abs(p.First - p.Second) > 1e-4 * Math.Abs(p.Second)))
        {
            throw new CoralModelException(g.Path, f.Name, "the frequency divisors are not llama3 scaling with low/high frequency factors 1 and 4.");
        }
    }

    /// <summary>A byte-level BPE tokenizer.json (vocabulary, merges, the pre-tokenizer's split pattern, control tokens as
    /// special added tokens) and tokenizer_config.json (chat template, BOS/EOS, whether BOS is added).</summary>
    private static void WriteTokenizer(GgufFile g, string folder, string[] tokens)
    {
        string model = g.GetString("tokenizer.ggml.model") ?? throw new CoralModelException(g.Path, "tokenizer.ggml.model", "missing.");
        if (model == "llama")
        {
            WriteSentencePiece(g, folder, tokens);
            return;
        }

        if (model != "gpt2")
        {
            throw new CoralModelException(g.Path, "tokenizer.ggml.model", $"'{model}' tokenizers are not read from GGUF yet (byte-level BPE, 'gpt2', and SentencePiece, 'llama', are).");
        }

        string pre = g.GetString("tokenizer.ggml.pre") ?? "default";
        GgufPreTokenizer preTokenizer = GgufPreTokenizers.Find(pre) ?? throw new CoralModelException(g.Path, "tokenizer.ggml.pre",
            $"pre-tokenizer '{pre}' is not known to Coral (known: {string.Join(", ", GgufPreTokenizers.All.SelectMany(p => p.Names))}).");
        int[] types = g.GetArray<int>("tokenizer.ggml.token_type") ?? [.. tokens.Select(_ => 1)];
        Func<int, bool> rstrip = SpecialTokensRStrip(g, tokens, types);
        string[] merges = g.GetArray<string>("tokenizer.ggml.merges") ?? throw new CoralModelException(g.Path, "tokenizer.ggml.merges", "missing.");
        CheckMerges(g, tokens, merges);
        var vocab = new JsonObject();
        var added = new JsonArray();
        for (int i = 0; i < tokens.Length; i++)
        {
            if (!vocab.ContainsKey(tokens[i]))
            {
                vocab[tokens[i]] = i;
            }

            if (i < types.Length && types[i] is 3 or 4)   // control, user-defined
            {
                added.Add(new JsonObject
                {
                    ["id"] = i, ["content"] = tokens[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = rstrip(i),
                    ["normalized"] = false, ["special"] = types[i] == 3,
                });
            }
        }

        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = preTokenizer.ToJson(),
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = preTokenizer.IgnoreMerges, ["vocab"] = vocab, ["merges"] = new JsonArray([.. merges.Select(m => (JsonNode)m)]),
            },
        };
        Save(Path.Combine(folder, "tokenizer.json"), tokenizer);
        WriteTokenizerConfig(g, folder, tokens, addBosByDefault: preTokenizer.AddBos);
    }

    /// <summary>Checks that every merge is two tokens of the vocabulary whose concatenation is one too (what a BPE
    /// tokenizer can load), so a corrupt file fails naming its merges rather than the imported tokenizer.json.</summary>
    private static void CheckMerges(GgufFile g, string[] tokens, string[] merges)
    {
        var known = new HashSet<string>(tokens, StringComparer.Ordinal);
        for (int i = 0; i < merges.Length; i++)
        {
            int space = merges[i].IndexOf(' ', 1);
            if (space < 0 || !known.Contains(merges[i][..space]) || !known.Contains(merges[i][(space + 1)..])
                || !known.Contains(string.Concat(merges[i].AsSpan(0, space), merges[i].AsSpan(space + 1))))
            {
                throw new CoralModelException(g.Path, "tokenizer.ggml.merges",
                    $"merge {i} ('{merges[i]}') is not two tokens of the vocabulary that make a third: the file is corrupt.");
            }
        }
    }

    /// <summary>
    /// llama.cpp's SentencePiece tokenizer (<c>tokenizer.ggml.model = llama</c>: Llama-2, Mistral, TinyLlama) as the BPE
    /// Hugging Face converts it to: the merges of every piece that two pieces concatenate to, highest score first (within a
    /// piece by the two pieces' ids), byte fallback to the <c>&lt;0xXX&gt;</c> pieces, '▁' for spaces and before the text
    /// (unless <c>tokenizer.ggml.add_space_prefix</c> is false), control and unknown pieces as special added tokens.
    /// </summary>
    private static void WriteSentencePiece(GgufFile g, string folder, string[] tokens)
    {
        const string Space = "\u2581";
        float[] scores = g.GetArray<float>("tokenizer.ggml.scores") ?? throw new CoralModelException(g.Path, "tokenizer.ggml.scores", "missing for a SentencePiece tokenizer.");
        int[] types = g.GetArray<int>("tokenizer.ggml.token_type") ?? [.. tokens.Select(_ => 1)];
        Func<int, bool> rstrip = SpecialTokensRStrip(g, tokens, types);
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        var vocab = new JsonObject();
        var added = new JsonArray();
        for (int i = 0; i < tokens.Length; i++)
        {
            if (ids.TryAdd(tokens[i], i))
            {
                vocab[tokens[i]] = i;
            }

            if (i < types.Length && types[i] is 2 or 3 or 4)   // unknown, control, user-defined
            {
                added.Add(new JsonObject
                {
                    ["id"] = i, ["content"] = tokens[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = rstrip(i),
                    ["normalized"] = false, ["special"] = types[i] != 4,
                });
            }
        }

        var merges = new List<(string Left, string Right, float Score, int LeftId, int RightId)>();
        for (int i = 0; i < tokens.Length; i++)
        {
            string piece = tokens[i];
            if (i < types.Length && types[i] != 1)
            {
                continue;   // only normal pieces are made by merging
            }

            for (int k = 1; k < piece.Length; k++)
            {
                if (char.IsLowSurrogate(piece[k]))
                {
                    continue;
                }

                if (ids.TryGetValue(piece[..k], out int left) && ids.TryGetValue(piece[k..], out int right))
                {
                    merges.Add((piece[..k], piece[k..], i < scores.Length ? scores[i] : 0, left, right));
                }
            }
        }

        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.LeftId).ThenBy(m => m.RightId)
            .Select(m => (JsonNode)new JsonArray(m.Left, m.Right)).ToArray();
        int unk = (int)(g.GetInteger("tokenizer.ggml.unknown_token_id") ?? Array.FindIndex(types, t => t == 2));
        bool prefix = g.GetBool("tokenizer.ggml.add_space_prefix") ?? true;
        var normalizers = new JsonArray();
        if (prefix)
        {
            normalizers.Add(new JsonObject { ["type"] = "Prepend", ["prepend"] = Space });
        }

        normalizers.Add(new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = Space });
        var decoders = new JsonArray(
            new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = Space }, ["content"] = " " },
            new JsonObject { ["type"] = "ByteFallback" },
            new JsonObject { ["type"] = "Fuse" });
        if (prefix)
        {
            decoders.Add(new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 });
        }

        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = normalizers },
            ["pre_tokenizer"] = null,
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = decoders },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = unk >= 0 && unk < tokens.Length ? tokens[unk] : null,
                ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null, ["fuse_unk"] = true, ["byte_fallback"] = true,
                ["ignore_merges"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray(ordered),
            },
        };
        Save(Path.Combine(folder, "tokenizer.json"), tokenizer);
        WriteTokenizerConfig(g, folder, tokens, addBosByDefault: true);
    }

    /// <summary>Which special tokens take the whitespace after them. A GGUF file does not say; llama.cpp decides by the
    /// model's name, as Phi-3's tokenizer.json has it: for a <c>general.name</c> containing "phi-3" or "phi3", every
    /// unknown, control and user-defined token and <c>&lt;/s&gt;</c>, except <c>&lt;unk&gt;</c>, <c>&lt;s&gt;</c> and
    /// <c>&lt;|endoftext|&gt;</c>.</summary>
    private static Func<int, bool> SpecialTokensRStrip(GgufFile g, string[] tokens, int[] types)
    {
        string name = (g.GetString("general.name") ?? "").ToLowerInvariant();
        bool phi3 = name.Contains("phi-3", StringComparison.Ordinal) || name.Contains("phi3", StringComparison.Ordinal);
        return i => phi3 && ((i < types.Length && types[i] is 2 or 3 or 4) || tokens[i] == "</s>")
            && tokens[i] is not ("<unk>" or "<s>" or "<|endoftext|>");
    }

    /// <summary>generation_config.json from llama.cpp's <c>general.sampling.*</c> keys (its converter's copy of the
    /// model's generation_config.json when that samples): temperature, top-p, top-k (≤ 0: off), min-p, repetition
    /// penalty; nothing when the file has none.</summary>
    private static void WriteGenerationConfig(GgufFile g, string folder)
    {
        var generation = new JsonObject();
        foreach (var (key, name) in new[] { ("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"), ("penalty_repeat", "repetition_penalty") })
        {
            if (g.GetNumber("general.sampling." + key) is double value)
            {
                generation[name] = name == "top_k" ? Math.Max(0, (long)value) : value;
            }
        }

        if (generation.Count > 0)
        {
            generation["do_sample"] = true;
            Save(Path.Combine(folder, "generation_config.json"), generation);
        }
    }

    /// <summary>tokenizer_config.json: the chat template, BOS/EOS/pad tokens, whether BOS (EOS) is added.</summary>
    private static void WriteTokenizerConfig(GgufFile g, string folder, string[] tokens, bool addBosByDefault)
    {
        string? Token(string key) => g.GetInteger(key) is long id && id >= 0 && id < tokens.Length ? tokens[id] : null;
        var config = new JsonObject
        {
            ["add_bos_token"] = g.GetBool("tokenizer.ggml.add_bos_token") ?? addBosByDefault,
            ["add_eos_token"] = g.GetBool("tokenizer.ggml.add_eos_token") ?? false,
            ["bos_token"] = Token("tokenizer.ggml.bos_token_id"),
            ["eos_token"] = Token("tokenizer.ggml.eos_token_id"),
            ["pad_token"] = Token("tokenizer.ggml.padding_token_id"),
        };
        if (g.GetString("tokenizer.chat_template") is string template)
        {
            config["chat_template"] = template;
        }

        Save(Path.Combine(folder, "tokenizer_config.json"), config);
    }

    private static void Save(string path, JsonNode node) =>
        File.WriteAllText(path, node.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
}

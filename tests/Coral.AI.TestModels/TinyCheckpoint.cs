using Coral.AI.Training;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.TestModels;

/// <summary>The shape of a random test checkpoint.</summary>
public sealed record TinyModelSpec
{
    public string Architecture { get; init; } = "LlamaForCausalLM";
    public int HiddenSize { get; init; } = 64;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int? HeadDim { get; init; }
    public int IntermediateSize { get; init; } = 176;
    public bool Tied { get; init; }
    public bool AttentionBias { get; init; }

    /// <summary>Gets the safetensors dtype of the stored weights: F32, BF16 or F16.</summary>
    public string StorageDType { get; init; } = "F32";

    /// <summary>Gets the number of shards (1 = a single model.safetensors).</summary>
    public int Shards { get; init; } = 1;

    public double RopeTheta { get; init; } = 10000;

    /// <summary>Gets <c>partial_rotary_factor</c> to write into config.json, or null for none (whole heads).</summary>
    public double? PartialRotaryFactor { get; init; }
    public bool Llama3RopeScaling { get; init; }

    /// <summary>Gets a <c>rope_scaling</c> object (JSON) to write into config.json, or null for none (or llama3's, above).</summary>
    public string? RopeScalingJson { get; init; }
    public int MaxPositions { get; init; } = 512;
    public int? SlidingWindow { get; init; }

    /// <summary>Gets the number of GPT-2 ranks in the byte-level vocabulary (before special tokens).</summary>
    public int TokenizerRanks { get; init; } = 1000;

    public ByteLevelStyle TokenizerStyle { get; init; } = ByteLevelStyle.Llama3;

    /// <summary>Gets special tokens added after the style's own (e.g. Phi-3's <c>&lt;|end|&gt;</c>, which llama.cpp looks up
    /// for that architecture).</summary>
    public IReadOnlyList<string> ExtraSpecialTokens { get; init; } = [];

    /// <summary>Gets whether to use a SentencePiece-style tokenizer instead of byte-level BPE.</summary>
    public bool SentencePiece { get; init; }

    /// <summary>Gets whether the <see cref="ExtraSpecialTokens"/> of a SentencePiece tokenizer take the whitespace after them
    /// (<c>rstrip</c>, as Phi-3's chat tokens and <c>&lt;/s&gt;</c> do; its <c>&lt;|endoftext|&gt;</c> does not).</summary>
    public bool ExtraSpecialTokensRStrip { get; init; }

    /// <summary>Gets whether the SentencePiece tokenizer has Gemma's layout: no '▁' prepended (no Prepend normalizer, no
    /// Strip decoder), <c>&lt;start_of_turn&gt;</c>/<c>&lt;end_of_turn&gt;</c> added.</summary>
    public bool GemmaTokenizer { get; init; }

    /// <summary>Gets extra rows in the embedding beyond the tokenizer (config vocab_size padding, as real models have).</summary>
    public int VocabPadding { get; init; } = 3;

    public float WeightScale { get; init; } = 1f;

    /// <summary>Gets whether the (untied) LM head row t + 1 is embedding row t and the layers' output projections are
    /// small: greedy decoding then counts up through the vocabulary (t, t + 1, t + 2, ...), a target whose every next
    /// token differs, for tests that must tell tokens apart.</summary>
    public bool SuccessorHead { get; init; }
    public int Seed { get; init; } = 1234;

    /// <summary>Gets a chat template to put in tokenizer_config.json, or null for none.</summary>
    public string? ChatTemplate { get; init; }

    /// <summary>Gets Gemma's attention-score soft cap (<c>attn_logit_softcapping</c>), or null to write none.</summary>
    public double? AttentionSoftcap { get; init; }

    /// <summary>Gets Gemma's final-logit soft cap (<c>final_logit_softcapping</c>), or null to write none.</summary>
    public double? FinalLogitSoftcap { get; init; }

    /// <summary>Gets Gemma-3's <c>rope_local_base_freq</c> (the sliding layers' RoPE base).</summary>
    public double LocalRopeTheta { get; init; } = 10000;

    /// <summary>Gets the experts of each MLP (Qwen3-MoE, OLMoE), or 0 for dense MLPs.</summary>
    public int Experts { get; init; }

    /// <summary>Gets the experts each token is routed to.</summary>
    public int ExpertsPerToken { get; init; } = 2;

    /// <summary>Gets an expert's intermediate width.</summary>
    public int ExpertIntermediateSize { get; init; } = 48;

    /// <summary>Gets whether the architecture is Gemma-2 or Gemma-3 (sandwich norms stored as offsets from one, GeGLU).</summary>
    public bool IsGemma => Architecture is "Gemma2ForCausalLM" or "Gemma3ForCausalLM";
}

/// <summary>Writes random Hugging Face model folders (config.json, safetensors, tokenizer.json, tokenizer_config.json,
/// generation_config.json) exactly as transformers lays them out.</summary>
public static class TinyCheckpoint
{
    public const string SentencePieceSample =
        "The quick brown fox jumps over the lazy dog. A speculative decoder drafts tokens and the target verifies them. " +
        "Hello world, hello there; numbers 12345 and symbols (like these) appear too. The end.";

    public static string Create(string folder, TinyModelSpec spec)
    {
        Directory.CreateDirectory(folder);
        int bos, eos, vocab;
        string bosText, eosText;
        bool addBos;
        if (spec.SentencePiece)
        {
            JsonObject tj = TokenizerFactory.SentencePiece(SentencePieceSample, 200);
            if (spec.GemmaTokenizer)
            {
                // Gemma's tokenizer.json: the normalizer only replaces spaces, the decoder does not strip one.
                var normalizers = (JsonArray)tj["normalizer"]!["normalizers"]!;
                tj["normalizer"] = normalizers[1]!.DeepClone();
                var decoders = (JsonArray)tj["decoder"]!["decoders"]!;
                decoders.RemoveAt(decoders.Count - 1);
                int id = ((JsonObject)tj["model"]!["vocab"]!).Count;
                foreach (string turn in new[] { "<start_of_turn>", "<end_of_turn>" })
                {
                    ((JsonArray)tj["added_tokens"]!).Add(ByteLevelTokenizer.AddedToken(id, turn));
                    tj["model"]!["vocab"]![turn] = id++;
                }
            }

            if (spec.ExtraSpecialTokensRStrip)
            {
                ((JsonArray)tj["added_tokens"]!).Single(t => t!["content"]!.GetValue<string>() == "</s>")!["rstrip"] = true;   // Phi-3's too
            }

            int next = ((JsonObject)tj["model"]!["vocab"]!).Count;
            foreach (string special in spec.ExtraSpecialTokens)
            {
                JsonObject token = ByteLevelTokenizer.AddedToken(next, special);
                token["rstrip"] = spec.ExtraSpecialTokensRStrip && special != "<|endoftext|>";
                ((JsonArray)tj["added_tokens"]!).Add(token);
                tj["model"]!["vocab"]![special] = next++;
            }

            File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tj.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
            vocab = ((JsonObject)tj["model"]!["vocab"]!).Count;
            (bos, eos, bosText, eosText, addBos) = (1, 2, "<s>", "</s>", true);
        }
        else
        {
            string[] specials = spec.TokenizerStyle switch
            {
                ByteLevelStyle.Llama3 => ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                ByteLevelStyle.Qwen2 => ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                _ => ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            };
            specials = [.. specials, .. spec.ExtraSpecialTokens];
            var (tj, ids) = ByteLevelTokenizer.Build(spec.TokenizerRanks, spec.TokenizerStyle, specials);
            File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tj.ToJsonString());
            vocab = spec.TokenizerRanks + specials.Length;
            if (spec.TokenizerStyle == ByteLevelStyle.Llama3)
            {
                (bos, eos, bosText, eosText, addBos) = (ids[0], ids[1], specials[0], specials[1], true);
            }
            else
            {
                (bos, eos, bosText, eosText, addBos) = (ids[0], ids[0], specials[0], specials[0], false);
            }
        }

        int vocabSize = vocab + spec.VocabPadding;
        int headDim = spec.HeadDim ?? spec.HiddenSize / spec.Heads;
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray(spec.Architecture),
            ["model_type"] = spec.Architecture switch
            {
                "Qwen2ForCausalLM" => "qwen2",
                "Qwen3ForCausalLM" => "qwen3",
                "MistralForCausalLM" => "mistral",
                "GemmaForCausalLM" => "gemma",
                "Gemma2ForCausalLM" => "gemma2",
                "Gemma3ForCausalLM" => "gemma3_text",
                "GraniteForCausalLM" => "granite",
                "SmolLM3ForCausalLM" => "smollm3",
                "Olmo2ForCausalLM" => "olmo2",
                "Qwen3MoeForCausalLM" => "qwen3_moe",
                "OlmoeForCausalLM" => "olmoe",
                "MixtralForCausalLM" => "mixtral",
                "GraniteMoeForCausalLM" => "granitemoe",
                "Qwen2MoeForCausalLM" => "qwen2_moe",
                "CohereForCausalLM" => "cohere",
                "Cohere2ForCausalLM" => "cohere2",
                _ => "llama",
            },
            ["hidden_size"] = spec.HiddenSize,
            ["intermediate_size"] = spec.IntermediateSize,
            ["num_hidden_layers"] = spec.Layers,
            ["num_attention_heads"] = spec.Heads,
            ["num_key_value_heads"] = spec.KvHeads,
            ["head_dim"] = headDim,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = spec.MaxPositions,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = spec.RopeTheta,
            ["vocab_size"] = vocabSize,
            ["tie_word_embeddings"] = spec.Tied,
            ["attention_bias"] = spec.AttentionBias,
            ["bos_token_id"] = bos,
            ["eos_token_id"] = eos,
            ["torch_dtype"] = spec.StorageDType switch { "BF16" => "bfloat16", "F16" => "float16", _ => "float32" },
        };
        if (spec.Llama3RopeScaling)
        {
            config["rope_scaling"] = new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
                ["original_max_position_embeddings"] = 64,
            };
        }

        if (spec.PartialRotaryFactor is double partial)
        {
            config["partial_rotary_factor"] = partial;
        }

        if (spec.RopeScalingJson is string scaling)
        {
            config["rope_scaling"] = JsonNode.Parse(scaling);
        }

        if (spec.SlidingWindow is int w)
        {
            config["sliding_window"] = w;
            config["use_sliding_window"] = true;
        }

        if (spec.Architecture is "GraniteForCausalLM" or "GraniteMoeForCausalLM")
        {
            // Granite's multipliers, far enough from 1 (and from 1/√head_dim) that each one shows.
            config["embedding_multiplier"] = 3.0;
            config["attention_multiplier"] = 0.1;
            config["residual_multiplier"] = 0.6;
            config["logits_scaling"] = 2.5;
            config["mlp_bias"] = false;
        }

        if (spec.Experts > 0)
        {
            config[spec.Architecture is "MixtralForCausalLM" or "GraniteMoeForCausalLM" ? "num_local_experts" : "num_experts"] = spec.Experts;
            config["num_experts_per_tok"] = spec.ExpertsPerToken;
            if (spec.Architecture is "MixtralForCausalLM" or "GraniteMoeForCausalLM")
            {
                config["intermediate_size"] = spec.ExpertIntermediateSize;   // Mixtral: the experts' width
            }
            else if (spec.Architecture == "OlmoeForCausalLM")
            {
                config["intermediate_size"] = spec.ExpertIntermediateSize;   // OLMoE: the experts' width
                config["norm_topk_prob"] = false;
            }
            else
            {
                config["moe_intermediate_size"] = spec.ExpertIntermediateSize;
                config["norm_topk_prob"] = spec.Architecture != "Qwen2MoeForCausalLM";   // Qwen2-MoE ships false
                if (spec.Architecture == "Qwen2MoeForCausalLM")
                {
                    config["shared_expert_intermediate_size"] = 2 * spec.ExpertIntermediateSize;
                }

                config["decoder_sparse_step"] = 1;
                config["mlp_only_layers"] = new JsonArray();
            }
        }

        if (spec.Architecture is "CohereForCausalLM" or "Cohere2ForCausalLM")
        {
            config["layer_norm_eps"] = 1e-5;
            config["logit_scale"] = 0.5;
            config["use_qk_norm"] = false;
            if (spec.Architecture == "Cohere2ForCausalLM")
            {
                config["sliding_window_pattern"] = 4;
            }
        }

        if (spec.Architecture == "SmolLM3ForCausalLM")
        {
            config["no_rope_layers"] = new JsonArray(Enumerable.Range(0, spec.Layers).Select(i => (JsonNode)((i + 1) % 4 != 0 ? 1 : 0)).ToArray());
            config["no_rope_layer_interval"] = 4;
        }

        if (spec.Architecture == "GemmaForCausalLM")
        {
            config["hidden_act"] = "gelu";   // as Gemma's config says; transformers runs the tanh GELU regardless
        }

        if (spec.IsGemma)
        {
            // As transformers writes Gemma-2/3 configs (Gemma-3: five sliding layers per global one).
            config.Remove("hidden_act");
            config["hidden_activation"] = "gelu_pytorch_tanh";
            config["query_pre_attn_scalar"] = headDim;
            config["attn_logit_softcapping"] = spec.AttentionSoftcap;
            config["final_logit_softcapping"] = spec.FinalLogitSoftcap;
            if (spec.Architecture == "Gemma3ForCausalLM")
            {
                config["sliding_window_pattern"] = 6;
                config["rope_local_base_freq"] = spec.LocalRopeTheta;
            }
        }

        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var tokenizerConfig = new JsonObject
        {
            ["add_bos_token"] = addBos,
            ["bos_token"] = bosText,
            ["eos_token"] = eosText,
            ["model_max_length"] = spec.MaxPositions,
            ["tokenizer_class"] = spec.SentencePiece ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast",
        };
        if (spec.ChatTemplate is not null)
        {
            tokenizerConfig["chat_template"] = spec.ChatTemplate;
        }

        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), tokenizerConfig.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), new JsonObject
        {
            ["bos_token_id"] = bos,
            ["eos_token_id"] = new JsonArray(eos),
        }.ToJsonString());

        WriteWeights(folder, spec, vocabSize, headDim);
        return folder;
    }

    private static void WriteWeights(string folder, TinyModelSpec spec, int vocabSize, int headDim)
    {
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator((ulong)spec.Seed);
        ScalarType storage = spec.StorageDType switch
        {
            "BF16" => ScalarType.BFloat16,
            "F16" => ScalarType.Float16,
            _ => ScalarType.Float32,
        };
        long d = spec.HiddenSize;
        float s = spec.WeightScale;
        Tensor Linear(long rows, long cols) => (torch.randn([rows, cols], generator: gen) * (s * 0.7 / Math.Sqrt(cols))).to(storage);
        Tensor Vec(long n, double center, double spread) => (torch.randn([n], generator: gen) * spread + center).to(storage);

        // Gemma multiplies the embedding by √d: rows of RMS 2/√d come out at the scale of the layers' (post-normed) outputs,
        // as in trained Gemma checkpoints; at 0.5 the embedding would drown every layer (greedy then repeats the last token).
        bool gemmaScaled = spec.IsGemma || spec.Architecture == "GemmaForCausalLM";
        Tensor embed = (torch.randn([vocabSize, d], generator: gen) * (0.5 * s * (gemmaScaled ? 4 / Math.Sqrt(d) : 1))).to(storage);
        var tensors = new List<KeyValuePair<string, Tensor>> { new("model.embed_tokens.weight", embed) };
        double outScale = spec.SuccessorHead ? 0.05 : 1;
        bool qwen2 = spec.Architecture is "Qwen2ForCausalLM" or "Qwen2MoeForCausalLM";
        bool qkvBias = qwen2 || spec.AttentionBias;
        bool oBias = !qwen2 && spec.AttentionBias;
        double norm = gemmaScaled ? 0 : 1;   // Gemma stores norm weights as offsets from one
        for (int i = 0; i < spec.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            if (spec.Architecture != "Olmo2ForCausalLM")
            {
                tensors.Add(new(p + "input_layernorm.weight", Vec(d, norm, 0.1)));   // OLMo-2 has norms after attention and MLP only
            }

            tensors.Add(new(p + "self_attn.q_proj.weight", Linear(spec.Heads * headDim, d)));
            tensors.Add(new(p + "self_attn.k_proj.weight", Linear(spec.KvHeads * headDim, d)));
            tensors.Add(new(p + "self_attn.v_proj.weight", Linear(spec.KvHeads * headDim, d)));
            if (qkvBias)
            {
                tensors.Add(new(p + "self_attn.q_proj.bias", Vec(spec.Heads * headDim, 0, 0.1)));
                tensors.Add(new(p + "self_attn.k_proj.bias", Vec(spec.KvHeads * headDim, 0, 0.1)));
                tensors.Add(new(p + "self_attn.v_proj.bias", Vec(spec.KvHeads * headDim, 0, 0.1)));
            }

            if (spec.Architecture is "Olmo2ForCausalLM" or "OlmoeForCausalLM")
            {
                // OLMo-2 normalises q and k over their whole projections.
                tensors.Add(new(p + "self_attn.q_norm.weight", Vec(spec.Heads * headDim, 1, 0.1)));
                tensors.Add(new(p + "self_attn.k_norm.weight", Vec(spec.KvHeads * headDim, 1, 0.1)));
            }

            if (spec.Architecture is "Qwen3ForCausalLM" or "Gemma3ForCausalLM" or "Qwen3MoeForCausalLM")
            {
                tensors.Add(new(p + "self_attn.q_norm.weight", Vec(headDim, norm, 0.1)));
                tensors.Add(new(p + "self_attn.k_norm.weight", Vec(headDim, norm, 0.1)));
            }

            tensors.Add(new(p + "self_attn.o_proj.weight", (Linear(d, spec.Heads * headDim) * outScale).to(storage)));
            if (oBias)
            {
                tensors.Add(new(p + "self_attn.o_proj.bias", Vec(d, 0, 0.1)));
            }

            if (spec.Architecture is not ("CohereForCausalLM" or "Cohere2ForCausalLM"))
            {
                tensors.Add(new(p + "post_attention_layernorm.weight", Vec(d, norm, 0.1)));   // Cohere: one norm a layer
            }

            if (spec.IsGemma)
            {
                tensors.Add(new(p + "pre_feedforward_layernorm.weight", Vec(d, norm, 0.1)));
            }

            if (spec.IsGemma || spec.Architecture == "Olmo2ForCausalLM")
            {
                tensors.Add(new(p + "post_feedforward_layernorm.weight", Vec(d, norm, 0.1)));
            }

            if (spec.Experts > 0)
            {
                // A router that spreads tokens over the experts, and each expert's SwiGLU.
                if (spec.Architecture == "GraniteMoeForCausalLM")
                {
                    // Granite-MoE: a router layer and the experts stacked, gate rows then up rows in input_linear.
                    tensors.Add(new(p + "block_sparse_moe.router.layer.weight", (torch.randn([spec.Experts, d], generator: gen) * (2.0 / Math.Sqrt(d))).to(storage)));
                    tensors.Add(new(p + "block_sparse_moe.input_linear.weight",
                        (torch.randn([spec.Experts, 2 * spec.ExpertIntermediateSize, d], generator: gen) * (s * 0.7 / Math.Sqrt(d))).to(storage)));
                    tensors.Add(new(p + "block_sparse_moe.output_linear.weight",
                        (torch.randn([spec.Experts, d, spec.ExpertIntermediateSize], generator: gen) * (s * 0.7 / Math.Sqrt(spec.ExpertIntermediateSize))).to(storage)));
                    continue;
                }

                if (spec.Architecture == "Qwen2MoeForCausalLM")
                {
                    // Qwen2-MoE's shared expert and its sigmoid gate.
                    int fs = 2 * spec.ExpertIntermediateSize;
                    tensors.Add(new(p + "mlp.shared_expert_gate.weight", Linear(1, d)));
                    tensors.Add(new(p + "mlp.shared_expert.gate_proj.weight", Linear(fs, d)));
                    tensors.Add(new(p + "mlp.shared_expert.up_proj.weight", Linear(fs, d)));
                    tensors.Add(new(p + "mlp.shared_expert.down_proj.weight", Linear(d, fs)));
                }

                // (Mixtral: block_sparse_moe.gate and experts.E.w1 / w3 / w2 for gate / up / down.)
                bool mixtral = spec.Architecture == "MixtralForCausalLM";
                string Expert(int e, string kind, string w) => mixtral ? $"{p}block_sparse_moe.experts.{e}.{w}.weight" : $"{p}mlp.experts.{e}.{kind}_proj.weight";
                tensors.Add(new(mixtral ? p + "block_sparse_moe.gate.weight" : p + "mlp.gate.weight",
                    (torch.randn([spec.Experts, d], generator: gen) * (2.0 / Math.Sqrt(d))).to(storage)));
                for (int e = 0; e < spec.Experts; e++)
                {
                    tensors.Add(new(Expert(e, "gate", "w1"), Linear(spec.ExpertIntermediateSize, d)));
                    tensors.Add(new(Expert(e, "up", "w3"), Linear(spec.ExpertIntermediateSize, d)));
                    tensors.Add(new(Expert(e, "down", "w2"), Linear(d, spec.ExpertIntermediateSize)));
                }

                continue;
            }

            tensors.Add(new(p + "mlp.gate_proj.weight", Linear(spec.IntermediateSize, d)));
            tensors.Add(new(p + "mlp.up_proj.weight", Linear(spec.IntermediateSize, d)));
            tensors.Add(new(p + "mlp.down_proj.weight", (Linear(d, spec.IntermediateSize) * outScale).to(storage)));
        }

        if (spec.Architecture == "Phi3ForCausalLM")
        {
            // Phi-3 stores q|k|v as one qkv_proj and gate|up as one gate_up_proj, in that order.
            var byName = tensors.ToDictionary(kv => kv.Key, kv => kv.Value);
            var fused = new List<KeyValuePair<string, Tensor>>();
            foreach (var (name, t) in tensors)
            {
                string layer = name[..(name.IndexOf(".self_attn.", StringComparison.Ordinal) is int a and >= 0 ? a + 1
                    : name.IndexOf(".mlp.", StringComparison.Ordinal) is int m and >= 0 ? m + 1 : 0)];
                if (name.EndsWith("self_attn.q_proj.weight", StringComparison.Ordinal))
                {
                    fused.Add(new(layer + "self_attn.qkv_proj.weight", torch.cat([t, byName[layer + "self_attn.k_proj.weight"], byName[layer + "self_attn.v_proj.weight"]])));
                }
                else if (name.EndsWith("mlp.gate_proj.weight", StringComparison.Ordinal))
                {
                    fused.Add(new(layer + "mlp.gate_up_proj.weight", torch.cat([t, byName[layer + "mlp.up_proj.weight"]])));
                }
                else if (!name.EndsWith("self_attn.k_proj.weight", StringComparison.Ordinal) && !name.EndsWith("self_attn.v_proj.weight", StringComparison.Ordinal)
                    && !name.EndsWith("mlp.up_proj.weight", StringComparison.Ordinal))
                {
                    fused.Add(new(name, t));
                }
            }

            tensors = fused;
        }

        tensors.Add(new("model.norm.weight", Vec(d, norm, 0.1)));
        if (!spec.Tied)
        {
            tensors.Add(new("lm_head.weight", spec.SuccessorHead
                ? (embed.roll(1, 0) * 4).to(storage)
                : (torch.randn([vocabSize, d], generator: gen) * (0.5 * s)).to(storage)));
        }

        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        if (spec.Shards <= 1)
        {
            SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, metadata);
            return;
        }

        var weightMap = new JsonObject();
        long totalBytes = 0;
        int per = (tensors.Count + spec.Shards - 1) / spec.Shards;
        for (int shard = 0; shard < spec.Shards; shard++)
        {
            string name = $"model-{shard + 1:D5}-of-{spec.Shards:D5}.safetensors";
            var part = tensors.Skip(shard * per).Take(per).ToList();
            SafetensorsWriter.Write(Path.Combine(folder, name), part, metadata);
            foreach (var (k, t) in part)
            {
                weightMap[k] = name;
                totalBytes += t.numel() * t.element_size();
            }
        }

        File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"), new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = totalBytes },
            ["weight_map"] = weightMap,
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}

using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>The architecture families that the forward implements.</summary>
internal enum ModelFamily
{
    Llama,
    Mistral,
    Qwen2,
    Qwen3,

    /// <summary>Phi-3 (<c>Phi3ForCausalLM</c>): a Llama with fused <c>qkv_proj</c> and <c>gate_up_proj</c> weights.</summary>
    Phi3,

    /// <summary>Gemma (<c>GemmaForCausalLM</c>; CodeGemma): a Llama layout with GeGLU, (1 + w) norms and the embedding
    /// scaled by √d.</summary>
    Gemma,

    /// <summary>Gemma-2 (<c>Gemma2ForCausalLM</c>): GeGLU, (1 + w) norms around attention and MLP, the embedding scaled by
    /// √d, attention and final logits soft-capped, sliding and global layers alternating.</summary>
    Gemma2,

    /// <summary>Gemma-3 text (<c>Gemma3ForCausalLM</c>): Gemma-2 without soft-capping, with q/k norms, five sliding layers
    /// per global one, and the sliding layers on their own RoPE base.</summary>
    Gemma3,

    /// <summary>Granite (<c>GraniteForCausalLM</c>): a Llama with multipliers on the embedding, the attention scores, each
    /// residual branch and (dividing) the logits.</summary>
    Granite,

    /// <summary>SmolLM3 (<c>SmolLM3ForCausalLM</c>): a Llama whose every fourth layer (<c>no_rope_layers</c>) has no RoPE.</summary>
    SmolLM3,

    /// <summary>OLMo-2 (<c>Olmo2ForCausalLM</c>): norms after attention and MLP only, q and k normalised over their whole
    /// projections.</summary>
    Olmo2,

    /// <summary>Qwen3-MoE (<c>Qwen3MoeForCausalLM</c>): Qwen3 with a mixture of experts in place of each MLP.</summary>
    Qwen3Moe,

    /// <summary>OLMoE (<c>OlmoeForCausalLM</c>): a Llama with whole-projection q/k norms and a mixture of experts.</summary>
    Olmoe,

    /// <summary>Mixtral (<c>MixtralForCausalLM</c>): a Mistral with a mixture of experts (<c>block_sparse_moe</c>).</summary>
    Mixtral,

    /// <summary>Qwen2-MoE (<c>Qwen2MoeForCausalLM</c>; Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2 with a mixture of experts and
    /// a shared expert behind a sigmoid gate.</summary>
    Qwen2Moe,

    /// <summary>Command-R (<c>CohereForCausalLM</c>): LayerNorms, attention and MLP in parallel on one normed input,
    /// interleaved RoPE, scaled logits.</summary>
    Cohere,

    /// <summary>Command-R7B (<c>Cohere2ForCausalLM</c>): Command-R with three sliding layers (with RoPE) per global one
    /// (without).</summary>
    Cohere2,

    /// <summary>Granite-MoE (<c>GraniteMoeForCausalLM</c>): Granite's multipliers with a mixture of experts stored stacked
    /// (<c>input_linear</c>, <c>output_linear</c>).</summary>
    GraniteMoe,
}

/// <summary>Where a layer's RMSNorms sit.</summary>
internal enum NormPlacement
{
    /// <summary>Llama: before attention (<c>input_layernorm</c>) and before the MLP (<c>post_attention_layernorm</c>).</summary>
    Pre,

    /// <summary>Gemma-2/3: before and after each of attention and MLP (<c>input_layernorm</c>, <c>post_attention_layernorm</c>,
    /// <c>pre_feedforward_layernorm</c>, <c>post_feedforward_layernorm</c>).</summary>
    Sandwich,

    /// <summary>OLMo-2: only after each (<c>post_attention_layernorm</c>, <c>post_feedforward_layernorm</c>), before the
    /// residual adds.</summary>
    Post,
}

/// <summary>The MLP's gate activation.</summary>
internal enum MlpActivation
{
    /// <summary>SwiGLU: silu(gate) · up.</summary>
    Silu,

    /// <summary>GeGLU with the tanh approximation (<c>gelu_pytorch_tanh</c>): gelu(gate) · up.</summary>
    GeluTanh,
}

/// <summary>The RoPE frequency scalings the forward applies (<c>rope_scaling.rope_type</c>).</summary>
internal enum RopeScalingKind
{
    /// <summary>Position interpolation: every frequency divided by the factor.</summary>
    Linear,

    /// <summary>Llama-3.1's: low frequencies divided by the factor, high ones kept, a smooth blend between.</summary>
    Llama3,

    /// <summary>YaRN: a ramp over the dimensions between extrapolated and interpolated frequencies, and cos/sin scaled by
    /// an attention factor.</summary>
    Yarn,

    /// <summary>LongRoPE (Phi-3.5, Phi-3 128k): each frequency divided by its own factor — the short factors within the
    /// pretraining context, the long ones past it — and cos/sin scaled by an attention factor.</summary>
    LongRope,
}

/// <summary>RoPE frequency scaling as <c>rope_scaling</c> (or transformers 5's <c>rope_parameters</c>) configures it, with
/// transformers' defaults.</summary>
internal sealed record RopeScaling(RopeScalingKind Kind, double Factor)
{
    /// <summary>Gets llama3's <c>low_freq_factor</c>.</summary>
    public double LowFreqFactor { get; init; } = 1.0;

    /// <summary>Gets llama3's <c>high_freq_factor</c>.</summary>
    public double HighFreqFactor { get; init; } = 4.0;

    /// <summary>Gets the pretraining context (<c>original_max_position_embeddings</c>; llama3's default 8,192, YaRN's
    /// <c>max_position_embeddings</c>).</summary>
    public int OriginalMaxPositions { get; init; }

    /// <summary>Gets YaRN's factor on cos and sin (<c>attention_factor</c>, by default 0.1·ln(factor) + 1); 1 otherwise.</summary>
    public double AttentionFactor { get; init; } = 1.0;

    /// <summary>Gets YaRN's <c>beta_fast</c> (32): rotations below which dimensions are interpolated only.</summary>
    public double BetaFast { get; init; } = 32;

    /// <summary>Gets YaRN's <c>beta_slow</c> (1): rotations above which dimensions are extrapolated only.</summary>
    public double BetaSlow { get; init; } = 1;

    /// <summary>Gets YaRN's <c>truncate</c> (true): the correction range rounded outwards to whole dimensions.</summary>
    public bool Truncate { get; init; } = true;

    /// <summary>Gets LongRoPE's per-frequency divisors within the pretraining context (<c>short_factor</c>, hd/2 values).</summary>
    public IReadOnlyList<double> ShortFactors { get; init; } = [];

    /// <summary>Gets LongRoPE's per-frequency divisors from <see cref="OriginalMaxPositions"/> on (<c>long_factor</c>).</summary>
    public IReadOnlyList<double> LongFactors { get; init; } = [];
}

/// <summary>
/// The parts of a Hugging Face <c>config.json</c> that the forward needs, with the defaults transformers applies.
/// </summary>
internal sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required ModelFamily Family { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public required double RmsNormEps { get; init; }
    public required double RopeTheta { get; init; }
    public RopeScaling? RopeScaling { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public required bool TieWordEmbeddings { get; init; }

    /// <summary>Gets whether q/k/v projections carry a bias (Qwen2 always; Llama/Qwen3 when <c>attention_bias</c>).</summary>
    public required bool QkvBias { get; init; }

    /// <summary>Gets whether o_proj carries a bias (Llama/Qwen3 <c>attention_bias</c>).</summary>
    public required bool OutputBias { get; init; }

    /// <summary>Gets whether q and k are RMS-normalised per head before RoPE (Qwen3).</summary>
    public required bool QkNorm { get; init; }

    /// <summary>Gets the rotated dimensions of each head (<c>partial_rotary_factor</c> · <see cref="HeadDim"/>; all by
    /// default). With fewer, the loader reorders each q/k head's dimensions (<see cref="RotaryOrder"/>) so that the rotated
    /// pairs sit where a whole-head rotation puts them and the rest pass through.</summary>
    public required int RotaryDim { get; init; }

    /// <summary>
    /// Where each dimension of a q/k head goes when <see cref="RotaryDim"/> r &lt; <see cref="HeadDim"/> h: the forward
    /// rotates pairs (j, j + h/2), a partial rotation pairs (i, i + r/2) for i &lt; r/2 and leaves dimensions r … h − 1
    /// alone, so stored dimension <c>order[j]</c> is put at j — the rotated halves at 0 … r/2 − 1 and h/2 … h/2 + r/2 − 1,
    /// the passed-through ones split over the rest (whose tables hold cos 1, sin 0). q·k is a sum over the same products
    /// in another order; values are not reordered. Null when every dimension rotates.
    /// </summary>
    public int[]? RotaryOrder()
    {
        int h = HeadDim, r = RotaryDim;
        if (InterleavedRope)
        {
            // Pairs (2i, 2i + 1), as Cohere rotates, put where the forward rotates (i, i + h/2).
            return Enumerable.Range(0, h).Select(j => j < h / 2 ? 2 * j : (2 * (j - (h / 2))) + 1).ToArray();
        }

        if (r == h)
        {
            return null;
        }

        int pass = (h - r) / 2;
        return Enumerable.Range(0, h).Select(j => j switch
        {
            _ when j < r / 2 => j,
            _ when j < h / 2 => r + (j - (r / 2)),
            _ when j < (h / 2) + (r / 2) => (r / 2) + (j - (h / 2)),
            _ => r + pass + (j - (h / 2) - (r / 2)),
        }).ToArray();
    }

    /// <summary>Gets whether the checkpoint stores q|k|v as one <c>self_attn.qkv_proj.weight</c> and gate|up as one
    /// <c>mlp.gate_up_proj.weight</c> (Phi-3), in the order the forward fuses them itself.</summary>
    public bool FusedProjections => Family == ModelFamily.Phi3;

    /// <summary>Gets the sliding attention window, or null for full attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Gets which layers attend through <see cref="SlidingWindow"/> (Gemma's alternation: <c>layer_types</c>, or
    /// every <c>sliding_window_pattern</c>-th layer global), or null when all do.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> attends through the sliding window.</summary>
    public bool IsSliding(int layer) => SlidingWindow is not null && (SlidingLayers is null || SlidingLayers[layer]);

    /// <summary>Gets the RoPE base of the sliding layers, without scaling (Gemma-3's <c>rope_local_base_freq</c>), or null
    /// when every layer uses <see cref="RopeTheta"/> and <see cref="RopeScaling"/>.</summary>
    public double? LocalRopeTheta { get; init; }

    /// <summary>Gets whether RMSNorm weights are stored as offsets from one (Gemma: <c>x̂ · (1 + w)</c>); the loader adds the
    /// one, so the forward's norms are the plain <c>x̂ · w</c>.</summary>
    public bool NormWeightsOffsetByOne { get; init; }

    /// <summary>Gets where each layer's norms sit (Llama's pre-norms, Gemma's sandwich, OLMo-2's post-norms).</summary>
    public NormPlacement NormPlacement { get; init; }

    /// <summary>Gets whether the q and k norms (<see cref="QkNorm"/>) normalise each whole projection (OLMo-2:
    /// <c>q_norm</c> over heads·head_dim) rather than each head.</summary>
    public bool QkNormWholeProjection { get; init; }

    /// <summary>Gets whether RoPE rotates adjacent pairs (2i, 2i + 1) (Cohere) rather than halves; the loader reorders q/k
    /// rows (<see cref="RotaryOrder"/>) so the forward's half rotation does the same.</summary>
    public bool InterleavedRope { get; init; }

    /// <summary>Gets whether norms are LayerNorms without bias (the mean subtracted; Cohere) rather than RMSNorms.</summary>
    public bool LayerNorms { get; init; }

    /// <summary>Gets whether attention and MLP both read the layer's one normed input and both add to the residual (Cohere).</summary>
    public bool ParallelBlock { get; init; }

    /// <summary>Gets the MLP's gate activation.</summary>
    public MlpActivation Activation { get; init; }

    /// <summary>Gets the factor on the token embeddings (Gemma: √d, rounded to the checkpoint's dtype as transformers
    /// computes it); 1 otherwise.</summary>
    public float EmbeddingScale { get; init; } = 1f;

    /// <summary>Gets the factor on q·k (Granite's <c>attention_multiplier</c>; <c>query_pre_attn_scalar</c>^−½ for Gemma;
    /// 1/√<see cref="HeadDim"/> otherwise).</summary>
    public double AttentionScale => AttentionMultiplier ?? 1.0 / Math.Sqrt(QueryPreAttentionScalar ?? HeadDim);

    /// <summary>Gets Granite's <c>attention_multiplier</c> (the factor on q·k itself), or null.</summary>
    public double? AttentionMultiplier { get; init; }

    /// <summary>Gets the factor on each layer's attention and MLP outputs before the residual adds (Granite's
    /// <c>residual_multiplier</c>); 1 otherwise.</summary>
    public float ResidualScale { get; init; } = 1f;

    /// <summary>Gets the divisor of the logits (Granite's <c>logits_scaling</c>); 1 otherwise.</summary>
    public float LogitDivisor { get; init; } = 1f;

    /// <summary>Gets which layers have no RoPE (SmolLM3's <c>no_rope_layers</c> zeros), or null when every layer rotates.</summary>
    public IReadOnlyList<bool>? NoRopeLayers { get; init; }

    /// <summary>Gets the experts of each mixture-of-experts MLP (0: every MLP is dense).</summary>
    public int NumExperts { get; init; }

    /// <summary>Gets the experts each token is routed to (<c>num_experts_per_tok</c>).</summary>
    public int ExpertsPerToken { get; init; }

    /// <summary>Gets an expert's intermediate width (Qwen3-MoE's <c>moe_intermediate_size</c>; OLMoE's <c>intermediate_size</c>).</summary>
    public int ExpertIntermediateSize { get; init; }

    /// <summary>Gets the shared expert's intermediate width (Qwen2-MoE's <c>shared_expert_intermediate_size</c>: every token
    /// also runs it, weighted by a sigmoid gate), or 0 for none.</summary>
    public int SharedExpertIntermediateSize { get; init; }

    /// <summary>Gets whether the chosen experts' softmax weights are renormalised to sum to one (<c>norm_topk_prob</c>).</summary>
    public bool NormalizeTopK { get; init; }

    /// <summary>Gets which layers' MLPs are mixtures of experts (Qwen3-MoE's <c>decoder_sparse_step</c> and
    /// <c>mlp_only_layers</c>), or null when all are (given <see cref="NumExperts"/>).</summary>
    public IReadOnlyList<bool>? MoeLayers { get; init; }

    /// <summary>The router's tensor name in the layer under <paramref name="prefix"/> (Mixtral: <c>block_sparse_moe.gate</c>;
    /// Qwen3-MoE, OLMoE: <c>mlp.gate</c>).</summary>
    public string RouterName(string prefix) => Family switch
    {
        ModelFamily.Mixtral => $"{prefix}block_sparse_moe.gate.weight",
        ModelFamily.GraniteMoe => $"{prefix}block_sparse_moe.router.layer.weight",
        _ => $"{prefix}mlp.gate.weight",
    };

    /// <summary>Qwen2-MoE's shared expert's <paramref name="kind"/> (gate, up or down) projection under <paramref name="prefix"/>.</summary>
    public static string SharedExpertWeightName(string prefix, string kind) => $"{prefix}mlp.shared_expert.{kind}_proj.weight";

    /// <summary>Qwen2-MoE's shared expert's gate ([1, d]) under <paramref name="prefix"/>.</summary>
    public static string SharedExpertGateName(string prefix) => $"{prefix}mlp.shared_expert_gate.weight";

    /// <summary>Granite-MoE's stacked experts under <paramref name="prefix"/>: gate|up [E, 2·ff, d] and down [E, d, ff].</summary>
    public static (string GateUp, string Down) StackedExpertNames(string prefix) =>
        ($"{prefix}block_sparse_moe.input_linear.weight", $"{prefix}block_sparse_moe.output_linear.weight");

    /// <summary>Gets whether the experts are stored stacked: Granite-MoE's <c>block_sparse_moe.input_linear.weight</c>
    /// [experts, 2·ff, d] (gate rows, then up) and <c>output_linear.weight</c> [experts, d, ff].</summary>
    public bool StackedExperts => Family == ModelFamily.GraniteMoe;

    /// <summary>Expert <paramref name="e"/>'s <paramref name="kind"/> (gate, up or down) projection's tensor name (Mixtral's
    /// w1, w3, w2).</summary>
    public string ExpertWeightName(string prefix, int e, string kind) => Family == ModelFamily.Mixtral
        ? $"{prefix}block_sparse_moe.experts.{e}.{kind switch { "gate" => "w1", "up" => "w3", _ => "w2" }}.weight"
        : $"{prefix}mlp.experts.{e}.{kind}_proj.weight";

    /// <summary>Whether layer <paramref name="layer"/>'s MLP is a mixture of experts.</summary>
    public bool IsMoe(int layer) => NumExperts > 0 && (MoeLayers is null || MoeLayers[layer]);

    /// <summary>Whether layer <paramref name="layer"/> rotates q and k.</summary>
    public bool UsesRope(int layer) => NoRopeLayers is null || !NoRopeLayers[layer];

    /// <summary>Gets Gemma's <c>query_pre_attn_scalar</c>, or null for the head dimension.</summary>
    public double? QueryPreAttentionScalar { get; init; }

    /// <summary>Gets the attention-score soft cap c (scores become c·tanh(s/c); Gemma-2: 50), or null.</summary>
    public double? AttentionSoftcap { get; init; }

    /// <summary>Gets the final-logit soft cap c (logits become c·tanh(l/c); Gemma-2: 30), or null.</summary>
    public double? FinalLogitSoftcap { get; init; }

    public required IReadOnlyList<int> EosTokenIds { get; init; }
    public int? BosTokenId { get; init; }

    public static ModelConfig Load(string path)
    {
        JsonObject root = ReadJsonObject(path);
        string arch = root["architectures"] is JsonArray { Count: > 0 } archs
            ? archs[0]!.GetValue<string>()
            : throw new CoralModelException(path, "architectures", "missing; expected e.g. [\"LlamaForCausalLM\"].");
        if (arch is "Gemma3ForCausalLM" or "Gemma3ForConditionalGeneration")
        {
            (root, arch) = (Gemma3Text(root, path), "Gemma3ForCausalLM");
        }
        else if (arch is "Mistral3ForConditionalGeneration" or "LlavaForConditionalGeneration")
        {
            (root, arch) = TextModel(root, path, arch);
        }
        ModelFamily family = arch switch
        {
            "LlamaForCausalLM" => ModelFamily.Llama,
            "MistralForCausalLM" => ModelFamily.Mistral,
            "Qwen2ForCausalLM" => ModelFamily.Qwen2,
            "Qwen3ForCausalLM" => ModelFamily.Qwen3,
            "Phi3ForCausalLM" => ModelFamily.Phi3,
            "GemmaForCausalLM" => ModelFamily.Gemma,
            "Gemma2ForCausalLM" => ModelFamily.Gemma2,
            "Gemma3ForCausalLM" => ModelFamily.Gemma3,
            "GraniteForCausalLM" => ModelFamily.Granite,
            "SmolLM3ForCausalLM" => ModelFamily.SmolLM3,
            "Olmo2ForCausalLM" => ModelFamily.Olmo2,
            "Qwen3MoeForCausalLM" => ModelFamily.Qwen3Moe,
            "OlmoeForCausalLM" => ModelFamily.Olmoe,
            "MixtralForCausalLM" => ModelFamily.Mixtral,
            "GraniteMoeForCausalLM" => ModelFamily.GraniteMoe,
            "Qwen2MoeForCausalLM" => ModelFamily.Qwen2Moe,
            "CohereForCausalLM" => ModelFamily.Cohere,
            "Cohere2ForCausalLM" => ModelFamily.Cohere2,
            _ => throw new CoralModelException(path, "architectures",
                $"'{arch}' is not supported; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, "
                + "GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Mistral3ForConditionalGeneration, LlavaForConditionalGeneration (their language models), GraniteForCausalLM, SmolLM3ForCausalLM, Olmo2ForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM, MixtralForCausalLM, GraniteMoeForCausalLM, Qwen2MoeForCausalLM, CohereForCausalLM, Cohere2ForCausalLM."),
        };


        int hidden = RequiredInt(root, path, "hidden_size");
        int heads = RequiredInt(root, path, "num_attention_heads");
        int kvHeads = Positive(OptionalInt(root, path, "num_key_value_heads") ?? heads, path, "num_key_value_heads");
        int headDim = OptionalInt(root, path, "head_dim") is int explicitHeadDim ? Positive(explicitHeadDim, path, "head_dim") : (hidden % heads == 0
            ? hidden / heads
            : throw new CoralModelException(path, "hidden_size", $"{hidden} is not divisible by num_attention_heads {heads} and head_dim is absent."));
        if (heads % kvHeads != 0)
        {
            throw new CoralModelException(path, "num_key_value_heads", $"{kvHeads} does not divide num_attention_heads {heads}.");
        }

        if (headDim % 2 != 0)
        {
            throw new CoralModelException(path, "head_dim", $"{headDim} must be even for rotary embeddings.");
        }

        // Rotary embeddings over the first partial_rotary_factor · head_dim dimensions of each head (Phi-4-mini: 0.75), as
        // transformers takes int(head_dim · factor).
        double partial = OptionalDouble(root, path, "partial_rotary_factor") ?? 1.0;
        int rotaryDim = (int)(headDim * partial);
        if (partial is <= 0 or > 1 || rotaryDim % 2 != 0 || rotaryDim == 0)
        {
            throw new CoralModelException(path, "partial_rotary_factor",
                $"{partial} gives {rotaryDim} rotary dimensions of head_dim {headDim}; they must be even and between 2 and head_dim.");
        }

        RopeScaling? scaling = ParseRopeScaling(root, path);
        if (scaling is { Kind: RopeScalingKind.LongRope } && (scaling.ShortFactors.Count != rotaryDim / 2 || scaling.LongFactors.Count != rotaryDim / 2))
        {
            string field = root["rope_scaling"] is JsonObject ? "rope_scaling" : "rope_parameters";
            throw new CoralModelException(path, $"{field}.short_factor",
                $"LongRoPE needs {rotaryDim / 2} factors each (half the rotary dimensions); short_factor has {scaling.ShortFactors.Count}, long_factor {scaling.LongFactors.Count}.");
        }

        bool attentionBias = OptionalBool(root, path, "attention_bias") ?? false;
        int? window = OptionalInt(root, path, "sliding_window");
        bool useWindow = family switch
        {
            ModelFamily.Mistral or ModelFamily.Phi3 or ModelFamily.Mixtral => window is not null,
            ModelFamily.Qwen2 or ModelFamily.Qwen3 => (OptionalBool(root, path, "use_sliding_window") ?? false) && window is not null,
            _ => false,
        };

        int layers = RequiredInt(root, path, "num_hidden_layers");
        bool gemma = family is ModelFamily.Gemma or ModelFamily.Gemma2 or ModelFamily.Gemma3;
        var config = new ModelConfig
        {
            Architecture = arch,
            Family = family,
            HiddenSize = hidden,
            IntermediateSize = RequiredInt(root, path, "intermediate_size"),
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            RotaryDim = rotaryDim,
            VocabSize = RequiredInt(root, path, "vocab_size"),
            RmsNormEps = OptionalDouble(root, path, "rms_norm_eps") ?? 1e-6,
            RopeTheta = OptionalRopeTheta(root, path) ?? 10000.0,
            RopeScaling = scaling,
            MaxPositionEmbeddings = Positive(OptionalInt(root, path, "max_position_embeddings") ?? 2048, path, "max_position_embeddings"),
            TieWordEmbeddings = OptionalBool(root, path, "tie_word_embeddings") ?? false,
            QkvBias = family is ModelFamily.Qwen2 or ModelFamily.Qwen2Moe || attentionBias,
            OutputBias = family is not (ModelFamily.Qwen2 or ModelFamily.Qwen2Moe) && attentionBias,
            QkNorm = family is ModelFamily.Qwen3 or ModelFamily.Qwen3Moe,
            SlidingWindow = useWindow ? window : null,
            // Qwen2/Qwen3 slide from layer max_window_layers on (transformers' default 28); Mistral and Phi-3 everywhere.
            SlidingLayers = !useWindow ? null : LayerTypes(root, path, layers)
                ?? (family is ModelFamily.Qwen2 or ModelFamily.Qwen3
                    ? Enumerable.Range(0, layers).Select(i => i >= (OptionalInt(root, path, "max_window_layers") ?? 28)).ToArray()
                    : null),
            EosTokenIds = ReadIdList(root["eos_token_id"], path, "eos_token_id"),
            BosTokenId = OptionalInt(root, path, "bos_token_id"),
        };
        if (OptionalBool(root, path, "mlp_bias") ?? false)
        {
            throw new CoralModelException(path, "mlp_bias", "MLP biases are not supported.");
        }

        // The Llama-family MLPs are SwiGLU: another activation would be computed silently wrong.
        if (!gemma && root["hidden_act"] is JsonValue act && act.TryGetValue(out string? name) && name is not ("silu" or "swish"))
        {
            throw new CoralModelException(path, "hidden_act", $"'{name}' is not supported for {arch}; supported: silu.");
        }

        return family switch
        {
            ModelFamily.Gemma => WithGemma1(config, root, path),
            ModelFamily.Gemma2 or ModelFamily.Gemma3 => WithGemma(config, root, path, window),
            ModelFamily.Granite => WithGraniteMultipliers(config, root, path),
            ModelFamily.Cohere or ModelFamily.Cohere2 => WithCohere(config, root, path, window),
            // Granite-MoE: softmax over the top-k logits, i.e. the chosen experts' weights renormalised.
            ModelFamily.GraniteMoe => WithExperts(WithGraniteMultipliers(config, root, path), root, path, config.IntermediateSize, "num_local_experts")
                with { NormalizeTopK = true },
            ModelFamily.SmolLM3 => config with { NoRopeLayers = NoRope(root, path, layers) },
            ModelFamily.Olmo2 => config with { NormPlacement = NormPlacement.Post, QkNorm = true, QkNormWholeProjection = true },
            ModelFamily.Qwen3Moe => WithExperts(config, root, path, RequiredInt(root, path, "moe_intermediate_size")),
            ModelFamily.Qwen2Moe => WithExperts(config, root, path, RequiredInt(root, path, "moe_intermediate_size"))
                with { SharedExpertIntermediateSize = OptionalInt(root, path, "shared_expert_intermediate_size") ?? 0 },
            // Mixtral: num_local_experts of intermediate_size, the chosen ones' softmax weights always renormalised.
            ModelFamily.Mixtral => WithExperts(config, root, path, config.IntermediateSize, "num_local_experts") with { NormalizeTopK = true },
            ModelFamily.Olmoe => root["clip_qkv"] is JsonValue
                ? throw new CoralModelException(path, "clip_qkv", "clipping q/k/v is not supported.")
                : WithExperts(config with { QkNorm = true, QkNormWholeProjection = true }, root, path, config.IntermediateSize),
            _ => config,
        };
    }

    /// <summary>Command-R's parts: LayerNorms (<c>layer_norm_eps</c>), the parallel block, interleaved RoPE, logits times
    /// <c>logit_scale</c>; Command-R7B's sliding layers (<c>layer_types</c>, else three of every
    /// <c>sliding_window_pattern</c> = 4) rotate, its global ones do not.</summary>
    private static ModelConfig WithCohere(ModelConfig c, JsonObject root, string path, int? window)
    {
        if (OptionalBool(root, path, "use_qk_norm") ?? false)
        {
            throw new CoralModelException(path, "use_qk_norm", "Command-R's per-head q/k LayerNorms are not supported.");
        }

        if (c.RotaryDim != c.HeadDim)
        {
            throw new CoralModelException(path, "partial_rotary_factor", "interleaved RoPE over part of a head is not supported.");
        }

        c = c with
        {
            LayerNorms = true,
            ParallelBlock = true,
            InterleavedRope = true,
            RmsNormEps = OptionalDouble(root, path, "layer_norm_eps") ?? 1e-5,
            LogitDivisor = (float)(1.0 / (OptionalDouble(root, path, "logit_scale") ?? 1.0)),
            TieWordEmbeddings = OptionalBool(root, path, "tie_word_embeddings") ?? true,
        };
        if (c.Family != ModelFamily.Cohere2)
        {
            return c;
        }

        int pattern = OptionalInt(root, path, "sliding_window_pattern") ?? 4;
        bool[] sliding = LayerTypes(root, path, c.NumLayers) ?? Enumerable.Range(0, c.NumLayers).Select(i => (i + 1) % pattern != 0).ToArray();
        return c with
        {
            SlidingWindow = window ?? 4096,
            SlidingLayers = sliding,
            NoRopeLayers = sliding.Select(s => !s).ToArray(),
        };
    }

    /// <summary>Granite's multipliers on the embedding, q·k, the residual branches and (dividing) the logits.</summary>
    private static ModelConfig WithGraniteMultipliers(ModelConfig c, JsonObject root, string path) => c with
    {
        EmbeddingScale = (float)(OptionalDouble(root, path, "embedding_multiplier") ?? 1.0),
        AttentionMultiplier = OptionalDouble(root, path, "attention_multiplier") ?? 1.0,
        ResidualScale = (float)(OptionalDouble(root, path, "residual_multiplier") ?? 1.0),
        LogitDivisor = (float)(OptionalDouble(root, path, "logits_scaling") ?? 1.0),
    };

    /// <summary>A mixture-of-experts config: <c>num_experts</c> of width <paramref name="expertWidth"/>, each token routed to
    /// <c>num_experts_per_tok</c>, renormalised by <c>norm_topk_prob</c> (transformers' default false); Qwen3-MoE's dense
    /// layers (<c>mlp_only_layers</c>, and those off <c>decoder_sparse_step</c>) keep <c>intermediate_size</c>.</summary>
    private static ModelConfig WithExperts(ModelConfig c, JsonObject root, string path, int expertWidth, string expertsField = "num_experts")
    {
        int experts = RequiredInt(root, path, expertsField), perToken = RequiredInt(root, path, "num_experts_per_tok");
        if (experts < 1 || perToken < 1 || perToken > experts)
        {
            throw new CoralModelException(path, "num_experts_per_tok", $"{perToken} must be between 1 and num_experts ({experts}).");
        }

        int step = OptionalInt(root, path, "decoder_sparse_step") ?? 1;
        var denseOnly = ReadIdList(root["mlp_only_layers"], path, "mlp_only_layers").ToHashSet();
        return c with
        {
            NumExperts = experts,
            ExpertsPerToken = perToken,
            ExpertIntermediateSize = expertWidth,
            NormalizeTopK = OptionalBool(root, path, "norm_topk_prob") ?? false,
            MoeLayers = Enumerable.Range(0, c.NumLayers).Select(i => !denseOnly.Contains(i) && step > 0 && (i + 1) % step == 0).ToArray(),
        };
    }

    /// <summary>SmolLM3's layers without RoPE: <c>no_rope_layers</c> (1 = RoPE, 0 = none, one per layer), else every
    /// <c>no_rope_layer_interval</c>-th layer (4), as transformers fills it.</summary>
    private static bool[] NoRope(JsonObject root, string path, int layers)
    {
        if (root["no_rope_layers"] is JsonArray flags)
        {
            if (flags.Count != layers)
            {
                throw new CoralModelException(path, "no_rope_layers", $"has {flags.Count} entries for {layers} layers.");
            }

            try
            {
                return flags.Select(f => f!.GetValue<int>() == 0).ToArray();
            }
            catch (Exception ex) when (ex is InvalidOperationException or FormatException or NullReferenceException)
            {
                throw new CoralModelException(path, "no_rope_layers", "must be a list of 0 and 1.", ex);
            }
        }

        int interval = OptionalInt(root, path, "no_rope_layer_interval") ?? 4;
        return Enumerable.Range(0, layers).Select(i => interval > 0 && (i + 1) % interval == 0).ToArray();
    }

    /// <summary>transformers' <c>Gemma3TextConfig</c> defaults: a multimodal checkpoint's <c>text_config</c> lists only
    /// the fields that differ from them (gemma-3-4b-it: hidden_size, intermediate_size, num_hidden_layers, rope_scaling,
    /// sliding_window).</summary>
    private const string Gemma3TextDefaults = """
        {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
         "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
         "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
         "sliding_window_pattern": 6, "rope_local_base_freq": 10000.0, "final_logit_softcapping": null,
         "attn_logit_softcapping": null, "tie_word_embeddings": true, "bos_token_id": 2, "eos_token_id": 1}
        """;

    /// <summary>A Gemma-3 text config over <see cref="Gemma3TextDefaults"/>: the file's own fields, or for a multimodal
    /// checkpoint (<c>Gemma3ForConditionalGeneration</c>) its <c>text_config</c> with the top level's token ids and dtype.</summary>
    private static JsonObject Gemma3Text(JsonObject root, string path)
    {
        var merged = JsonNode.Parse(Gemma3TextDefaults)!.AsObject();
        void Over(JsonObject from, Func<string, bool> take)
        {
            foreach (var (key, value) in from)
            {
                if (take(key))
                {
                    merged[key] = value?.DeepClone();
                }
            }
        }

        if (root["architectures"]![0]!.GetValue<string>() == "Gemma3ForConditionalGeneration")
        {
            JsonObject text = root["text_config"] as JsonObject
                ?? throw new CoralModelException(path, "text_config", "missing: a Gemma3ForConditionalGeneration config nests its language model's settings there.");
            Over(text, _ => true);
            Over(root, key => key is "bos_token_id" or "eos_token_id" or "torch_dtype" or "dtype");
        }
        else
        {
            Over(root, _ => true);
        }

        merged["architectures"] = new JsonArray("Gemma3ForCausalLM");
        return merged;
    }

    /// <summary>A vision-language checkpoint's language model (Mistral-Small-3.1/3.2, Pixtral, LLaVA): its
    /// <c>text_config</c> with the top level's token ids and dtype, as the causal LM its <c>model_type</c> names (mistral,
    /// llama, qwen2). The vision tower's tensors are not read.</summary>
    private static (JsonObject Root, string Architecture) TextModel(JsonObject root, string path, string wrapper)
    {
        JsonObject text = root["text_config"] as JsonObject
            ?? throw new CoralModelException(path, "text_config", $"missing: a {wrapper} config nests its language model's settings there.");
        string type = text["model_type"] is JsonValue tv && tv.TryGetValue(out string? named) ? named
            : wrapper == "Mistral3ForConditionalGeneration" ? "mistral" : "llama";
        string arch = type switch
        {
            "mistral" => "MistralForCausalLM",
            "llama" => "LlamaForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => throw new CoralModelException(path, "text_config.model_type", $"'{type}' is not supported as a {wrapper}'s language model; supported: mistral, llama, qwen2."),
        };
        var merged = (JsonObject)text.DeepClone();
        foreach (string key in new[] { "bos_token_id", "eos_token_id", "torch_dtype", "dtype" })
        {
            if (!merged.ContainsKey(key) && root[key] is JsonNode value)
            {
                merged[key] = value.DeepClone();
            }
        }

        merged["architectures"] = new JsonArray(arch);
        return (merged, arch);
    }

    /// <summary>Which layers slide, as <c>layer_types</c> lists them (<c>sliding_attention</c> / <c>full_attention</c>), or
    /// null when the config has no such list.</summary>
    private static bool[]? LayerTypes(JsonObject root, string path, int layers)
    {
        if (root["layer_types"] is not JsonArray types)
        {
            return null;
        }

        if (types.Count != layers)
        {
            throw new CoralModelException(path, "layer_types", $"has {types.Count} entries for {layers} layers.");
        }

        return types.Select(t => t?.GetValue<string>() switch
        {
            "sliding_attention" => true,
            "full_attention" => false,
            var other => throw new CoralModelException(path, "layer_types", $"'{other}' is not a layer type; expected sliding_attention or full_attention."),
        }).ToArray();
    }

    /// <summary>√d, the factor on Gemma's embeddings, as transformers computes it: in the embedding's dtype, so a bf16
    /// checkpoint's is √d rounded to bf16 (gemma-3-1b: 33.94 → 34).</summary>
    private static float GemmaEmbeddingScale(ModelConfig c, string path)
    {
        float scale = MathF.Sqrt(c.HiddenSize);
        return StoredDType(path) switch
        {
            ScalarType.BFloat16 => BitConverter.UInt32BitsToSingle((BitConverter.SingleToUInt32Bits(scale) + 0x7FFF
                + ((BitConverter.SingleToUInt32Bits(scale) >> 16) & 1)) & 0xFFFF0000),   // round to nearest even
            ScalarType.Float16 => (float)(Half)scale,
            _ => scale,
        };
    }

    /// <summary>Refuses a Gemma activation other than the tanh GELU, naming <paramref name="field"/> (absent or null: the
    /// tanh GELU, as transformers defaults it).</summary>
    private static void RequireTanhGelu(JsonObject root, string path, string field)
    {
        string activation = root[field] is JsonValue v && v.TryGetValue(out string? a) ? a : "gelu_pytorch_tanh";
        if (activation is not ("gelu_pytorch_tanh" or "gelu_new" or "gelu_fast"))
        {
            throw new CoralModelException(path, field, $"'{activation}' is not supported for Gemma; supported: gelu_pytorch_tanh.");
        }
    }

    /// <summary>Gemma (the first): a Llama's norm placement with Gemma's (1 + w) norms, √d embedding and GeGLU — transformers
    /// takes <c>hidden_activation</c> and, when it is null, the tanh GELU whatever <c>hidden_act</c> says.</summary>
    private static ModelConfig WithGemma1(ModelConfig c, JsonObject root, string path)
    {
        RequireTanhGelu(root, path, "hidden_activation");
        return c with
        {
            Activation = MlpActivation.GeluTanh,
            NormWeightsOffsetByOne = true,
            EmbeddingScale = GemmaEmbeddingScale(c, path),
            TieWordEmbeddings = OptionalBool(root, path, "tie_word_embeddings") ?? true,
        };
    }

    /// <summary>Gemma-2/3's parts, with transformers' defaults: GeGLU, (1 + w) norms around attention and MLP, the embedding
    /// scaled by √d, <c>query_pre_attn_scalar</c>, soft caps (Gemma-2: 50 and 30 unless configured), sliding layers
    /// (<c>layer_types</c>, else Gemma-2's even layers or Gemma-3's <c>sliding_window_pattern</c>, 6) and Gemma-3's local
    /// RoPE base (10,000).</summary>
    private static ModelConfig WithGemma(ModelConfig c, JsonObject root, string path, int? window)
    {
        bool two = c.Family == ModelFamily.Gemma2;
        RequireTanhGelu(root, path, root["hidden_activation"] is not null ? "hidden_activation" : "hidden_act");

        bool[] sliding;
        if (LayerTypes(root, path, c.NumLayers) is bool[] types)
        {
            sliding = types;
        }
        else
        {
            int pattern = two ? 2 : OptionalInt(root, path, "sliding_window_pattern") ?? 6;
            if (pattern < 1)
            {
                throw new CoralModelException(path, "sliding_window_pattern", $"{pattern} must be at least 1.");
            }

            sliding = Enumerable.Range(0, c.NumLayers).Select(i => (i + 1) % pattern != 0).ToArray();
        }

        // A cap absent from the file takes the default; written as null (or 0), none.
        double? Cap(string field, double? fallback) => !root.ContainsKey(field) ? fallback
            : OptionalDouble(root, path, field) is double v && v > 0 ? v : null;
        float scale = GemmaEmbeddingScale(c, path);
        int? w = window ?? 4096;
        return c with
        {
            Activation = MlpActivation.GeluTanh,
            NormWeightsOffsetByOne = true,
            NormPlacement = NormPlacement.Sandwich,
            EmbeddingScale = scale,
            QueryPreAttentionScalar = OptionalDouble(root, path, "query_pre_attn_scalar") ?? 256,
            AttentionSoftcap = Cap("attn_logit_softcapping", two ? 50.0 : null),
            FinalLogitSoftcap = Cap("final_logit_softcapping", two ? 30.0 : null),
            QkNorm = !two,
            SlidingWindow = sliding.Any(s => s) ? w : null,
            SlidingLayers = sliding,
            LocalRopeTheta = two ? null : OptionalDouble(root, path, "rope_local_base_freq") ?? 10000.0,
            TieWordEmbeddings = OptionalBool(root, path, "tie_word_embeddings") ?? true,
        };
    }

    internal static JsonObject ReadJsonObject(string path)
    {
        if (!File.Exists(path))
        {
            throw new CoralModelException(path, null, "file not found.");
        }

        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new CoralModelException(path, null, "expected a JSON object.");
        }
        catch (System.Text.Json.JsonException ex)
        {
            throw new CoralModelException(path, null, $"invalid JSON: {ex.Message}", ex);
        }
    }

    internal static IReadOnlyList<int> ReadIdList(JsonNode? node, string path, string field)
    {
        try
        {
            return node switch
            {
                null => [],
                JsonArray a => a.Select(n => n!.GetValue<int>()).ToArray(),
                _ => [node.GetValue<int>()],
            };
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException)
        {
            throw new CoralModelException(path, field, "expected an integer or a list of integers.", ex);
        }
    }

    /// <summary>The RoPE base: <c>rope_theta</c>, or (as transformers 5 writes it, with the scaling) <c>rope_parameters.rope_theta</c>.</summary>
    internal static double? OptionalRopeTheta(JsonObject root, string path) =>
        OptionalDouble(root, path, "rope_theta") ?? (root["rope_parameters"] is JsonObject p ? OptionalDouble(p, path, "rope_theta") : null);

    private static RopeScaling? ParseRopeScaling(JsonObject root, string path)
    {
        string field = root["rope_scaling"] is JsonObject ? "rope_scaling" : "rope_parameters";
        if (root[field] is not JsonObject rs)
        {
            return null;
        }

        string? type = rs["rope_type"]?.GetValue<string>() ?? rs["type"]?.GetValue<string>();
        double? factor = OptionalDouble(rs, path, "factor");
        int? original = OptionalInt(rs, path, "original_max_position_embeddings");
        double Factor() => factor ?? throw new CoralModelException(path, $"{field}.factor", "missing.");
        switch (type)
        {
            case null or "default":
                return null;
            case "dynamic":
                // Dynamic NTK grows the base only for sequences longer than max_position_embeddings
                // (base · (s·L/max − (s − 1))^(d/(d−2)), which is 1 up to L = max), and the rotary tables never reach past
                // max_position_embeddings: within them it is plain RoPE, exactly as transformers computes it.
                _ = Factor();
                return null;
            case "linear":
                return new RopeScaling(RopeScalingKind.Linear, Factor());
            case "llama3":
                return new RopeScaling(RopeScalingKind.Llama3, Factor())
                {
                    LowFreqFactor = OptionalDouble(rs, path, "low_freq_factor") ?? 1.0,
                    HighFreqFactor = OptionalDouble(rs, path, "high_freq_factor") ?? 4.0,
                    OriginalMaxPositions = original ?? 8192,
                };
            case "yarn":
                // The factor as configured (Qwen2.5/Qwen3 give it beside the pretraining context; transformers took the
                // ratio of the two contexts for a while, which ignored it — its issue #38224, since fixed); the ratio only
                // where no factor is given.
                int maxPositions = OptionalInt(root, path, "max_position_embeddings") ?? 2048;
                double f = factor ?? (original is int o ? (double)maxPositions / o
                    : throw new CoralModelException(path, $"{field}.factor", "missing (and no original_max_position_embeddings to derive it)."));
                double? mscale = OptionalDouble(rs, path, "mscale"), mscaleAllDim = OptionalDouble(rs, path, "mscale_all_dim");
                static double Mscale(double scale, double m = 1) => scale <= 1 ? 1.0 : (0.1 * m * Math.Log(scale)) + 1.0;
                return new RopeScaling(RopeScalingKind.Yarn, f)
                {
                    OriginalMaxPositions = original ?? maxPositions,
                    AttentionFactor = OptionalDouble(rs, path, "attention_factor")
                        ?? (mscale is double m && m != 0 && mscaleAllDim is double all && all != 0 ? Mscale(f, m) / Mscale(f, all) : Mscale(f)),
                    BetaFast = OptionalDouble(rs, path, "beta_fast") is double fast && fast != 0 ? fast : 32,
                    BetaSlow = OptionalDouble(rs, path, "beta_slow") is double slow && slow != 0 ? slow : 1,
                    Truncate = OptionalBool(rs, path, "truncate") ?? true,
                };
            case "longrope":
                return LongRope(root, path, field, rs, factor, original);
            default:
                throw new CoralModelException(path, $"{field}.rope_type", $"'{type}' is not supported; supported: linear, dynamic, llama3, yarn, longrope, default.");
        }
    }

    /// <summary>LongRoPE as transformers reads it: the pretraining context from the scaling object or (Phi-3's layout) the
    /// config's root; the factor as configured, else the ratio of the contexts; the attention factor
    /// √(1 + ln s / ln original) unless configured; hd/2 short and long factors.</summary>
    private static RopeScaling LongRope(JsonObject root, string path, string field, JsonObject rs, double? factor, int? original)
    {
        int maxPositions = OptionalInt(root, path, "max_position_embeddings") ?? 2048;
        int o = original ?? OptionalInt(root, path, "original_max_position_embeddings")
            ?? throw new CoralModelException(path, $"{field}.original_max_position_embeddings", "missing (LongRoPE needs the pretraining context).");
        double f = factor ?? (double)maxPositions / o;
        double[] Factors(string name)
        {
            if (rs[name] is not JsonArray a)
            {
                throw new CoralModelException(path, $"{field}.{name}", "missing (LongRoPE needs a factor per frequency).");
            }

            try
            {
                return a.Select(n => n!.GetValue<double>()).ToArray();
            }
            catch (Exception ex) when (ex is InvalidOperationException or FormatException or NullReferenceException)
            {
                throw new CoralModelException(path, $"{field}.{name}", "must be an array of numbers.", ex);
            }
        }

        return new RopeScaling(RopeScalingKind.LongRope, f)
        {
            OriginalMaxPositions = o,
            AttentionFactor = OptionalDouble(rs, path, "attention_factor") ?? (f <= 1 ? 1.0 : Math.Sqrt(1 + (Math.Log(f) / Math.Log(o)))),
            ShortFactors = Factors("short_factor"),
            LongFactors = Factors("long_factor"),
        };
    }

    /// <summary>The checkpoint's dtype as config.json states it (<c>torch_dtype</c>, or transformers 5's <c>dtype</c>):
    /// float32, bfloat16 or float16; null when absent, unknown or the file cannot be read (the loader reports those).</summary>
    public static ScalarType? StoredDType(string path)
    {
        try
        {
            JsonObject root = ReadJsonObject(path);
            return (root["torch_dtype"] ?? root["dtype"]) is JsonValue v && v.TryGetValue(out string? name)
                ? name switch
                {
                    "float32" => ScalarType.Float32,
                    "bfloat16" => ScalarType.BFloat16,
                    "float16" => ScalarType.Float16,
                    _ => null,
                }
                : null;
        }
        catch (CoralModelException)
        {
            return null;
        }
    }

    /// <summary>A required size: an integer of at least 1.</summary>
    private static int RequiredInt(JsonObject o, string path, string field) =>
        Positive(OptionalInt(o, path, field) ?? throw new CoralModelException(path, field, "missing."), path, field);

    private static int Positive(int value, string path, string field) =>
        value >= 1 ? value : throw new CoralModelException(path, field, $"{value} must be at least 1.");

    /// <summary>An optional integer field; a value of another type is a <see cref="CoralModelException"/> naming it.</summary>
    internal static int? OptionalInt(JsonObject o, string path, string field) => Get(o, path, field, n => n.GetValue<int>());

    /// <summary>An optional number field; a value of another type is a <see cref="CoralModelException"/> naming it.</summary>
    internal static double? OptionalDouble(JsonObject o, string path, string field) => Get(o, path, field, n => n.GetValue<double>());

    private static bool? OptionalBool(JsonObject o, string path, string field) => Get(o, path, field, n => n.GetValue<bool>());

    private static T? Get<T>(JsonObject o, string path, string field, Func<JsonNode, T> read)
        where T : struct
    {
        JsonNode? node = o[field];
        if (node is null)
        {
            return null;
        }

        try
        {
            return read(node);
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException)
        {
            throw new CoralModelException(path, field, $"has the wrong type ({node.ToJsonString()}).", ex);
        }
    }
}

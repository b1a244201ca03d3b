using Coral.AI.Training;
using System.Collections.Concurrent;
using Coral.AI.TestModels;

[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]

namespace Coral.AI.Tests;

/// <summary>Random checkpoints generated once per test run in a temporary folder, by name.</summary>
internal static class ModelZoo
{
    private static readonly string Root = Path.Combine(Path.GetTempPath(), "coral-tests-" + Environment.ProcessId);
    private static readonly ConcurrentDictionary<string, Lazy<string>> Models = new();

    static ModelZoo()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(Root, recursive: true);
            }
            catch (IOException)
            {
            }
        };
    }

    public static TinyModelSpec Llama => new() { Architecture = "LlamaForCausalLM", TokenizerStyle = ByteLevelStyle.Llama3 };

    public static TinyModelSpec LlamaTiedScaled => Llama with { Tied = true, Llama3RopeScaling = true, RopeTheta = 500000, Seed = 7 };

    public static TinyModelSpec Qwen2 => new()
    {
        Architecture = "Qwen2ForCausalLM", TokenizerStyle = ByteLevelStyle.Qwen2, Seed = 11,
        ChatTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    };

    public static TinyModelSpec Qwen3 => new() { Architecture = "Qwen3ForCausalLM", TokenizerStyle = ByteLevelStyle.Qwen2, HeadDim = 32, Tied = true, Seed = 13 };

    public static TinyModelSpec Mistral => new() { Architecture = "MistralForCausalLM", TokenizerStyle = ByteLevelStyle.Gpt2, KvHeads = 1, SlidingWindow = 8, Seed = 17 };

    /// <summary>The demo model's layer shape (d = 256, ff = 768, 4 heads, 2 KV heads) with two layers and a small vocabulary:
    /// wide enough that MKL's f32 GEMV (one row) and GEMM (several rows) round differently.</summary>
    public static TinyModelSpec LlamaDemoWidth => Llama with { HiddenSize = 256, IntermediateSize = 768, Tied = true, Seed = 29 };

    /// <summary>A Llama whose greedy continuation counts up through the vocabulary (every next token differs).</summary>
    public static TinyModelSpec LlamaSuccessor => Llama with { SuccessorHead = true, Seed = 31 };

    public static TinyModelSpec LlamaShardedBf16 => Llama with { Shards = 3, StorageDType = "BF16", Seed = 19 };

    /// <summary>Architectures stored as bf16, as Hugging Face checkpoints are: loaded as f32 on CPU, their layers and head
    /// run on the packed kernels (PackedMatrix).</summary>
    public static TinyModelSpec Qwen2Bf16 => Qwen2 with { StorageDType = "BF16", Seed = 37 };

    public static TinyModelSpec Qwen3Bf16 => Qwen3 with { StorageDType = "BF16", Seed = 41 };

    public static TinyModelSpec MistralBf16 => Mistral with { StorageDType = "BF16", Seed = 43 };

    public static TinyModelSpec LlamaTiedScaledBf16 => LlamaTiedScaled with { StorageDType = "BF16", Seed = 53 };

    public static TinyModelSpec LlamaSuccessorBf16 => LlamaSuccessor with { StorageDType = "BF16", Seed = 47 };

    /// <summary>Architectures stored as f16 (Llama-2, Vicuna and many EAGLE drafters ship so): loaded as f32 on CPU, their
    /// layers and head run on the packed kernels in f16 (PackedMatrix), exactly.</summary>
    public static TinyModelSpec Qwen2F16 => Qwen2 with { StorageDType = "F16", Seed = 61 };

    public static TinyModelSpec MistralF16 => Mistral with { StorageDType = "F16", Seed = 67 };

    public static TinyModelSpec LlamaSuccessorF16 => LlamaSuccessor with { StorageDType = "F16", Seed = 71 };

    public static TinyModelSpec LlamaTiedScaledF16 => LlamaTiedScaled with { StorageDType = "F16", Seed = 73 };

    /// <summary>Position interpolation (linear RoPE scaling, as Vicuna-16k ships it).</summary>
    public static TinyModelSpec LlamaLinearRope => Llama with { RopeScalingJson = """{"type": "linear", "factor": 4.0}""", Seed = 79 };

    /// <summary>YaRN as Qwen2.5/Qwen3 configure it (factor beside the pretraining context), with a pretraining context
    /// short enough that the ramp between interpolated and extrapolated dimensions falls inside the tiny head (dimensions
    /// 0–4 of 8).</summary>
    public static TinyModelSpec Qwen2Yarn => Qwen2 with
    {
        RopeScalingJson = """{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}""", Seed = 83,
    };

    /// <summary>Phi-3 (fused qkv_proj and gate_up_proj), with Phi-3-mini's sliding window beyond any test's length.</summary>
    public static TinyModelSpec Phi3 => Llama with
    {
        // llama.cpp looks up <|end|>, and for a model named Phi-3 also <unk>, <s>, </s> and <|endoftext|>.
        Architecture = "Phi3ForCausalLM", SlidingWindow = 2047, Seed = 89,
        ExtraSpecialTokens = ["<|end|>", "<|user|>", "<|assistant|>", "<unk>", "<s>", "</s>", "<|endoftext|>"],
    };

    public static TinyModelSpec Phi3Bf16 => Phi3 with { StorageDType = "BF16", Seed = 97 };

    /// <summary>Phi-3 with a window of 8: masking as Mistral's, over the fused weights.</summary>
    public static TinyModelSpec Phi3Window => Phi3 with { SlidingWindow = 8, Seed = 101 };

    /// <summary>Phi-3 with LongRoPE (as Phi-3.5-mini ships it, with a pretraining context of 16 so that a test's sequence
    /// crosses from the short factors to the long ones).</summary>
    public static TinyModelSpec Phi3LongRope => Phi3 with
    {
        RopeScalingJson = """
            {"type": "longrope", "original_max_position_embeddings": 16,
             "short_factor": [1.0, 1.02, 1.1, 1.3, 1.7, 2.4, 3.1, 3.9], "long_factor": [1.0, 1.2, 1.9, 3.5, 6.0, 9.5, 14.0, 21.0]}
            """,
        Seed = 103,
    };

    /// <summary>Rotary embeddings over half of each head (partial_rotary_factor 0.5: 8 of 16 dimensions), with biases.</summary>
    public static TinyModelSpec Qwen2Partial => Qwen2 with { PartialRotaryFactor = 0.5, Seed = 107 };

    /// <summary>Phi-4-mini's partial rotation (0.75: 12 of 16 dimensions) over fused bf16 weights.</summary>
    public static TinyModelSpec Phi3Partial => Phi3 with { PartialRotaryFactor = 0.75, StorageDType = "BF16", Seed = 109 };

    /// <summary>Phi-4-mini's layout in full: LongRoPE over the partial rotation (6 factors each for 12 rotary dimensions),
    /// a pretraining context of 16.</summary>
    public static TinyModelSpec Phi4MiniLongRope => Phi3Partial with
    {
        RopeScalingJson = """
            {"type": "longrope", "original_max_position_embeddings": 16,
             "short_factor": [1.0, 1.05, 1.2, 1.6, 2.2, 3.0], "long_factor": [1.0, 1.4, 2.5, 4.5, 8.0, 13.0]}
            """,
        Seed = 269,
    };

    /// <summary>A Granite layout: a Llama with multipliers on the embedding (3), q·k (0.1), the residual branches (0.6) and
    /// the logits (÷2.5).</summary>
    public static TinyModelSpec Granite => Llama with
    {
        Architecture = "GraniteForCausalLM", Tied = true, ExtraSpecialTokens = ["<|start_of_role|>", "<|tool_call|>"], Seed = 149,
        // Granite 3.x's turn layout; its assistant turns carry tool calls as <|tool_call|>[...].
        ChatTemplate = "{% for m in messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{% if m['tool_calls'] is defined %}<|tool_call|>{{ m['tool_calls'] | tojson }}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}",
    };

    public static TinyModelSpec GraniteBf16 => Granite with { StorageDType = "BF16", Seed = 151 };

    /// <summary>A SmolLM3 layout: eight layers, the fourth and eighth without RoPE.</summary>
    public static TinyModelSpec SmolLM3 => Llama with { Architecture = "SmolLM3ForCausalLM", Layers = 8, Tied = true, RopeTheta = 5000000, Seed = 157 };

    /// <summary>An OLMo-2 layout: norms after attention and MLP only, q/k norms over the whole projections.</summary>
    public static TinyModelSpec Olmo2 => Llama with { Architecture = "Olmo2ForCausalLM", Layers = 3, RopeTheta = 500000, Seed = 167 };

    public static TinyModelSpec Olmo2Bf16 => Olmo2 with { StorageDType = "BF16", Seed = 173 };

    /// <summary>A Qwen3-MoE layout: four experts, two per token (renormalised), per-head q/k norms.</summary>
    public static TinyModelSpec Qwen3Moe => Qwen3 with { Architecture = "Qwen3MoeForCausalLM", Experts = 4, Tied = false, Seed = 179 };

    /// <summary>Qwen3-MoE at the demo model's width (d = 256, 16 experts of 768 — a tree leaves some with one routed row): wide enough that MKL's f32 GEMV and GEMM round
    /// differently, so an expert's single routed row must be padded to two.</summary>
    public static TinyModelSpec Qwen3MoeWide => Qwen3Moe with { HiddenSize = 256, IntermediateSize = 768, ExpertIntermediateSize = 768, HeadDim = 64, Experts = 16, Seed = 197 };

    /// <summary>A Qwen2-MoE layout: q/k/v biases, four experts (two per token, not renormalised) and a shared expert
    /// behind a sigmoid gate.</summary>
    public static TinyModelSpec Qwen2Moe => Qwen2 with { Architecture = "Qwen2MoeForCausalLM", Experts = 4, ChatTemplate = null, Seed = 229 };

    public static TinyModelSpec Qwen2MoeBf16 => Qwen2Moe with { StorageDType = "BF16", Seed = 233 };

    public static TinyModelSpec Qwen3MoeBf16 => Qwen3Moe with { StorageDType = "BF16", Seed = 181 };

    /// <summary>An OLMoE layout: four experts, two per token (not renormalised), whole-projection q/k norms.</summary>
    public static TinyModelSpec Olmoe => Llama with { Architecture = "OlmoeForCausalLM", Experts = 4, KvHeads = 4, Seed = 191 };   // as OLMoE: no GQA

    /// <summary>A Mixtral layout: four experts (block_sparse_moe, w1/w3/w2), two per token, renormalised.</summary>
    public static TinyModelSpec Mixtral => Llama with { Architecture = "MixtralForCausalLM", Experts = 4, Seed = 199 };

    /// <summary>A Granite-MoE layout: Granite's multipliers, four experts stacked (input_linear, output_linear), two per token.</summary>
    public static TinyModelSpec GraniteMoe => Granite with { Architecture = "GraniteMoeForCausalLM", Experts = 4, Seed = 223 };

    public static TinyModelSpec GraniteMoeBf16 => GraniteMoe with { StorageDType = "BF16", Seed = 227 };

    /// <summary>A Command-R7B layout: LayerNorms, attention and MLP in parallel, interleaved RoPE, logits ×0.5, four
    /// layers — three sliding (window 8, with RoPE) and a global one without.</summary>
    public static TinyModelSpec Cohere2 => Llama with { Architecture = "Cohere2ForCausalLM", Layers = 4, Tied = true, SlidingWindow = 8, Seed = 239 };

    public static TinyModelSpec Cohere2Bf16 => Cohere2 with { StorageDType = "BF16", Seed = 241 };

    /// <summary>A Command-R layout (no sliding layers).</summary>
    public static TinyModelSpec Cohere => Llama with { Architecture = "CohereForCausalLM", Tied = true, Seed = 251 };

    public static TinyModelSpec MixtralBf16 => Mixtral with { StorageDType = "BF16", Seed = 211 };

    public static TinyModelSpec OlmoeBf16 => Olmoe with { StorageDType = "BF16", Seed = 193 };

    public static TinyModelSpec SmolLM3Bf16 => SmolLM3 with { StorageDType = "BF16", Seed = 163 };

    /// <summary>A Gemma (the first) layout: a Llama's norm placement with (1 + w) norms, √d embedding, GeGLU.</summary>
    public static TinyModelSpec Gemma1 => new() { Architecture = "GemmaForCausalLM", TokenizerStyle = ByteLevelStyle.Gpt2, Tied = true, HeadDim = 32, Seed = 257 };

    public static TinyModelSpec Gemma1Bf16 => Gemma1 with { StorageDType = "BF16", Seed = 263 };

    /// <summary>A Gemma-2 layout: layer 0 slides (window 8), layer 1 is global; caps small enough that random weights reach
    /// them (real Gemma-2: 50 and 30).</summary>
    public static TinyModelSpec Gemma2 => new()
    {
        Architecture = "Gemma2ForCausalLM", TokenizerStyle = ByteLevelStyle.Gpt2, Tied = true, SlidingWindow = 8,
        AttentionSoftcap = 2.0, FinalLogitSoftcap = 4.0, Seed = 113,
    };

    /// <summary>A Gemma-3 layout: seven layers, the sixth global and the rest sliding (window 8) on their own RoPE base, q/k
    /// norms, no caps.</summary>
    public static TinyModelSpec Gemma3 => new()
    {
        Architecture = "Gemma3ForCausalLM", TokenizerStyle = ByteLevelStyle.Gpt2, Tied = true, Layers = 7, KvHeads = 1, HeadDim = 32,
        SlidingWindow = 8, RopeTheta = 1000000, Seed = 127,
    };

    /// <summary>Gemma-3 with a SentencePiece tokenizer in Gemma's layout (no dummy prefix) and its chat template.</summary>
    public static TinyModelSpec Gemma3SentencePiece => Gemma3 with
    {
        SentencePiece = true, GemmaTokenizer = true, StorageDType = "BF16", Seed = 139,
        ChatTemplate = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + (message['role'] == 'assistant' and 'model' or message['role']) + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
    };

    public static TinyModelSpec Gemma3Bf16 => Gemma3 with { StorageDType = "BF16", Seed = 131 };

    public static TinyModelSpec Gemma2Bf16 => Gemma2 with { StorageDType = "BF16", Seed = 137 };

    public static TinyModelSpec SentencePieceLlama => new() { Architecture = "LlamaForCausalLM", SentencePiece = true, Seed = 23 };

    /// <summary>Phi-3's tokenizer layout (SentencePiece with chat tokens that take the whitespace after them).</summary>
    public static TinyModelSpec Phi3SentencePiece => SentencePieceLlama with
    {
        ExtraSpecialTokens = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"], ExtraSpecialTokensRStrip = true, Seed = 271,
    };

    public static string Get(string name, TinyModelSpec spec) =>
        Models.GetOrAdd(name, n => new Lazy<string>(() => TinyCheckpoint.Create(Path.Combine(Root, n), spec))).Value;

    public static string TempFolder(string name)
    {
        string path = Path.Combine(Root, "scratch", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>Copies a model folder so a test can corrupt it.</summary>
    public static string Copy(string source, string name)
    {
        string dest = TempFolder(name);
        foreach (string f in Directory.GetFiles(source))
        {
            File.Copy(f, Path.Combine(dest, Path.GetFileName(f)));
        }

        return dest;
    }
}

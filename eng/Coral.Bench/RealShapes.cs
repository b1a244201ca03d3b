using Coral.AI.Training;
using Coral.AI.TestModels;

/// <summary>
/// <c>--write-random &lt;dir&gt; --preset &lt;name&gt; [--layers N] [--dtype bf16|f16]</c>: a random Hugging Face checkpoint
/// (bf16 or f16, two shards)
/// with the dimensions of a released model, for measuring the engine's costs at real shapes (<c>--profile</c>) where no
/// trained weights of that size can be downloaded. The byte-level tokenizer has the GPT-2 ranks; the embedding is padded
/// to the model's vocabulary size, as the head's cost is what matters.
/// </summary>
internal static class RealShapes
{
    private static readonly Dictionary<string, TinyModelSpec> Presets = new()
    {
        // meta-llama/Llama-3.2-1B-Instruct: 1.24 B parameters, tied embeddings.
        ["llama-3.2-1b"] = new TinyModelSpec
        {
            HiddenSize = 2048, Layers = 16, Heads = 32, KvHeads = 8, HeadDim = 64, IntermediateSize = 8192, Tied = true,
            RopeTheta = 500000, Llama3RopeScaling = true, MaxPositions = 4096,
        },

        // meta-llama/Meta-Llama-3-8B-Instruct: 8.0 B parameters (pass --layers to fit memory).
        ["llama-3-8b"] = new TinyModelSpec
        {
            HiddenSize = 4096, Layers = 32, Heads = 32, KvHeads = 8, HeadDim = 128, IntermediateSize = 14336, RopeTheta = 500000,
            MaxPositions = 4096,
        },

        // google/gemma-3-1b-it: 1.0 B parameters, tied; 262,144 tokens, head_dim 256, one KV head, five sliding layers
        // (window 512) per global one.
        ["gemma-3-1b"] = new TinyModelSpec
        {
            Architecture = "Gemma3ForCausalLM", HiddenSize = 1152, Layers = 26, Heads = 4, KvHeads = 1, HeadDim = 256,
            IntermediateSize = 6912, Tied = true, RopeTheta = 1000000, SlidingWindow = 512, MaxPositions = 4096,
        },

        // Qwen/Qwen3-30B-A3B: 48 layers (61 GB in bf16: pass --layers), 128 experts of 768, 8 per token.
        ["qwen3-30b-a3b"] = new TinyModelSpec
        {
            Architecture = "Qwen3MoeForCausalLM", TokenizerStyle = ByteLevelStyle.Qwen2, HiddenSize = 2048, Layers = 48, Heads = 32, KvHeads = 4,
            HeadDim = 128, IntermediateSize = 6144, Experts = 128, ExpertsPerToken = 8, ExpertIntermediateSize = 768, RopeTheta = 1000000,
            MaxPositions = 4096,
        },
    };

    private static int VocabSizeOf(TinyModelSpec spec) => spec.IsGemma ? 262144 : spec.Experts > 0 ? 151936 : 128256;
    private const int GptRanks = 50000;

    public static void Write(string folder, string preset, int? layers, string dtype = "bf16")
    {
        if (!Presets.TryGetValue(preset, out TinyModelSpec? spec))
        {
            throw new ArgumentException($"--preset '{preset}' is not one of: {string.Join(", ", Presets.Keys)}.");
        }

        string storage = dtype switch
        {
            "bf16" => "BF16",
            "f16" => "F16",
            _ => throw new ArgumentException($"--dtype '{dtype}' is not one of: bf16, f16."),
        };

        // Five Llama-3 special tokens follow the ranks; the rest of the vocabulary is embedding padding.
        spec = spec with
        {
            Layers = layers ?? spec.Layers, TokenizerRanks = GptRanks, VocabPadding = VocabSizeOf(spec) - GptRanks - (spec.TokenizerStyle == ByteLevelStyle.Llama3 ? 5 : 3),
            StorageDType = storage, Shards = 2, Seed = 11,
        };
        Console.Error.WriteLine($"writing random {preset} ({spec.Layers} layers, d={spec.HiddenSize}, vocab {VocabSizeOf(spec)}, {dtype}) to {folder}");
        TinyCheckpoint.Create(folder, spec);
    }
}

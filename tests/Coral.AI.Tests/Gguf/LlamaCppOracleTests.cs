using LLama;
using LLama.Common;
using LLama.Native;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// The forward checked against llama.cpp (LLamaSharp) on the same weights, exported by <see cref="GgufExporter"/>:
/// logits to 1e-4 and greedy tokens identical.
/// </summary>
public class LlamaCppOracleTests
{
    // The bf16- and f16-stored models load as f32 on the packed kernels (PackedMatrix, f16 blocks for the latter): the same
    // oracle holds for that path.
    public static TheoryData<string> Models => ["llama", "llama-tied-scaled", "qwen2", "qwen3", "llama-sharded-bf16", "qwen2-bf16", "qwen3-bf16",
        "qwen2-f16", "llama-tied-scaled-f16", "llama-linear-rope", "qwen2-yarn", "gemma2", "gemma3", "gemma2-bf16", "gemma3-bf16", "granite", "granite-bf16", "smollm3", "smollm3-bf16", "olmo2", "olmo2-bf16", "qwen3moe", "qwen3moe-bf16", "olmoe", "olmoe-bf16", "mixtral", "mixtral-bf16", "granitemoe", "granitemoe-bf16", "qwen2moe", "qwen2moe-bf16", "cohere", "cohere2", "cohere2-bf16", "gemma", "gemma-bf16", "phi3", "phi3-bf16", "phi3-partial"];
    // (The Phi-3 test models carry <unk>, <s>, </s> and <|endoftext|>: llama.cpp looks them up for a model named Phi-3.
    // A Phi-3 with a sliding window of 8 is not here: llama.cpp turns Phi-3's window off ("Phi SWA is currently disabled",
    // llama-model.cpp) and attends to every earlier token (max |Δlogit| 10 against transformers' window, which Coral
    // follows); TransformerModelTests checks the window.)

    [Theory]
    [MemberData(nameof(Models))]
    public void Logits_MatchLlamaCpp(string name)
    {
        string folder = TransformerModelTests.ModelFor(name);
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-" + name), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        using var model = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 256);
        var tokenizer = HfTokenizer.Load(folder);
        long[] ids = tokenizer.Encode("The quick brown fox jumps over the lazy dog, 12345 times!").Select(x => (long)x).ToArray();
        float[] ours = TorchTestHelpers.FullLogits(model, ids);
        int v = model.Config.VocabSize;

        using var oracle = new LlamaCppOracle(gguf);
        float[][] theirs = oracle.Logits(ids);
        Assert.Equal(v, theirs[0].Length);
        float worst = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            worst = MathF.Max(worst, TorchTestHelpers.MaxAbsDiff(ours[(i * v)..((i + 1) * v)], theirs[i]));
        }

        // llama.cpp's CPU GELU is approximate (an f16 table): Gemma's logits agree to 1e-2 (measured 2–4·10⁻³), greedy
        // tokens exactly; GemmaTests checks the forward to 1e-4 against a float64 reference.
        float tolerance = name.StartsWith("gemma", StringComparison.Ordinal) ? 1e-2f : 1e-4f;
        Assert.True(worst < tolerance, $"{name}: max |Δlogit| = {worst}");
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void GreedyTokens_MatchLlamaCpp(string name)
    {
        string folder = TransformerModelTests.ModelFor(name);
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-greedy-" + name), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        using var engine = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 256);
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time");
        var result = engine.Generate(new GenerationRequest(prompt, SamplingParameters.Greedy, 40, []), null, CancellationToken.None);

        using var oracle = new LlamaCppOracle(gguf);
        Assert.Equal(prompt, oracle.Tokenize("Once upon a time"));
        List<int> theirs = oracle.Greedy(prompt, result.TokenIds.Count, engine.EosTokenIds);
        Assert.Equal(theirs, result.TokenIds);
    }

    [Fact]
    public void Bf16Gguf_LoadsAndAgreesOnGreedyTokens()
    {
        string folder = TransformerModelTests.ModelFor("llama-sharded-bf16");
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-bf16"), "model.gguf");
        GgufExporter.Export(folder, gguf, "bf16");
        using var engine = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 256);
        List<int> prompt = engine.Tokenizer.Encode("Hello there");
        var result = engine.Generate(new GenerationRequest(prompt, SamplingParameters.Greedy, 16, []), null, CancellationToken.None);
        using var oracle = new LlamaCppOracle(gguf);
        Assert.Equal(oracle.Greedy(prompt, result.TokenIds.Count, engine.EosTokenIds), result.TokenIds);
    }
}

/// <summary>llama.cpp through LLamaSharp with an exact configuration (no flash attention, f32 KV cache).</summary>
internal sealed class LlamaCppOracle : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;

    static LlamaCppOracle()
    {
        NativeLibraryConfig.All.WithLogCallback((_, m) => { if (Environment.GetEnvironmentVariable("CORAL_LLAMA_LOG") is not null) Console.Error.Write(m); });
    }

    /// <summary>Loads llama.cpp's library (for calls into it without a model, such as its quantizer).</summary>
    public static void EnsureLoaded() => NativeApi.llama_empty_call();

    public LlamaCppOracle(string gguf, int contextSize = 256, int threads = 2)
    {
        var p = new ModelParams(gguf)
        {
            ContextSize = (uint)contextSize,
            BatchSize = (uint)contextSize,
            UBatchSize = (uint)contextSize,
            GpuLayerCount = 0,
            Threads = threads,
            FlashAttention = false,
            TypeK = GGMLType.GGML_TYPE_F32,
            TypeV = GGMLType.GGML_TYPE_F32,
        };
        _weights = LLamaWeights.LoadFromFile(p);
        _context = _weights.CreateContext(p);
    }

    public LLamaContext Context => _context;

    public List<int> Tokenize(string text) => _context.Tokenize(text, addBos: true, special: true).Select(t => (int)t).ToList();

    public float[][] Logits(long[] ids)
    {
        _context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Length; i++)
        {
            batch.Add((int)ids[i], i, LLamaSeqId.Zero, true);
        }

        Assert.Equal(DecodeResult.Ok, _context.Decode(batch));
        return Enumerable.Range(0, ids.Length).Select(i => _context.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    public List<int> Greedy(IReadOnlyList<int> prompt, int maxTokens, IReadOnlyList<int> eos)
    {
        _context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Count; i++)
        {
            batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Count - 1);
        }

        Assert.Equal(DecodeResult.Ok, _context.Decode(batch));
        var output = new List<int>();
        int pos = prompt.Count;
        while (output.Count < maxTokens)
        {
            int next = LogitsSampler.ArgMax(_context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
            output.Add(next);
            if (eos.Contains(next))
            {
                break;
            }

            batch.Clear();
            batch.Add(next, pos++, LLamaSeqId.Zero, true);
            Assert.Equal(DecodeResult.Ok, _context.Decode(batch));
        }

        return output;
    }

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
    }
}

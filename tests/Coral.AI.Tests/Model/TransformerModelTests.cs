using Coral.AI.TestModels;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class TransformerModelTests
{
    public static TheoryData<string> Architectures => ["llama", "llama-tied-scaled", "qwen2", "qwen3", "mistral", "llama-sharded-bf16", "phi3", "phi3-window", "gemma2", "gemma3", "granite", "smollm3", "olmo2", "qwen3moe", "olmoe", "mixtral", "granitemoe", "qwen2moe", "cohere", "cohere2", "gemma"];

    internal static string ModelFor(string name) => name switch
    {
        "llama" => ModelZoo.Get(name, ModelZoo.Llama),
        "llama-tied-scaled" => ModelZoo.Get(name, ModelZoo.LlamaTiedScaled),
        "qwen2" => ModelZoo.Get(name, ModelZoo.Qwen2),
        "qwen3" => ModelZoo.Get(name, ModelZoo.Qwen3),
        "mistral" => ModelZoo.Get(name, ModelZoo.Mistral),
        "llama-sharded-bf16" => ModelZoo.Get(name, ModelZoo.LlamaShardedBf16),
        "llama-demo-width" => ModelZoo.Get(name, ModelZoo.LlamaDemoWidth),
        "llama-successor" => ModelZoo.Get(name, ModelZoo.LlamaSuccessor),
        "sentencepiece" => ModelZoo.Get(name, ModelZoo.SentencePieceLlama),
        "phi3-sentencepiece" => ModelZoo.Get(name, ModelZoo.Phi3SentencePiece),
        "qwen2-bf16" => ModelZoo.Get(name, ModelZoo.Qwen2Bf16),
        "qwen3-bf16" => ModelZoo.Get(name, ModelZoo.Qwen3Bf16),
        "mistral-bf16" => ModelZoo.Get(name, ModelZoo.MistralBf16),
        "llama-successor-bf16" => ModelZoo.Get(name, ModelZoo.LlamaSuccessorBf16),
        "llama-tied-scaled-bf16" => ModelZoo.Get(name, ModelZoo.LlamaTiedScaledBf16),
        "qwen2-f16" => ModelZoo.Get(name, ModelZoo.Qwen2F16),
        "llama-linear-rope" => ModelZoo.Get(name, ModelZoo.LlamaLinearRope),
        "qwen2-yarn" => ModelZoo.Get(name, ModelZoo.Qwen2Yarn),
        "phi3" => ModelZoo.Get(name, ModelZoo.Phi3),
        "phi3-bf16" => ModelZoo.Get(name, ModelZoo.Phi3Bf16),
        "phi3-window" => ModelZoo.Get(name, ModelZoo.Phi3Window),
        "phi3-longrope" => ModelZoo.Get(name, ModelZoo.Phi3LongRope),
        "qwen2-partial" => ModelZoo.Get(name, ModelZoo.Qwen2Partial),
        "phi3-partial" => ModelZoo.Get(name, ModelZoo.Phi3Partial),
        "phi4-mini-longrope" => ModelZoo.Get(name, ModelZoo.Phi4MiniLongRope),
        "mistral-f16" => ModelZoo.Get(name, ModelZoo.MistralF16),
        "llama-successor-f16" => ModelZoo.Get(name, ModelZoo.LlamaSuccessorF16),
        "llama-tied-scaled-f16" => ModelZoo.Get(name, ModelZoo.LlamaTiedScaledF16),
        "gemma" => ModelZoo.Get(name, ModelZoo.Gemma1),
        "gemma-bf16" => ModelZoo.Get(name, ModelZoo.Gemma1Bf16),
        "gemma2" => ModelZoo.Get(name, ModelZoo.Gemma2),
        "gemma3" => ModelZoo.Get(name, ModelZoo.Gemma3),
        "gemma2-bf16" => ModelZoo.Get(name, ModelZoo.Gemma2Bf16),
        "gemma3-bf16" => ModelZoo.Get(name, ModelZoo.Gemma3Bf16),
        "gemma3-sentencepiece" => ModelZoo.Get(name, ModelZoo.Gemma3SentencePiece),
        "granite" => ModelZoo.Get(name, ModelZoo.Granite),
        "granite-bf16" => ModelZoo.Get(name, ModelZoo.GraniteBf16),
        "smollm3" => ModelZoo.Get(name, ModelZoo.SmolLM3),
        "smollm3-bf16" => ModelZoo.Get(name, ModelZoo.SmolLM3Bf16),
        "olmo2" => ModelZoo.Get(name, ModelZoo.Olmo2),
        "olmo2-bf16" => ModelZoo.Get(name, ModelZoo.Olmo2Bf16),
        "qwen3moe" => ModelZoo.Get(name, ModelZoo.Qwen3Moe),
        "qwen3moe-bf16" => ModelZoo.Get(name, ModelZoo.Qwen3MoeBf16),
        "qwen3moe-wide" => ModelZoo.Get(name, ModelZoo.Qwen3MoeWide),
        "qwen2moe" => ModelZoo.Get(name, ModelZoo.Qwen2Moe),
        "cohere" => ModelZoo.Get(name, ModelZoo.Cohere),
        "cohere2" => ModelZoo.Get(name, ModelZoo.Cohere2),
        "cohere2-bf16" => ModelZoo.Get(name, ModelZoo.Cohere2Bf16),
        "qwen2moe-bf16" => ModelZoo.Get(name, ModelZoo.Qwen2MoeBf16),
        "olmoe" => ModelZoo.Get(name, ModelZoo.Olmoe),
        "mixtral" => ModelZoo.Get(name, ModelZoo.Mixtral),
        "mixtral-bf16" => ModelZoo.Get(name, ModelZoo.MixtralBf16),
        "granitemoe" => ModelZoo.Get(name, ModelZoo.GraniteMoe),
        "granitemoe-bf16" => ModelZoo.Get(name, ModelZoo.GraniteMoeBf16),
        "olmoe-bf16" => ModelZoo.Get(name, ModelZoo.OlmoeBf16),
        _ => throw new ArgumentException(name),
    };

    private static long[] Sequence(int n, int vocab, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (long)r.Next(vocab)).ToArray();
    }

    /// <summary>A Hugging Face cache snapshot (<c>snapshots/&lt;revision&gt;/</c>, every file a relative link into
    /// <c>blobs/</c>) loads as the folder itself does: a link's own size (FileInfo.Length) once made every shard look
    /// truncated ("corrupt header length").</summary>
    [Fact]
    public void HuggingFaceCacheSnapshot_OfSymbolicLinks_LoadsAndDecodesAsTheFolder()
    {
        string original = ModelFor("llama-sharded-bf16");
        string repo = ModelZoo.TempFolder("hf-cache/models--coral--tiny");
        string blobs = Path.Combine(repo, "blobs"), snapshot = Path.Combine(repo, "snapshots", "0123abcd");
        Directory.CreateDirectory(blobs);
        Directory.CreateDirectory(snapshot);
        int n = 0;
        foreach (string file in Directory.GetFiles(original))
        {
            string blob = $"blob{n++:D4}";
            File.Copy(file, Path.Combine(blobs, blob), overwrite: true);
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(file)), Path.Combine("..", "..", "blobs", blob));
        }

        Assert.Contains(Directory.GetFiles(snapshot), f => f.EndsWith(".safetensors", StringComparison.Ordinal) && new FileInfo(f).LinkTarget is not null);
        using var fromLinks = InferenceEngine.Load(snapshot, torch.CPU, ScalarType.Float32, 64);
        using var fromFolder = InferenceEngine.Load(original, torch.CPU, ScalarType.Float32, 64);
        var request = new GenerationRequest(fromFolder.Tokenizer.Encode("Hello world"), SamplingParameters.Greedy, 10, []);
        Assert.Equal(fromFolder.Generate(request, null, default).TokenIds, fromLinks.Generate(request, null, default).TokenIds);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void IncrementalDecoding_EqualsFullForward(string arch)
    {
        using var model = TransformerModel.Load(ModelFor(arch), torch.CPU, ScalarType.Float32, 256);
        long[] ids = Sequence(20, model.Config.VocabSize, 1);
        float[] full = TorchTestHelpers.FullLogits(model, ids);
        int v = model.Config.VocabSize;

        using var inference = torch.inference_mode();
        using KvCache cache = model.CreateCache(64);
        // Prefill 5 tokens, then a chunk of 4, then one at a time.
        int pos = 0;
        foreach (int n in new[] { 5, 4 }.Concat(Enumerable.Repeat(1, ids.Length - 9)))
        {
            using var scope = torch.NewDisposeScope();
            Tensor hidden = model.Forward(ids[pos..(pos + n)], cache);
            float[] logits = TorchTestHelpers.ToArray(model.Logits(hidden));
            float[] expected = full[(pos * v)..((pos + n) * v)];
            Assert.True(TorchTestHelpers.MaxAbsDiff(expected, logits) < 1e-4f, $"{arch}: positions {pos}..{pos + n}");
            pos += n;
        }

        Assert.Equal(ids.Length, cache.Length);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void TreeMaskedForward_EqualsSequentialPaths(string arch)
    {
        using var model = TransformerModel.Load(ModelFor(arch), torch.CPU, ScalarType.Float32, 256);
        int v = model.Config.VocabSize;
        long[] prefix = Sequence(6, v, 2);
        // A tree of 6 nodes: parents (-1 = the prefix's last token).
        int[] parent = [-1, 0, 0, 1, 2, -1];
        long[] nodes = Sequence(parent.Length, v, 3);
        int[] depth = new int[parent.Length];
        for (int i = 0; i < parent.Length; i++)
        {
            depth[i] = parent[i] < 0 ? 0 : depth[parent[i]] + 1;
        }

        using var inference = torch.inference_mode();
        using KvCache cache = model.CreateCache(64);
        using (torch.NewDisposeScope())
        {
            model.Forward(prefix, cache);
        }

        var mask = new bool[parent.Length, parent.Length];
        for (int i = 0; i < parent.Length; i++)
        {
            for (int a = i; a >= 0; a = parent[a])
            {
                mask[i, a] = true;
            }
        }

        float[] tree;
        using (torch.NewDisposeScope())
        {
            long[] positions = depth.Select(d => (long)(prefix.Length + d)).ToArray();
            Tensor treeMask = torch.tensor(mask.Cast<bool>().ToArray(), [parent.Length, parent.Length]);
            tree = TorchTestHelpers.ToArray(model.Logits(model.Forward(nodes, cache, positions, treeMask)));
        }

        for (int i = 0; i < parent.Length; i++)
        {
            var path = new List<long>();
            for (int a = i; a >= 0; a = parent[a])
            {
                path.Insert(0, nodes[a]);
            }

            float[] seq = TorchTestHelpers.FullLogits(model, [.. prefix, .. path]);
            float[] last = seq[((prefix.Length + path.Count - 1) * v)..((prefix.Length + path.Count) * v)];
            Assert.True(TorchTestHelpers.MaxAbsDiff(last, tree[(i * v)..((i + 1) * v)]) < 1e-4f, $"{arch}: node {i}");
        }
    }

    [Theory]
    [InlineData("llama", "bfloat16")]
    [InlineData("qwen2", "bfloat16")]
    [InlineData("llama-tied-scaled", "float32")]
    [InlineData("qwen2", "float32")]
    [InlineData("llama-demo-width", "float32")]
    [InlineData("llama-demo-width", "bfloat16")]
    [InlineData("llama-sharded-bf16", "float32")]
    [InlineData("qwen2-bf16", "float32")]
    [InlineData("mistral-bf16", "float32")]
    [InlineData("qwen2-f16", "float32")]
    [InlineData("llama-tied-scaled-f16", "float32")]
    [InlineData("gemma2", "bfloat16")]
    [InlineData("gemma2-bf16", "float32")]
    [InlineData("gemma3-bf16", "float32")]
    [InlineData("granite-bf16", "float32")]
    [InlineData("granite", "bfloat16")]
    [InlineData("smollm3-bf16", "float32")]
    [InlineData("olmo2-bf16", "float32")]
    [InlineData("olmo2", "bfloat16")]
    [InlineData("qwen3moe-bf16", "float32")]
    [InlineData("olmoe-bf16", "float32")]
    [InlineData("mixtral-bf16", "float32")]
    [InlineData("granitemoe-bf16", "float32")]
    [InlineData("qwen2moe-bf16", "float32")]
    [InlineData("cohere2-bf16", "float32")]
    [InlineData("qwen3moe", "bfloat16")]
    [InlineData("qwen3moe-wide", "float32")]   // experts on libtorch's f32 GEMMs: each expert's routed rows padded to whole blocks
    public void BatchInvariantCache_TreeNodesEqualOneTokenSteps_Bitwise(string arch, string dtype)
    {
        // f32 layers verify with a bf16 LM head (the CPU speculative form): f32 GEMMs are batch-invariant from two rows
        // up and one-token steps are padded to two rows, so every node equals its one-token step bit for bit too. A
        // bf16- or f16-stored checkpoint runs on packed weights instead, batch-invariant at every row count, without
        // padding, and keeps its own head rows (an f16 head is not rounded to the bf16 asked for).
        var type = dtype == "float32" ? ScalarType.Float32 : ScalarType.BFloat16;
        using var model = TransformerModel.Load(ModelFor(arch), torch.CPU, type, 256, headType: ScalarType.BFloat16);
        // Packed only straight from the stored rows (no f32 copies): without that path no layer would be packed.
        bool f16 = arch.EndsWith("-f16", StringComparison.Ordinal);
        Assert.Equal(arch.EndsWith("16", StringComparison.Ordinal) && PackedMatrix.Enabled, model.UsesPackedWeights);
        Assert.Equal(f16 && PackedMatrix.Enabled ? ScalarType.Float16 : ScalarType.BFloat16, model.HeadType);
        AssertTreeNodesEqualOneTokenSteps(model);
    }

    /// <summary>
    /// The libtorch path with f32 weights (the kernels off): a forward's rows are padded to whole f32 GEMM blocks — the
    /// padding rows copies of the last token, with its rotary angles and, in each head group, its mask row (a sliding
    /// window's too) — and every tree node still equals its one-token steps bit for bit.
    /// </summary>
    [Theory]
    [InlineData("llama-demo-width")]
    [InlineData("gemma2")]        // soft caps (the explicit form), sliding layers
    [InlineData("phi3-window")]   // a sliding window on every layer
    public void BatchInvariantCache_LibtorchPath_TreeNodesEqualOneTokenSteps_Bitwise(string arch)
    {
        using var model = TransformerModel.Load(ModelFor(arch), torch.CPU, ScalarType.Float32, 256, headType: ScalarType.BFloat16, cpuKernels: false);
        Assert.False(model.UsesCpuKernels);
        AssertTreeNodesEqualOneTokenSteps(model);
    }

    /// <summary>A tree of nine nodes after a 37-token prefix, verified in one forward on a batch-invariant cache: each
    /// node's logits equal, bit for bit, those of one-token steps along its path.</summary>
    internal static void AssertTreeNodesEqualOneTokenSteps(TransformerModel model)
    {
        int v = model.Config.VocabSize;
        long[] prefix = Sequence(37, v, 6);
        int[] parent = [-1, 0, 0, 1, 2, 1, 3, 5, 0];
        long[] nodes = Sequence(parent.Length, v, 7);
        int[] depth = new int[parent.Length];
        var mask = new bool[parent.Length * parent.Length];
        for (int i = 0; i < parent.Length; i++)
        {
            depth[i] = parent[i] < 0 ? 0 : depth[parent[i]] + 1;
            for (int a = i; a >= 0; a = parent[a])
            {
                mask[i * parent.Length + a] = true;
            }
        }

        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        using KvCache cache = model.CreateCache(128, batchInvariant: true);
        model.Forward(prefix, cache);
        float[] tree = TorchTestHelpers.ToArray(model.Logits(model.Forward(nodes, cache,
            depth.Select(d => (long)(prefix.Length + d)).ToArray(), torch.tensor(mask, [parent.Length, parent.Length]))));
        for (int i = 0; i < parent.Length; i++)
        {
            using KvCache steps = model.CreateCache(128, batchInvariant: true);
            model.Forward(prefix, steps);
            var path = new List<long>();
            for (int a = i; a >= 0; a = parent[a])
            {
                path.Insert(0, nodes[a]);
            }

            Tensor last = null!;
            foreach (long t in path)
            {
                last = model.Forward([t], steps);
            }

            float[] step = TorchTestHelpers.ToArray(model.Logits(last)), node = tree[(i * v)..((i + 1) * v)];
            Assert.Equal(step, node);
        }
    }

    [Fact]
    public void ShardedBf16Checkpoint_LoadsTheSameValuesAsAsSingleF32File()
    {
        string sharded = ModelFor("llama-sharded-bf16");
        // Re-save the same (bf16) values as one f32 file and compare logits exactly.
        string single = ModelZoo.Copy(sharded, "resaved");
        foreach (string f in Directory.GetFiles(single, "model-*")) File.Delete(f);
        File.Delete(Path.Combine(single, "model.safetensors.index.json"));
        using (var reader = new CheckpointReader(sharded))
        {
            var tensors = reader.Names.Select(n => new KeyValuePair<string, Tensor>(n, reader.Take(n, reader.ShapeOf(n), ScalarType.Float32))).ToList();
            SafetensorsWriter.Write(Path.Combine(single, "model.safetensors"), tensors);
        }

        using var a = TransformerModel.Load(sharded, torch.CPU, ScalarType.Float32, 64);
        using var b = TransformerModel.Load(single, torch.CPU, ScalarType.Float32, 64);
        long[] ids = Sequence(8, a.Config.VocabSize, 4);
        Assert.Equal(TorchTestHelpers.FullLogits(a, ids), TorchTestHelpers.FullLogits(b, ids));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void Bf16Compute_StaysCloseToF32(string arch)
    {
        using var f32 = TransformerModel.Load(ModelFor(arch), torch.CPU, ScalarType.Float32, 64);
        using var bf16 = TransformerModel.Load(ModelFor(arch), torch.CPU, ScalarType.BFloat16, 64);
        long[] ids = Sequence(10, f32.Config.VocabSize, 5);
        float[] x = TorchTestHelpers.FullLogits(f32, ids), y = TorchTestHelpers.FullLogits(bf16, ids);
        float scale = x.Max(MathF.Abs);
        Assert.True(TorchTestHelpers.MaxAbsDiff(x, y) < 0.05f * scale, "bf16 logits drift too far from f32");
        Assert.NotEqual(x, y); // it really ran in bf16
    }

    /// <summary>A vision-language checkpoint (Mistral-Small-3.1's <c>Mistral3ForConditionalGeneration</c>, LLaVA's
    /// wrapper) loads its language model: <c>text_config</c> as the causal LM its <c>model_type</c> names, the decoder under
    /// <c>language_model.model.</c> and the head at <c>language_model.lm_head</c>, the vision tower left unread — the same
    /// logits as the text model's own folder.</summary>
    [Theory]
    [InlineData("Mistral3ForConditionalGeneration", "mistral")]
    [InlineData("LlavaForConditionalGeneration", "llama")]
    public void VisionLanguageCheckpoint_LoadsItsLanguageModel(string wrapper, string textModel)
    {
        string text = ModelFor(textModel);
        string folder = ModelZoo.TempFolder("vlm-" + textModel);
        foreach (string f in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
        {
            File.Copy(Path.Combine(text, f), Path.Combine(folder, f));
        }

        var textConfig = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(text, "config.json")))!.AsObject();
        textConfig.Remove("architectures");
        string dtype = textConfig["torch_dtype"]!.GetValue<string>();
        textConfig.Remove("torch_dtype");
        File.WriteAllText(Path.Combine(folder, "config.json"), new System.Text.Json.Nodes.JsonObject
        {
            ["architectures"] = new System.Text.Json.Nodes.JsonArray(wrapper),
            ["text_config"] = textConfig,
            ["vision_config"] = new System.Text.Json.Nodes.JsonObject { ["model_type"] = "pixtral", ["hidden_size"] = 16 },
            ["torch_dtype"] = dtype,
        }.ToJsonString());
        using (var reader = new CheckpointReader(text))
        {
            var tensors = reader.Names.Select(n => new KeyValuePair<string, Tensor>(
                "language_model." + n, reader.Take(n, reader.ShapeOf(n), ScalarType.Float32))).ToList();   // decoder and head alike
            tensors.Add(new("vision_tower.patch_conv.weight", torch.ones(16, 3, 2, 2)));
            SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors);
        }

        using var a = TransformerModel.Load(text, torch.CPU, ScalarType.Float32, 64);
        using var b = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 64);
        Assert.Equal(a.Config.Family, b.Config.Family);
        Assert.Equal(a.Config.SlidingWindow, b.Config.SlidingWindow);
        long[] ids = Sequence(20, a.Config.VocabSize, 9);
        Assert.Equal(TorchTestHelpers.FullLogits(a, ids), TorchTestHelpers.FullLogits(b, ids));
    }
}

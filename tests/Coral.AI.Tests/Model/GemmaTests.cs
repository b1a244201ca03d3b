using System.Text.Json.Nodes;
using Coral.AI.TestModels;
using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI.Tests;

/// <summary>
/// Gemma-2 and Gemma-3 (text) against a reference forward written here from transformers' Gemma2/Gemma3 modules, in
/// float64, reading config.json itself: the embedding times √d, (1 + w) RMSNorms before and after attention and MLP,
/// q/k norms (Gemma-3), queries scaled by <c>query_pre_attn_scalar</c>^−½, scores soft-capped (Gemma-2), sliding layers
/// (Gemma-2: even layers; Gemma-3: five of six, on the local RoPE base), GeGLU with the tanh approximation, final logits
/// soft-capped (Gemma-2). Coral matches it to 1e-4; llama.cpp (<see cref="LlamaCppOracleTests"/>) agrees with both to
/// 2–4·10⁻³ and on every greedy token: its CPU GELU is approximate (ggml reads an f16 table for it), (a reference computing
/// GELU through such a table came 3–8× closer to llama.cpp when these tests were written), so the tight check is this one.
/// </summary>
public class GemmaTests
{
    public static TheoryData<string, bool> Models => new()
    {
        { "gemma2", true }, { "gemma2", false }, { "gemma3", true }, { "gemma3", false }, { "gemma2-bf16", true }, { "gemma3-bf16", true },
    };

    private static readonly long[] Ids = [3, 17, 250, 9, 41, 7, 600, 12, 5, 88, 1, 300, 44, 2, 901, 60, 6, 13];

    internal static float[] ReferenceLogits(string folder, long[] ids)
    {
        JsonObject cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
        double Num(string name) => cfg[name]!.GetValue<double>();
        double? Cap(string name) => cfg[name] is JsonNode n ? n.GetValue<double>() : null;
        bool gemma3 = cfg["model_type"]!.GetValue<string>() == "gemma3_text";
        int d = (int)Num("hidden_size"), heads = (int)Num("num_attention_heads"), kvHeads = (int)Num("num_key_value_heads"),
            hd = (int)Num("head_dim"), layers = (int)Num("num_hidden_layers"), window = (int)Num("sliding_window"), t = ids.Length;
        double eps = Num("rms_norm_eps");
        double? attnCap = Cap("attn_logit_softcapping"), finalCap = Cap("final_logit_softcapping");

        using var scope = torch.NewDisposeScope();
        using var file = SafetensorsFile.Open(Path.Combine(folder, "model.safetensors"));
        Tensor W(string name) => file.Get(name).to(ScalarType.Float64);
        Tensor Norm(Tensor x, Tensor w) => x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + eps) * (1 + w);
        Tensor Gelu(Tensor x) => 0.5 * x * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3))));

        (Tensor Cos, Tensor Sin) Rope(double theta)
        {
            Tensor positions = torch.arange(t, dtype: ScalarType.Float64).unsqueeze(1);
            Tensor inv = 1.0 / torch.pow(theta, torch.arange(0, hd, 2, dtype: ScalarType.Float64) / hd);
            Tensor angles = torch.cat([positions * inv, positions * inv], 1);
            return (angles.cos(), angles.sin());
        }

        var global = Rope(Num("rope_theta"));
        var local = gemma3 ? Rope(cfg["rope_local_base_freq"]?.GetValue<double>() ?? 10000) : global;
        Tensor Rotate(Tensor x, (Tensor Cos, Tensor Sin) r) =>
            (x * r.Cos) + (torch.cat([-x.narrow(-1, hd / 2, hd / 2), x.narrow(-1, 0, hd / 2)], -1) * r.Sin);

        Tensor q_ = torch.arange(t).unsqueeze(1), k_ = torch.arange(t).unsqueeze(0);
        Tensor causalHidden = (k_ > q_), slidingHidden = causalHidden.logical_or((q_ - k_) >= window);
        Tensor h = W("model.embed_tokens.weight").index_select(0, torch.tensor(ids)) * Math.Sqrt(d);
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            bool sliding = gemma3 ? (l + 1) % (int)(cfg["sliding_window_pattern"]?.GetValue<double>() ?? 6) != 0 : l % 2 == 0;
            Tensor x = Norm(h, W(p + "input_layernorm.weight"));
            Tensor Proj(string name, int n) => F.linear(x, W(p + $"self_attn.{name}_proj.weight")).view(t, n, hd).transpose(0, 1);
            Tensor q = Proj("q", heads), k = Proj("k", kvHeads), v = Proj("v", kvHeads);
            if (gemma3)
            {
                (q, k) = (Norm(q, W(p + "self_attn.q_norm.weight")), Norm(k, W(p + "self_attn.k_norm.weight")));
            }

            (q, k) = (Rotate(q, sliding ? local : global), Rotate(k, sliding ? local : global));
            k = k.repeat_interleave(heads / kvHeads, 0);
            v = v.repeat_interleave(heads / kvHeads, 0);
            Tensor scores = torch.matmul(q, k.transpose(1, 2)) * Math.Pow(Num("query_pre_attn_scalar"), -0.5);
            if (attnCap is double ac)
            {
                scores = torch.tanh(scores / ac) * ac;
            }

            Tensor attn = torch.matmul(scores.masked_fill(sliding ? slidingHidden : causalHidden, double.NegativeInfinity).softmax(-1), v);
            Tensor o = F.linear(attn.transpose(0, 1).reshape(t, heads * hd), W(p + "self_attn.o_proj.weight"));
            h = h + Norm(o, W(p + "post_attention_layernorm.weight"));
            x = Norm(h, W(p + "pre_feedforward_layernorm.weight"));
            Tensor mlp = F.linear(Gelu(F.linear(x, W(p + "mlp.gate_proj.weight"))) * F.linear(x, W(p + "mlp.up_proj.weight")),
                W(p + "mlp.down_proj.weight"));
            h = h + Norm(mlp, W(p + "post_feedforward_layernorm.weight"));
        }

        Tensor logits = F.linear(Norm(h, W("model.norm.weight")), W("model.embed_tokens.weight"));
        if (finalCap is double fc)
        {
            logits = torch.tanh(logits / fc) * fc;
        }

        return TorchTestHelpers.ToArray(logits.to(ScalarType.Float32));
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Forward_MatchesTheReference(string name, bool cpuKernels)
    {
        string folder = TransformerModelTests.ModelFor(name);
        using var model = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        Assert.Equal(cpuKernels, model.UsesCpuKernels);
        Assert.Equal(cpuKernels && name.EndsWith("bf16", StringComparison.Ordinal) && PackedMatrix.Enabled, model.UsesPackedWeights);
        float[] ours = TorchTestHelpers.FullLogits(model, Ids), reference = ReferenceLogits(folder, Ids);
        float diff = TorchTestHelpers.MaxAbsDiff(ours, reference);
        Assert.True(diff < 1e-4f, $"{name}: max |Δlogit| = {diff}");
        // Past the window (8) the sliding layers see less than the global ones: the prompt is long enough to tell.
        Assert.True(Ids.Length > model.Config.SlidingWindow);
    }

    [Fact]
    public void Gemma2Config_AsShipped_Parses()
    {
        // gemma-2-2b-it's config.json (the fields the forward reads).
        string path = WriteConfig("gemma-2-2b", """
            {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
             "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "intermediate_size": 9216,
             "max_position_embeddings": 8192, "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
             "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
             "torch_dtype": "float32", "vocab_size": 256000, "bos_token_id": 2, "eos_token_id": [1, 107]}
            """);
        ModelConfig c = ModelConfig.Load(path);
        Assert.Equal(ModelFamily.Gemma2, c.Family);
        Assert.Equal((50.0, 30.0), (c.AttentionSoftcap, c.FinalLogitSoftcap));
        Assert.Equal(1.0 / 16, c.AttentionScale);
        Assert.Equal(48f, c.EmbeddingScale);
        Assert.True(c.TieWordEmbeddings && c.NormWeightsOffsetByOne && c.NormPlacement == NormPlacement.Sandwich && !c.QkNorm);
        Assert.Equal(MlpActivation.GeluTanh, c.Activation);
        Assert.Equal(4096, c.SlidingWindow);
        Assert.Equal(Enumerable.Range(0, 26).Select(i => i % 2 == 0), Enumerable.Range(0, 26).Select(c.IsSliding));
        Assert.Null(c.LocalRopeTheta);
    }

    [Fact]
    public void Gemma3Config_AsShipped_Parses()
    {
        // gemma-3-1b-it's config.json (transformers 4.50 layout: sliding_window_pattern rather than layer_types).
        string path = WriteConfig("gemma-3-1b", """
            {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attn_logit_softcapping": null, "final_logit_softcapping": null,
             "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
             "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
             "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null,
             "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
             "vocab_size": 262144, "bos_token_id": 2, "eos_token_id": [1, 106]}
            """);
        ModelConfig c = ModelConfig.Load(path);
        Assert.Equal(ModelFamily.Gemma3, c.Family);
        Assert.Equal((null, null), (c.AttentionSoftcap, c.FinalLogitSoftcap));   // null in the file: none (not Gemma-2's defaults)
        Assert.True(c.QkNorm);
        Assert.Equal(34f, c.EmbeddingScale);   // √1152 = 33.94 in bf16, as transformers multiplies in the embedding's dtype
        Assert.Equal((512, 10000.0, 1000000.0), (c.SlidingWindow, c.LocalRopeTheta, c.RopeTheta));
        Assert.Equal(Enumerable.Range(0, 26).Select(i => (i + 1) % 6 != 0), Enumerable.Range(0, 26).Select(c.IsSliding));

        // transformers 4.53+ writes layer_types instead; it wins over the pattern.
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["layer_types"] = new JsonArray(Enumerable.Range(0, 26).Select(i => (JsonNode)(i % 3 == 2 ? "full_attention" : "sliding_attention")).ToArray());
        File.WriteAllText(path, root.ToJsonString());
        Assert.Equal(Enumerable.Range(0, 26).Select(i => i % 3 != 2), Enumerable.Range(0, 26).Select(ModelConfig.Load(path).IsSliding));

        root["layer_types"]![3] = "chunked_attention";
        File.WriteAllText(path, root.ToJsonString());
        Assert.Contains("layer_types", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
    }

    [Fact]
    public void UnsupportedActivation_IsRefusedNamingTheField()
    {
        string path = WriteConfig("gemma-erf", """
            {"architectures": ["Gemma2ForCausalLM"], "hidden_activation": "gelu", "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}
            """);
        Assert.Contains("hidden_activation", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
    }

    /// <summary>Greedy speculative decoding (prompt lookup and a drafter tree) emits exactly the plain greedy tokens on
    /// Gemma-2 (capped logits) and Gemma-3 (two rotary tables, sliding and global masks in one verified tree).</summary>
    [Theory]
    [InlineData("gemma2-bf16")]
    [InlineData("gemma3-bf16")]
    public void SpeculativeGreedy_EqualsPlainGreedy(string name)
    {
        string folder = TransformerModelTests.ModelFor(name);
        using var lookup = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 256);
        using var drafted = DrafterZoo.Engine(folder, DrafterZoo.Random(folder, name + "-random"));
        foreach (string prompt in new[] { "the cat sat on the mat and the cat sat on the mat and the cat", "Once upon a time" })
        {
            var request = new GenerationRequest(lookup.Tokenizer.Encode(prompt), SamplingParameters.Greedy, 40, []) { Tree = new TreeShape(4, 4, 12, 0) };
            lookup.ResetCache();
            GenerationResult plain = lookup.Generate(request with { Speculative = false }, null, default);
            lookup.ResetCache();
            lookup.PromptLookupTokens = 3;
            GenerationResult byLookup = lookup.Generate(request, null, default);
            drafted.ResetCache();
            GenerationResult byDrafter = drafted.Generate(request, null, default);
            Assert.Equal(plain.TokenIds, byLookup.TokenIds);
            Assert.Equal(plain.TokenIds, byDrafter.TokenIds);
            // The random drafter loses its first request's cycles to plain steps and sits out the next (DrafterSitOut).
            Assert.True(prompt.StartsWith("the cat", StringComparison.Ordinal) ? byDrafter.Speculative is { Cycles: >= 1 } : byDrafter.Speculative is { Cycles: 0 },
                $"{prompt}: {byDrafter.Speculative}");
        }
    }

    /// <summary>A chat through <see cref="CoralChatClient"/> on a Gemma-3 with Gemma's tokenizer layout (SentencePiece
    /// without a dummy prefix) and template: the prompt is the template's text with one BOS and the turn markers as single
    /// tokens, a greedy reply streams the same text as a whole one.</summary>
    [Fact]
    public async Task Chat_RendersGemmasTemplate_AndReplies()
    {
        string folder = TransformerModelTests.ModelFor("gemma3-sentencepiece");
        var tokenizer = HfTokenizer.Load(folder);
        List<int> expected = tokenizer.Encode("<start_of_turn>user\nWhat is a coral?<end_of_turn>\n<start_of_turn>model\n");
        Assert.Equal(tokenizer.BosTokenId, expected[0]);
        Assert.Equal(1, expected.Count(id => id == tokenizer.BosTokenId));
        Assert.Single(tokenizer.Encode("<start_of_turn>", addSpecialTokens: false));

        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = folder, ContextLength = 128 });
        using var client = new CoralChatClient(host);
        var options = new ChatOptions { MaxOutputTokens = 12, Temperature = 0 };
        var response = await client.GetResponseAsync("What is a coral?", options);
        Assert.Equal(expected.Count, response.Usage!.InputTokenCount);
        Assert.False(string.IsNullOrEmpty(response.Text));
        var streamed = new System.Text.StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync("What is a coral?", options))
        {
            streamed.Append(update.Text);
        }

        Assert.Equal(response.Text, streamed.ToString());
    }

    /// <summary>Gemma-3 4B and up ship as <c>Gemma3ForConditionalGeneration</c>: a sparse <c>text_config</c> over
    /// <c>Gemma3TextConfig</c>'s defaults, the decoder under <c>language_model.model.</c> beside a vision tower, the chat
    /// template in <c>chat_template.json</c>. Its language model loads, exports and drafts as the text model does.</summary>
    [Fact]
    public void MultimodalCheckpoint_LoadsItsLanguageModel_AsTheTextModel()
    {
        string text = TransformerModelTests.ModelFor("gemma3");
        string folder = ModelZoo.TempFolder("gemma3-multimodal");
        foreach (string f in new[] { "tokenizer.json", "generation_config.json" })
        {
            File.Copy(Path.Combine(text, f), Path.Combine(folder, f));
        }

        var textConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(text, "config.json")))!.AsObject();
        var nested = new JsonObject { ["model_type"] = "gemma3_text" };
        foreach (string key in new[] { "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "query_pre_attn_scalar", "sliding_window", "rms_norm_eps", "max_position_embeddings" })
        {
            nested[key] = textConfig[key]!.DeepClone();   // rope_theta (1e6), rope_local_base_freq and the pattern: the defaults
        }

        File.WriteAllText(Path.Combine(folder, "config.json"), new JsonObject
        {
            ["architectures"] = new JsonArray("Gemma3ForConditionalGeneration"), ["model_type"] = "gemma3",
            ["text_config"] = nested, ["vision_config"] = new JsonObject { ["model_type"] = "siglip_vision_model", ["hidden_size"] = 16 },
            ["eos_token_id"] = textConfig["eos_token_id"]!.DeepClone(), ["bos_token_id"] = textConfig["bos_token_id"]!.DeepClone(),
            ["torch_dtype"] = "float32",
        }.ToJsonString());
        var tokenizerConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(text, "tokenizer_config.json")))!.AsObject();
        tokenizerConfig.Remove("chat_template");
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), tokenizerConfig.ToJsonString());
        const string Template = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n";
        File.WriteAllText(Path.Combine(folder, "chat_template.json"), new JsonObject { ["chat_template"] = Template }.ToJsonString());
        using (var reader = new CheckpointReader(text))
        {
            var tensors = reader.Names.Select(n => new KeyValuePair<string, Tensor>("language_model." + n, reader.Take(n, reader.ShapeOf(n), ScalarType.Float32))).ToList();
            tensors.Add(new("vision_tower.vision_model.embeddings.patch_embedding.weight", torch.ones(16, 3, 2, 2)));
            SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors);
        }

        ModelConfig expected = ModelConfig.Load(Path.Combine(text, "config.json")), actual = ModelConfig.Load(Path.Combine(folder, "config.json"));
        Assert.Equal(ModelFamily.Gemma3, actual.Family);
        Assert.Equal((expected.HiddenSize, expected.RopeTheta, expected.LocalRopeTheta, expected.AttentionScale, expected.RmsNormEps),
            (actual.HiddenSize, actual.RopeTheta, actual.LocalRopeTheta, actual.AttentionScale, actual.RmsNormEps));
        Assert.Equal(Enumerable.Range(0, expected.NumLayers).Select(expected.IsSliding), Enumerable.Range(0, actual.NumLayers).Select(actual.IsSliding));
        Assert.Equal(Template, TokenizerConfig.Load(folder).ChatTemplate);

        using (var a = TransformerModel.Load(text, torch.CPU, ScalarType.Float32, 64))
        using (var b = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 64))
        {
            Assert.Equal(TorchTestHelpers.FullLogits(a, Ids), TorchTestHelpers.FullLogits(b, Ids));
        }

        // GGUF export and a drafter's initialisation read the decoder under its prefix too.
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-gemma3-multimodal"), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        using var engine = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 128);
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time");
        var result = engine.Generate(new GenerationRequest(prompt, SamplingParameters.Greedy, 16, []), null, default);
        using (var oracle = new LlamaCppOracle(gguf))
        {
            Assert.Equal(oracle.Greedy(prompt, result.TokenIds.Count, engine.EosTokenIds), result.TokenIds);
        }

        string drafter = DrafterZoo.Random(folder, "gemma3-multimodal-drafter", new DraftInitOptions { Seed = 3, IncludeEmbedding = true });
        Assert.True(File.Exists(Path.Combine(drafter, "model.safetensors")));
    }

    private static string WriteConfig(string name, string json)
    {
        string path = Path.Combine(ModelZoo.TempFolder("gemma-config-" + name), "config.json");
        File.WriteAllText(path, json);
        return path;
    }
}

using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class ModelConfigTests
{
    [Fact]
    public void RopeParameters_OfTransformers5_ReadAsRopeThetaAndRopeScaling()
    {
        // transformers 5 saves rope_theta and the scaling in one "rope_parameters" object. Read as the old fields, the
        // same model computes the same logits; ignored, a Llama-3 checkpoint would silently run with θ = 10,000.
        string old = TransformerModelTests.ModelFor("llama-tied-scaled");   // θ = 500,000 with llama3 scaling
        string v5 = ModelZoo.TempFolder("config-rope-parameters");
        foreach (string file in Directory.GetFiles(old))
        {
            File.Copy(file, Path.Combine(v5, Path.GetFileName(file)), overwrite: true);
        }

        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(old, "config.json")))!.AsObject();
        var parameters = (JsonObject)config["rope_scaling"]!.DeepClone();
        parameters["rope_theta"] = config["rope_theta"]!.DeepClone();
        config.Remove("rope_scaling");
        config.Remove("rope_theta");
        config["rope_parameters"] = parameters;
        File.WriteAllText(Path.Combine(v5, "config.json"), config.ToJsonString());

        ModelConfig a = ModelConfig.Load(Path.Combine(old, "config.json")), b = ModelConfig.Load(Path.Combine(v5, "config.json"));
        Assert.Equal(500000.0, b.RopeTheta);
        Assert.NotNull(b.RopeScaling);
        Assert.Equal(a.RopeScaling, b.RopeScaling);

        using var first = TransformerModel.Load(old, torch.CPU, ScalarType.Float32, 64);
        using var second = TransformerModel.Load(v5, torch.CPU, ScalarType.Float32, 64);
        long[] ids = [1, 5, 9, 2, 7, 3];
        Assert.Equal(TorchTestHelpers.FullLogits(first, ids), TorchTestHelpers.FullLogits(second, ids));

        // An unsupported type is named by its field in the new layout too.
        parameters["rope_type"] = "su";
        File.WriteAllText(Path.Combine(v5, "config.json"), config.ToJsonString());
        var e = Assert.Throws<CoralModelException>(() => ModelConfig.Load(Path.Combine(v5, "config.json")));
        Assert.Contains("rope_parameters.rope_type", e.Message);
    }

    private static ModelConfig WithRopeScaling(string name, string scaling, int? maxPositions = null)
    {
        string folder = ModelZoo.TempFolder("config-" + name);
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(TransformerModelTests.ModelFor("qwen2"), "config.json")))!.AsObject();
        config["rope_scaling"] = JsonNode.Parse(scaling);
        if (maxPositions is int m)
        {
            config["max_position_embeddings"] = m;
        }

        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        return ModelConfig.Load(Path.Combine(folder, "config.json"));
    }

    /// <summary>YaRN as transformers reads it: the configured factor (not the ratio of the contexts, which transformers
    /// took for a while — its issue #38224), the ratio where no factor is given, the attention factor 0.1·ln(s) + 1 or
    /// DeepSeek's mscale ratio or the configured one, β 32 / 1, truncation on; linear's factor; a missing factor named.
    /// (That the tables follow these numbers is checked against llama.cpp: LlamaCppOracleTests' qwen2-yarn.)</summary>
    [Fact]
    public void RopeScaling_Yarn_AndLinear_ReadWithTransformersDefaults()
    {
        RopeScaling qwen = WithRopeScaling("yarn-qwen", """{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}""", 40960).RopeScaling!;
        Assert.Equal((RopeScalingKind.Yarn, 4.0, 32768, 32.0, 1.0, true), (qwen.Kind, qwen.Factor, qwen.OriginalMaxPositions, qwen.BetaFast, qwen.BetaSlow, qwen.Truncate));
        Assert.Equal(0.1 * Math.Log(4) + 1, qwen.AttentionFactor, 12);

        RopeScaling derived = WithRopeScaling("yarn-ratio", """{"type": "yarn", "original_max_position_embeddings": 4096}""", 16384).RopeScaling!;
        Assert.Equal(4.0, derived.Factor);

        RopeScaling deepseek = WithRopeScaling("yarn-mscale",
            """{"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0.707, "beta_fast": 16, "beta_slow": 2, "truncate": false}""").RopeScaling!;
        Assert.Equal((0.1 * Math.Log(40) + 1) / (0.1 * 0.707 * Math.Log(40) + 1), deepseek.AttentionFactor, 12);
        Assert.Equal((16.0, 2.0, false), (deepseek.BetaFast, deepseek.BetaSlow, deepseek.Truncate));
        Assert.Equal(1.25, WithRopeScaling("yarn-given", """{"type": "yarn", "factor": 8, "attention_factor": 1.25}""").RopeScaling!.AttentionFactor);

        RopeScaling linear = WithRopeScaling("linear", """{"type": "linear", "factor": 2.0}""").RopeScaling!;
        Assert.Equal((RopeScalingKind.Linear, 2.0, 1.0), (linear.Kind, linear.Factor, linear.AttentionFactor));
        var e = Assert.Throws<CoralModelException>(() => WithRopeScaling("linear-no-factor", """{"type": "linear"}"""));
        Assert.Contains("rope_scaling.factor", e.Message);
    }

    /// <summary>Dynamic NTK scaling changes nothing up to max_position_embeddings, past which the tables never reach: such
    /// a model computes the unscaled model's logits; its factor is still required.</summary>
    [Fact]
    public void DynamicNtk_WithinTheModelsContext_IsPlainRope()
    {
        string plain = TransformerModelTests.ModelFor("qwen2");
        string dynamic = ModelZoo.TempFolder("qwen2-dynamic");
        foreach (string file in Directory.GetFiles(plain))
        {
            File.Copy(file, Path.Combine(dynamic, Path.GetFileName(file)), overwrite: true);
        }

        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(plain, "config.json")))!.AsObject();
        config["rope_scaling"] = JsonNode.Parse("""{"type": "dynamic", "factor": 2.0}""");
        File.WriteAllText(Path.Combine(dynamic, "config.json"), config.ToJsonString());
        Assert.Null(ModelConfig.Load(Path.Combine(dynamic, "config.json")).RopeScaling);
        using var a = TransformerModel.Load(plain, torch.CPU, ScalarType.Float32, 64);
        using var b = TransformerModel.Load(dynamic, torch.CPU, ScalarType.Float32, 64);
        long[] ids = [1, 5, 9, 2, 7, 3];
        Assert.Equal(TorchTestHelpers.FullLogits(a, ids), TorchTestHelpers.FullLogits(b, ids));

        config["rope_scaling"] = JsonNode.Parse("""{"type": "dynamic"}""");
        File.WriteAllText(Path.Combine(dynamic, "config.json"), config.ToJsonString());
        Assert.Contains("rope_scaling.factor", Assert.Throws<CoralModelException>(() => ModelConfig.Load(Path.Combine(dynamic, "config.json"))).Message);
    }

    [Fact]
    public void GraniteConfig_ReadsItsMultipliers()
    {
        // The fields Granite 3.x configs carry (values of granite-3.3-2b-instruct's kind).
        string path = Path.Combine(ModelZoo.TempFolder("config-granite"), "config.json");
        File.WriteAllText(path, """
            {"architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_size": 2048, "intermediate_size": 8192,
             "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49159,
             "embedding_multiplier": 12.0, "attention_multiplier": 0.015625, "residual_multiplier": 0.22, "logits_scaling": 8.0,
             "mlp_bias": false, "attention_bias": false, "tie_word_embeddings": true, "rope_theta": 10000000.0}
            """);
        ModelConfig c = ModelConfig.Load(path);
        Assert.Equal(ModelFamily.Granite, c.Family);
        Assert.Equal((12f, 0.015625, 0.22f, 8f), (c.EmbeddingScale, c.AttentionScale, c.ResidualScale, c.LogitDivisor));

        File.WriteAllText(path, File.ReadAllText(path).Replace("\"mlp_bias\": false", "\"mlp_bias\": true", StringComparison.Ordinal));
        Assert.Contains("mlp_bias", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
    }

    [Fact]
    public void LlamaWithAnotherActivation_IsRefusedNamingTheField()
    {
        string path = Path.Combine(ModelZoo.TempFolder("config-gelu-llama"), "config.json");
        File.WriteAllText(path, """
            {"architectures": ["LlamaForCausalLM"], "hidden_act": "gelu", "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}
            """);
        Assert.Contains("hidden_act", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
        File.WriteAllText(path, File.ReadAllText(path).Replace("\"gelu\"", "\"silu\"", StringComparison.Ordinal));
        Assert.Equal(ModelFamily.Llama, ModelConfig.Load(path).Family);
    }

    [Fact]
    public void SmolLM3Config_ReadsItsLayersWithoutRope()
    {
        string path = Path.Combine(ModelZoo.TempFolder("config-smollm3"), "config.json");
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("SmolLM3ForCausalLM"), ["hidden_size"] = 2048, ["intermediate_size"] = 11008,
            ["num_hidden_layers"] = 36, ["num_attention_heads"] = 16, ["num_key_value_heads"] = 4, ["vocab_size"] = 128256,
            ["no_rope_layer_interval"] = 4,
        };
        File.WriteAllText(path, config.ToJsonString());
        // Without no_rope_layers: every fourth layer, as transformers fills it.
        Assert.Equal(Enumerable.Range(0, 36).Select(i => (i + 1) % 4 != 0), Enumerable.Range(0, 36).Select(ModelConfig.Load(path).UsesRope));

        config["no_rope_layers"] = new JsonArray(Enumerable.Range(0, 36).Select(i => (JsonNode)(i < 30 ? 1 : 0)).ToArray());
        File.WriteAllText(path, config.ToJsonString());
        Assert.Equal(Enumerable.Range(0, 36).Select(i => i < 30), Enumerable.Range(0, 36).Select(ModelConfig.Load(path).UsesRope));

        config["no_rope_layers"] = new JsonArray(1, 0);
        File.WriteAllText(path, config.ToJsonString());
        Assert.Contains("no_rope_layers", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
    }

    [Fact]
    public void QwenSlidingWindow_StartsAtMaxWindowLayers()
    {
        // transformers: with use_sliding_window, layers from max_window_layers (default 28) on slide; layer_types wins.
        string path = Path.Combine(ModelZoo.TempFolder("config-qwen-window"), "config.json");
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("Qwen2ForCausalLM"), ["hidden_size"] = 64, ["intermediate_size"] = 128,
            ["num_hidden_layers"] = 30, ["num_attention_heads"] = 4, ["vocab_size"] = 100, ["sliding_window"] = 4096,
            ["use_sliding_window"] = false,
        };
        IEnumerable<bool> Sliding()
        {
            File.WriteAllText(path, config.ToJsonString());
            ModelConfig c = ModelConfig.Load(path);
            return Enumerable.Range(0, c.NumLayers).Select(c.IsSliding);
        }

        Assert.All(Sliding(), Assert.False);
        config["use_sliding_window"] = true;
        Assert.Equal(Enumerable.Range(0, 30).Select(i => i >= 28), Sliding());
        config["max_window_layers"] = 10;
        Assert.Equal(Enumerable.Range(0, 30).Select(i => i >= 10), Sliding());
        config["layer_types"] = new JsonArray(Enumerable.Range(0, 30).Select(i => (JsonNode)(i % 2 == 0 ? "sliding_attention" : "full_attention")).ToArray());
        Assert.Equal(Enumerable.Range(0, 30).Select(i => i % 2 == 0), Sliding());
    }
}

using System.Text.Json;
using System.Text.Json.Nodes;
using Coral.Cli;
using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>Drafters in the published EAGLE/HASS layout load as they are; incompatible ones fail clearly.</summary>
public class DraftCheckpointTests
{
    private static string Target => TransformerModelTests.ModelFor("llama");

    [Theory]
    [InlineData(null, false)]    // no "bias" key: EAGLE's default is bias = true, fc.bias present
    [InlineData(true, true)]
    [InlineData(false, false)]
    [InlineData(false, true)]    // embed_tokens.weight stored (ignored; the target's is used)
    public void PublishedLayouts_Load_AndDecodeLosslessly(bool? bias, bool embedding)
    {
        string draft = DrafterZoo.Random(Target, $"layout-{bias}-{embedding}", new DraftInitOptions { FcBias = bias, IncludeEmbedding = embedding, Seed = 9 });
        JsonNode config = JsonNode.Parse(File.ReadAllText(Path.Combine(draft, "config.json")))!;
        Assert.Equal(bias is null, config["bias"] is null);
        using var reader = new CheckpointReader(draft);
        Assert.Equal(bias ?? true, reader.Contains("fc.bias"));
        Assert.Equal(embedding, reader.Contains("embed_tokens.weight"));
        Assert.False(reader.Contains("layers.0.input_layernorm.weight"));
        Assert.DoesNotContain(reader.Names, n => n.StartsWith("model.", StringComparison.Ordinal));
        reader.Dispose();

        using var engine = DrafterZoo.Engine(Target, draft);
        var request = new GenerationRequest(engine.Tokenizer.Encode("Hello"), SamplingParameters.Greedy, 12, []);
        var spec = engine.Generate(request, null, default);
        engine.ResetCache();
        Assert.Equal(engine.Generate(request with { Speculative = false }, null, default).TokenIds, spec.TokenIds);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Drafters_RunPacked_F32OnesRoundedToBf16_UnlessExact(bool bf16)
    {
        string draft = DrafterZoo.Random(Target, $"storage-bf16-{bf16}", new DraftInitOptions { FcBias = true, Seed = 21, Bf16 = bf16 });
        JsonNode config = JsonNode.Parse(File.ReadAllText(Path.Combine(draft, "config.json")))!;
        Assert.Equal(bf16 ? "bfloat16" : "float32", config["torch_dtype"]!.GetValue<string>());
        using (var file = SafetensorsFile.Open(Path.Combine(draft, "model.safetensors")))
        {
            Assert.All(file.Entries.Values, e => Assert.Equal(bf16 ? ScalarType.BFloat16 : ScalarType.Float32, e.DType));
        }

        using (var model = TransformerModel.Load(Target, CPU, ScalarType.Float32, 64))
        using (var exact = DraftModel.Load(draft, model, 64, exactWeights: true))
        {
            Assert.Equal(bf16 && PackedMatrix.Enabled, exact.UsesPackedWeights);   // random f32 values are not bf16 values
        }

        using var engine = DrafterZoo.Engine(Target, draft);
        Assert.Equal(PackedMatrix.Enabled, engine.Drafter!.Model.UsesPackedWeights);   // f32 values rounded: proposals only
        var request = new GenerationRequest(engine.Tokenizer.Encode("Hello there"), SamplingParameters.Greedy, 12, []);
        var spec = engine.Generate(request, null, default);
        engine.ResetCache();
        Assert.Equal(engine.Generate(request with { Speculative = false }, null, default).TokenIds, spec.TokenIds);
    }

    [Fact]
    public void MissingFcBias_WhenTheConfigImpliesIt_IsNamed()
    {
        string draft = DrafterZoo.Random(Target, "no-bias-tensor", new DraftInitOptions { FcBias = false });
        string path = Path.Combine(draft, "config.json");
        JsonNode config = JsonNode.Parse(File.ReadAllText(path))!;
        config.AsObject().Remove("bias");
        File.WriteAllText(path, config.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => DrafterZoo.Engine(Target, draft).Dispose());
        Assert.Equal("fc.bias", ex.Field);
    }

    [Fact]
    public void DrafterForAnotherTarget_IsRejected_NamingTheField()
    {
        string other = DrafterZoo.Random(TransformerModelTests.ModelFor("qwen3"), "other-target");
        var ex = Assert.Throws<CoralModelException>(() => DrafterZoo.Engine(Target, other).Dispose());
        Assert.True(ex.Field is "hidden_size" or "vocab_size", ex.Message);
        Assert.Contains("another model", ex.Message);
    }

    [Fact]
    public void CorruptRouter_IsReported()
    {
        string draft = DrafterZoo.Random(Target, "bad-router", new DraftInitOptions { RouterGroups = 4 });
        string path = Path.Combine(draft, "config.json");
        JsonNode config = JsonNode.Parse(File.ReadAllText(path))!;
        config["router_groups"] = 5;
        File.WriteAllText(path, config.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => DrafterZoo.Engine(Target, draft).Dispose());
        Assert.Equal("group_perm", ex.Field);
    }

    [Theory]
    [InlineData("router_groups")]
    [InlineData("router_topk")]
    [InlineData("router_hidden")]
    public void RouterConfigField_OfTheWrongType_IsReportedByName(string field)
    {
        string draft = DrafterZoo.Random(Target, "bad-router-" + field, new DraftInitOptions { RouterGroups = 4 });
        string path = Path.Combine(draft, "config.json");
        JsonNode config = JsonNode.Parse(File.ReadAllText(path))!;
        config[field] = "four";
        File.WriteAllText(path, config.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => DrafterZoo.Engine(Target, draft).Dispose());
        Assert.Equal(field, ex.Field);
        Assert.Equal(path, ex.FilePath);
    }

    [Fact]
    public async Task ChatClient_WithADrafter_ReportsSpeculativeStats_AndHonoursTheSwitch()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        string draft = DrafterZoo.Copy(target, "chat-client");
        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = target, DraftModelPath = draft, ContextLength = 256 });
        using var client = new CoralChatClient(host);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 24 };
        ChatResponse spec = await client.GetResponseAsync("Once upon a time", options);
        var counts = spec.Usage!.AdditionalCounts!;
        Assert.True(counts["draft_tokens_proposed"] > 0);
        Assert.True(counts["mean_accepted_length_x1000"] >= 1000);
        Assert.True(counts["target_forward_passes"] <= spec.Usage.OutputTokenCount);

        var plainOptions = options.Clone();
        plainOptions.AdditionalProperties = new() { ["speculative"] = false };
        ChatResponse plain = await client.GetResponseAsync("Once upon a time", plainOptions);
        Assert.False(plain.Usage!.AdditionalCounts!.ContainsKey("draft_tokens_proposed"));
        Assert.Equal(plain.Text, spec.Text);

        var custom = options.Clone();
        custom.AdditionalProperties = new() { ["tree_total_tokens"] = 6, ["tree_depth"] = 2, ["tree_top_k"] = 3 };
        Assert.Equal(plain.Text, (await client.GetResponseAsync("Once upon a time", custom)).Text);
        custom.AdditionalProperties["tree_total_tokens"] = 500;
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Once upon a time", custom));
    }

    [Fact]
    public async Task Cli_GenerateWithDraft_EqualsWithout_AndBenchJsonHasTheFields()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        string draft = Path.Combine(ModelZoo.TempFolder("cli-draft"), "d");
        var stdout = new StringWriter();
        Assert.Equal(0, await CliApp.RunAsync(["draft-init", "--target", target, "--out", draft, "--seed", "4", "--router-groups", "8", "--router-topk", "2"], stdout, new StringWriter(), TextReader.Null));

        async Task<JsonElement> Generate(params string[] extra)
        {
            var o = new StringWriter();
            var e = new StringWriter();
            int code = await CliApp.RunAsync(["generate", "--model", target, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "20", "--json", .. extra], o, e, TextReader.Null);
            Assert.True(code == 0, e.ToString());
            return JsonDocument.Parse(o.ToString()).RootElement.Clone();
        }

        JsonElement plain = await Generate();
        JsonElement spec = await Generate("--draft", draft);
        Assert.Equal(plain.GetProperty("token_ids").ToString(), spec.GetProperty("token_ids").ToString());
        JsonElement s = spec.GetProperty("speculative");
        Assert.True(s.GetProperty("cycles").GetInt32() > 0);
        Assert.True(s.GetProperty("mean_accepted_length").GetDouble() >= 1);
        Assert.True(s.GetProperty("draft_tokens").GetInt32() > 0);
        Assert.True(s.GetProperty("accepted_tokens").GetInt32() > 0);

        string prompts = Path.Combine(ModelZoo.TempFolder("bench"), "prompts.jsonl");
        File.WriteAllLines(prompts,
        [
            """{"prompt": "Once upon a time", "kind": "story"}""",
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}], "kind": "multi-turn"}""",
        ]);
        var benchOut = new StringWriter();
        var benchErr = new StringWriter();
        // No warm-up here: the depth controller carries over from warm-up runs, and with this random drafter it may then
        // choose plain steps only (τ 0); the fields of a run with cycles are checked.
        int rc = await CliApp.RunAsync(["bench", "--model", target, "--draft", draft, "--prompts", prompts, "--max-new-tokens", "12", "--rounds", "1", "--json", "--warmup", "0"], benchOut, benchErr, TextReader.Null);
        Assert.True(rc == 0, benchErr.ToString());
        JsonElement overall = JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("overall");
        foreach (string field in new[] { "mean_accepted_length", "plain_tokens_per_second", "speculative_tokens_per_second", "speedup" })
        {
            Assert.True(overall.GetProperty(field).GetDouble() > 0, field);
        }

        Assert.True(overall.GetProperty("greedy_identical").GetBoolean());
        Assert.Equal(0, JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("warmup_prompts").GetInt32());
        Assert.Equal(2, await CliApp.RunAsync(["bench", "--model", target, "--draft", draft, "--prompts", prompts, "--warmup", "-1"], new StringWriter(), benchErr, TextReader.Null));
        Assert.Contains("--warmup must be 0 or more", benchErr.ToString());

        // A fixed 4-node tree with the router off (the tree-size sweep and router on/off rows of the report), then the plots.
        string folder = Path.GetDirectoryName(prompts)!, auto = Path.Combine(folder, "auto.json"), small = Path.Combine(folder, "small.json");
        File.WriteAllText(auto, benchOut.ToString());
        benchOut = new StringWriter();
        rc = await CliApp.RunAsync(["bench", "--model", target, "--draft", draft, "--prompts", prompts, "--max-new-tokens", "12", "--rounds", "1", "--json",
            "--tree-tokens", "4", "--router-topk", "0", "--no-plain-fallback"], benchOut, benchErr, TextReader.Null);
        Assert.True(rc == 0, benchErr.ToString());
        File.WriteAllText(small, benchOut.ToString());
        JsonElement tree = JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("tree");
        Assert.Equal((4, 0), (tree.GetProperty("total_tokens").GetInt32(), tree.GetProperty("router_top_k").GetInt32()));
        Assert.False(tree.GetProperty("plain_fallback").GetBoolean());
        Assert.Equal(2, JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("warmup_prompts").GetInt32());   // default 8, two prompts
        Assert.Contains("warm-up: 2 prompt(s)", benchErr.ToString());
        Assert.Equal(0, JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("overall").GetProperty("cycle_ms").GetProperty("plain_steps").GetInt32());
        JsonElement steps = JsonDocument.Parse(benchOut.ToString()).RootElement.GetProperty("draft_step_ms");
        Assert.True(steps.GetProperty("full_head").GetDouble() > 0 && steps.GetProperty("router").GetDouble() > 0, steps.ToString());   // both costs, router off or on
        Assert.Contains("router off (full LM head)", benchErr.ToString());

        string plots = Path.Combine(folder, "plots"), sweep = Path.Combine(folder, "sweep.png");
        Assert.Equal(0, await CliApp.RunAsync(["plot", "--bench", $"auto (T=0)={auto},4 nodes={small}", "--out", plots], new StringWriter(), benchErr, TextReader.Null));
        Assert.Equal(0, await CliApp.RunAsync(["plot", "--sweep", $"a={small},b={auto}", "--out", sweep], new StringWriter(), benchErr, TextReader.Null));
        string costs = Path.Combine(folder, "costs.png"), oneCost = Path.Combine(folder, "cost.png");
        Assert.Equal(0, await CliApp.RunAsync(["plot", "--tree-cost", $"a={small},b={auto}", "--out", costs], new StringWriter(), benchErr, TextReader.Null));
        Assert.Equal(0, await CliApp.RunAsync(["plot", "--tree-cost", $"a={small}", "--out", oneCost], new StringWriter(), benchErr, TextReader.Null));
        foreach (string png in new[] { "tau-by-kind.png", "speedup-by-kind.png", "tree-cost.png" }.Select(f => Path.Combine(plots, f)).Append(sweep).Append(costs))
        {
            Assert.Equal((900, 480), PngSize(png));
        }

        Assert.NotEqual(File.ReadAllBytes(costs), File.ReadAllBytes(oneCost));   // a series per run
        string notBench = Path.Combine(folder, "not-bench.json");
        File.WriteAllText(notBench, "{\"model\": \"x\"}");
        var plotErr = new StringWriter();
        Assert.Equal(1, await CliApp.RunAsync(["plot", "--tree-cost", $"odd={notBench}", "--out", oneCost], new StringWriter(), plotErr, TextReader.Null));
        Assert.Contains("'odd' is not a coral bench JSON", plotErr.ToString());

        Assert.NotEqual(File.ReadAllBytes(Path.Combine(plots, "tau-by-kind.png")), File.ReadAllBytes(Path.Combine(plots, "speedup-by-kind.png")));
    }

    /// <summary>Width and height from a PNG's IHDR chunk (and a check of the signature).</summary>
    internal static (int Width, int Height) PngSize(string path)
    {
        byte[] b = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, b[..8]);
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(b, 12, 4));
        return (System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(b.AsSpan(16)), System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(b.AsSpan(20)));
    }
}

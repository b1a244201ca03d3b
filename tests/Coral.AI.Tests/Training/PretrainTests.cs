using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class PretrainTests
{
    [Fact]
    public async Task Pretrain_ThenSft_WritesAnHfFolderTheEngineLoads_AndLearns()
    {
        string tokenizer = TransformerModelTests.ModelFor("qwen2");   // byte-level BPE with <|im_start|>/<|im_end|>
        string folder = ModelZoo.TempFolder("pretrain");
        string text = Path.Combine(folder, "corpus.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("the cat sat on the mat. the dog sat on the log. ", 40)));
        string chat = Path.Combine(folder, "chat.jsonl");
        File.WriteAllLines(chat, Enumerable.Range(0, 4).Select(_ => new JsonObject
        {
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "where did the cat sit?" }, new JsonObject { ["role"] = "assistant", ["content"] = "on the mat." }),
        }.ToJsonString()));
        string config = Path.Combine(folder, "config.json");
        File.WriteAllText(config, """{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}""");
        string output = Path.Combine(folder, "model");
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["pretrain", "--tokenizer", tokenizer, "--data", text, "--config", config, "--out", output,
            "--steps", "120", "--lr", "0.01", "--max-length", "64", "--sft", chat, "--sft-steps", "60", "--sft-lr", "0.001", "--batch", "2"], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());

        var metrics = File.ReadLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var pre = metrics.Where(m => m["phase"]!.GetValue<string>() == "pretrain").Select(m => m["loss"]!.GetValue<double>()).ToList();
        Assert.True(pre.TakeLast(10).Average() < 0.5 * pre.Take(10).Average(), $"{pre.Take(10).Average():F2} -> {pre.TakeLast(10).Average():F2}");

        using var engine = InferenceEngine.Load(output, torch.CPU, ScalarType.Float32, 256);
        var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode("the cat sat"), SamplingParameters.Greedy, 6, []), null, default);
        Assert.Contains("mat", r.Text);   // it learned the corpus (a random model cannot spell it)

        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = output, ContextLength = 256 });
        using var client = new CoralChatClient(host);
        ChatResponse answer = await client.GetResponseAsync("where did the cat sit?", new ChatOptions { Temperature = 0, MaxOutputTokens = 8 });
        Assert.Contains("mat", answer.Text);   // and the SFT turn format
    }
}

public class PretrainConfigTests
{
    [Theory]
    [InlineData("""{"hidden_size": "big"}""", "hidden_size")]
    [InlineData("""{"rope_theta": "x"}""", "rope_theta")]
    [InlineData("""{"num_hidden_layers": 0}""", "num_hidden_layers")]
    [InlineData("""{"hidden_size": 100, "num_attention_heads": 8}""", "num_attention_heads")]
    [InlineData("""{"num_attention_heads": 8, "num_key_value_heads": 3}""", "num_key_value_heads")]
    public void BadField_IsATypedErrorNamingIt(string json, string field)
    {
        string path = Path.Combine(ModelZoo.TempFolder("pretrain-config"), "config.json");
        File.WriteAllText(path, json);
        var ex = Assert.Throws<CoralModelException>(() => Coral.AI.Training.PretrainConfig.Load(path));
        Assert.Equal(field, ex.Field);
        Assert.Equal(path, ex.FilePath);
    }

    [Fact]
    public void Fields_AreRead_IncludingRmsNormEps()
    {
        string path = Path.Combine(ModelZoo.TempFolder("pretrain-config-ok"), "config.json");
        File.WriteAllText(path, """{"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 500000}""");
        var c = Coral.AI.Training.PretrainConfig.Load(path);
        Assert.Equal((96, 6, 2, 1e-6, 500000.0), (c.HiddenSize, c.Heads, c.KvHeads, c.RmsNormEps, c.RopeTheta));
    }
}

using Coral.AI.Training;
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
            "--steps", "160", "--lr", "0.01", "--max-length", "64", "--sft", chat, "--sft-steps", "60", "--sft-lr", "0.001", "--batch", "2"], new StringWriter(), stderr, TextReader.Null);
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

    [Fact]
    public async Task Init_ContinuesFromTheSavedWeights_ConvertsToBf16_AndLeavesNoTempFolders()
    {
        string tokenizer = TransformerModelTests.ModelFor("qwen2");
        string folder = ModelZoo.TempFolder("pretrain-init");
        string text = Path.Combine(folder, "corpus.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("a red fox ran past the old barn. ", 60)));
        string config = Path.Combine(folder, "config.json");
        File.WriteAllText(config, """{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128}""");
        var temps = TempFolders();
        string first = Path.Combine(folder, "first"), second = Path.Combine(folder, "second"), bf16 = Path.Combine(folder, "bf16");

        async Task<string> Pretrain(params string[] args)
        {
            var stderr = new StringWriter();
            int code = await Coral.Cli.CliApp.RunAsync(["pretrain", "--tokenizer", tokenizer, "--data", text, "--max-length", "32", "--batch", "2", .. args],
                new StringWriter(), stderr, TextReader.Null);
            Assert.True(code == 0, stderr.ToString());
            return stderr.ToString();
        }

        static List<double> Losses(string model) => File.ReadLines(Path.Combine(model, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!["loss"]!.GetValue<double>()).ToList();

        await Pretrain("--config", config, "--out", first, "--steps", "60", "--lr", "0.01");
        // Continue: no --config (the shape comes from the --init model), a small LR; the curve goes on where it stopped.
        string choice = await Pretrain("--init", first, "--out", second, "--steps", "5", "--lr", "0.0005", "--matmul", "auto");
        Assert.Contains(MatmulPrecision.HasAmxBf16() ? "--matmul auto: bf16 GEMMs" : "--matmul auto: f32 GEMMs", choice);
        List<double> before = Losses(first), after = Losses(second);
        string lossPng = Path.Combine(folder, "loss.png");
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["plot", "--pretrain", Path.Combine(first, "metrics.jsonl"), "--out", lossPng], new StringWriter(), new StringWriter(), TextReader.Null));
        Assert.Equal((900, 480), DraftCheckpointTests.PngSize(lossPng));
        Assert.True(after[0] < 0.5 * before.Take(5).Average(), $"continued at {after[0]:F2}; the first run started at {before.Take(5).Average():F2}");
        Assert.True(after[0] < 1.5 * before.TakeLast(5).Average(), $"continued at {after[0]:F2}; the first run ended at {before.TakeLast(5).Average():F2}");

        // Convert: --steps 0 --bf16 writes the same weights rounded to bf16.
        await Pretrain("--init", first, "--out", bf16, "--steps", "0", "--bf16");
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(bf16, "config.json")))!["torch_dtype"]!.GetValue<string>());
        using var f32Weights = new CheckpointReader(first);
        using var bf16Weights = new CheckpointReader(bf16);
        Assert.Equal(f32Weights.Names.Order(), bf16Weights.Names.Order());
        foreach (string name in f32Weights.Names)
        {
            long[] shape = f32Weights.ShapeOf(name);   // (no DisposeScope here: the readers map their files lazily)
            using Tensor f32 = f32Weights.Take(name, shape, ScalarType.Float32);
            using Tensor rounded = f32.to(ScalarType.BFloat16);
            using Tensor saved = bf16Weights.Take(name, shape, ScalarType.BFloat16);
            Assert.True(rounded.eq(saved).all().item<bool>(), name);
        }

        Assert.Empty(TempFolders().Except(temps));   // the ChatML re-render's temporary tokenizer folder is removed
    }

    [Fact]
    public async Task ExportBlocks_WritesThePackedBlocksAndMasks_AndTheModelFolderWithoutWeights()
    {
        // What eng/gpu/train-target.py trains on: the C# pipeline's tokens, ChatML rendering, loss masks and packing.
        string tokenizer = TransformerModelTests.ModelFor("qwen2");
        string folder = ModelZoo.TempFolder("pretrain-export");
        string text = Path.Combine(folder, "corpus.txt"), chat = Path.Combine(folder, "chat.jsonl");
        File.WriteAllText(text, string.Concat(Enumerable.Range(0, 30).Select(i => $"line {i}: the cat sat on the mat. ")));
        File.WriteAllLines(chat, Enumerable.Range(0, 6).Select(i => new JsonObject
        {
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = $"where did cat {i} sit?" }, new JsonObject { ["role"] = "assistant", ["content"] = "on the mat." }),
        }.ToJsonString()));
        string export = Path.Combine(folder, "blocks"), output = Path.Combine(folder, "unused");
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["pretrain", "--tokenizer", tokenizer, "--data", text, "--sft", chat, "--max-length", "32",
            "--out", output, "--export-blocks", export], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());

        HfTokenizer tok = HfTokenizer.Load(tokenizer);
        (int[][] Ids, byte[][] Mask) Read(string phase)
        {
            using var file = SafetensorsFile.Open(Path.Combine(export, $"{phase}-blocks.safetensors"));
            Assert.Equal(ScalarType.Int32, file.Entries["ids"].DType);
            Assert.Equal(ScalarType.Byte, file.Entries["mask"].DType);
            using Tensor ids = file.Get("ids"), mask = file.Get("mask");
            Assert.Equal(ids.shape, mask.shape);
            Assert.Equal(33, ids.shape[1]);   // L + 1: consecutive blocks overlap by one token
            int[] flat = ids.data<int>().ToArray();
            byte[] flags = mask.data<byte>().ToArray();
            return (flat.Chunk(33).ToArray(), flags.Chunk(33).ToArray());
        }

        // Text: every token is a target, and the blocks chain into the corpus (shuffled by line, none lost mid-block).
        var (textIds, textMask) = Read("pretrain");
        Assert.All(textMask, m => Assert.All(m, v => Assert.Equal(1, v)));
        for (int b = 1; b < textIds.Length; b++)
        {
            Assert.Equal(textIds[b - 1][^1], textIds[b][0]);
        }

        Assert.Contains("the cat sat on the mat.", tok.Decode(textIds.SelectMany((b, i) => i == 0 ? b : b[1..]).ToArray()));

        // Chats: loss only on the assistant's tokens (its answer and the closing <|im_end|>), never on the user's.
        var (chatIds, chatMask) = Read("sft");
        string targets = tok.Decode(chatIds.Zip(chatMask).SelectMany(p => p.First.Where((_, j) => p.Second[j] == 1)).ToArray());
        Assert.Contains("on the mat.", targets);
        Assert.DoesNotContain("where did", targets);
        Assert.Contains("where did cat", tok.Decode(chatIds.SelectMany(b => b).ToArray()));

        string model = Path.Combine(export, "model");
        Assert.True(File.Exists(Path.Combine(model, "config.json")) && File.Exists(Path.Combine(model, "tokenizer.json")));
        Assert.Contains("<|im_start|>", JsonNode.Parse(File.ReadAllText(Path.Combine(model, "tokenizer_config.json")))!["chat_template"]!.GetValue<string>());
        Assert.False(File.Exists(Path.Combine(model, "model.safetensors")));   // no weights: the trainer elsewhere starts from its own init
        Assert.False(File.Exists(Path.Combine(output, "metrics.jsonl")));      // and nothing was trained here
    }

    private static HashSet<string> TempFolders() =>
        Directory.EnumerateDirectories(Path.GetTempPath(), "coral-pretrain-*").Concat(Directory.EnumerateDirectories(Path.GetTempPath(), "coral-gpt2-tokenizer-*")).ToHashSet();
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

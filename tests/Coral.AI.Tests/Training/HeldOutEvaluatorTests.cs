using System.Text.Json.Nodes;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class HeldOutEvaluatorTests
{
    private static async Task<string> RandomModel(string name)
    {
        string folder = ModelZoo.TempFolder(name);
        string config = Path.Combine(folder, "config.json");
        File.WriteAllText(config, """{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128}""");
        string model = Path.Combine(folder, "model");
        var stderr = new StringWriter();
        // --steps 0 without --init: the trainer's random initialisation, written as an f32 HF folder.
        int code = await Coral.Cli.CliApp.RunAsync(["pretrain", "--tokenizer", TransformerModelTests.ModelFor("qwen2"), "--config", config, "--out", model, "--steps", "0", "--seed", "5"],
            new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        return model;
    }

    [Fact]
    public async Task Score_EqualsTheTrainersMaskedCrossEntropy_AndItsTop1()
    {
        // Two independent paths over the same weights: the inference engine (KV cache, CPU kernels, prefill in chunks)
        // and the trainer's batched forward with its chunked cross-entropy.
        string folder = await RandomModel("eval-agree");
        using var trainer = new TrainableLlama(PretrainConfig.Load(Path.Combine(folder, "config.json")), HfTokenizer.Load(folder).VocabSize, seed: 0);
        trainer.LoadWeights(folder);
        using var engine = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 128);

        var random = new Random(3);
        int[] ids = Enumerable.Range(0, 40).Select(_ => random.Next(engine.Model.Config.VocabSize)).ToArray();
        byte[] mask = ids.Select((_, i) => (byte)(i % 3 == 0 || i > 30 ? 1 : 0)).ToArray();
        EvaluationScore score = HeldOutEvaluator.Score(engine, new TrainingExample(ids, mask));
        Assert.Equal(mask.Skip(1).Count(m => m == 1), score.Tokens);   // position 0 has no prediction

        using var scope = torch.NewDisposeScope();
        (double loss, _) = trainer.Loss(torch.tensor(ids.Select(x => (long)x).ToArray()).unsqueeze(0), torch.tensor(mask).unsqueeze(0));
        Assert.Equal(loss, score.MeanLoss, 4);
        Assert.InRange(score.MeanLoss, Math.Log(engine.Model.Config.VocabSize) - 1, Math.Log(engine.Model.Config.VocabSize) + 1);   // random weights

        // The bf16 training forward (fused projections, bf16 activations between them, f32 residual and loss) stays close.
        trainer.Bf16Matmuls = true;
        (double loss16, _) = trainer.Loss(torch.tensor(ids.Select(x => (long)x).ToArray()).unsqueeze(0), torch.tensor(mask).unsqueeze(0));
        trainer.Bf16Matmuls = false;
        Assert.Equal(loss, loss16, 2);

        Tensor predicted = trainer.Logits(ids.Select(x => (long)x).ToArray()).argmax(-1);
        long hits = Enumerable.Range(1, ids.Length - 1).Count(t => mask[t] == 1 && predicted[t - 1].item<long>() == ids[t]);
        Assert.Equal(hits, score.Hits);

        // A sequence with nothing to score adds nothing.
        Assert.Equal(default, HeldOutEvaluator.Score(engine, new TrainingExample(ids, new byte[ids.Length])));
    }

    [Fact]
    public async Task EvalCommand_ScoresAssistantTokensPerKind_AndRejectsBadInput()
    {
        string folder = await RandomModel("eval-cli");
        string data = Path.Combine(Path.GetDirectoryName(folder)!, "heldout.jsonl");
        JsonObject Chat(string kind, string q, string a) => new()
        {
            ["kind"] = kind,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = q }, new JsonObject { ["role"] = "assistant", ["content"] = a }),
        };
        File.WriteAllLines(data, new[]
        {
            Chat("definition", "Define cat.", "A small domesticated feline."),
            Chat("faq", "How do I sort a list?", "Call sort on it."),
            Chat("definition", "Define dog.", "A domesticated canine."),
        }.Select(o => o.ToJsonString()));

        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", data, "--json"], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        JsonNode report = JsonNode.Parse(stdout.ToString())!;
        Assert.Equal(3, report["sequences"]!.GetValue<int>());
        JsonNode scores = report["scores"]!;
        long Tokens(string kind) => scores[kind]!["tokens"]!.GetValue<long>();

        // Exactly the assistant's tokens (its answer and the closing <|im_end|>), per kind and in all.
        HfTokenizer tokenizer = HfTokenizer.Load(folder);
        long expected = TrainingDataReader.Read(data, tokenizer, 512).Sum(e => e.LossMask.Skip(1).Count(m => m == 1));
        Assert.Equal(expected, Tokens("all"));
        Assert.Equal(Tokens("all"), Tokens("definition") + Tokens("faq"));
        Assert.True(Tokens("faq") >= tokenizer.Encode("Call sort on it.", addSpecialTokens: false).Count);
        double all = scores["all"]!["loss"]!.GetValue<double>();
        double byKind = (scores["definition"]!["loss"]!.GetValue<double>() * Tokens("definition") + scores["faq"]!["loss"]!.GetValue<double>() * Tokens("faq")) / Tokens("all");
        Assert.Equal(all, byKind, 6);
        Assert.Equal(Math.Exp(all), scores["all"]!["perplexity"]!.GetValue<double>(), 6);

        // --limit reads only the first sequences; the table form names the kinds.
        stdout = new StringWriter();
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", data, "--limit", "1"], stdout, new StringWriter(), TextReader.Null));
        Assert.Contains("1 sequences", stdout.ToString());
        Assert.Contains("definition", stdout.ToString());
        Assert.DoesNotContain("faq", stdout.ToString());
        stdout = new StringWriter();
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", data, "--per-kind", "1", "--json"], stdout, new StringWriter(), TextReader.Null));
        report = JsonNode.Parse(stdout.ToString())!;
        Assert.Equal(2, report["sequences"]!.GetValue<int>());   // the first definition and the faq; the second definition skipped
        Assert.Equal(Tokens("faq"), report["scores"]!["faq"]!["tokens"]!.GetValue<long>());
        Assert.True(report["scores"]!["definition"]!["tokens"]!.GetValue<long>() < Tokens("definition"));

        // A missing file and a missing model are errors that name what is wrong.
        stderr = new StringWriter();
        Assert.Equal(1, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", data + ".missing"], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--data", stderr.ToString());
        stderr = new StringWriter();
        Assert.Equal(1, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder + "-missing", "--data", data], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--model", stderr.ToString());
        stderr = new StringWriter();
        Assert.Equal(1, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", data, "--dtype", "float8"], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--dtype", stderr.ToString());
        Assert.DoesNotContain("CoralChatClientOptions", stderr.ToString());

        // Nothing to score (a chat without an assistant turn) is an error naming the file, not a NaN.
        string userOnly = Path.Combine(Path.GetDirectoryName(folder)!, "user-only.jsonl");
        File.WriteAllText(userOnly, new JsonObject { ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hello" }) }.ToJsonString());
        stderr = new StringWriter();
        Assert.Equal(1, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", userOnly, "--json"], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("user-only.jsonl", stderr.ToString());
        Assert.Contains("no tokens to score", stderr.ToString());

        // A kind named "all" is counted once.
        string named = Path.Combine(Path.GetDirectoryName(folder)!, "named-all.jsonl");
        File.WriteAllText(named, Chat("all", "Define cat.", "A small domesticated feline.").ToJsonString());
        stdout = new StringWriter();
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["eval", "--model", folder, "--data", named, "--json"], stdout, new StringWriter(), TextReader.Null));
        Assert.Equal(TrainingDataReader.Read(named, tokenizer, 512).Sum(e => e.LossMask.Skip(1).Count(m => m == 1)),
            JsonNode.Parse(stdout.ToString())!["scores"]!["all"]!["tokens"]!.GetValue<long>());
    }
}

using Coral.AI;
using Coral.AI.Training;

namespace Coral.Cli;

/// <summary>
/// <c>coral pretrain</c>: a Llama from scratch on text (then optional SFT on chat JSONL), written as a standard HF folder
/// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a ChatML template, generation_config.json).
/// </summary>
internal static class PretrainCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string> { "--config", "--data", "--tokenizer", "--out", "--steps", "--lr", "--seed", "--max-length", "--sft", "--sft-steps", "--sft-lr" },
            new HashSet<string> { "--bf16" });
        string tokenizerFolder = cl.Required("--tokenizer"), output = cl.Required("--out");
        if (!File.Exists(Path.Combine(tokenizerFolder, "tokenizer.json")))
        {
            throw new ArgumentException($"--tokenizer '{tokenizerFolder}' has no tokenizer.json.");
        }

        PretrainConfig config = cl.Value("--config") is string c ? PretrainConfig.Load(c) : new PretrainConfig();
        HfTokenizer tokenizer = HfTokenizer.Load(tokenizerFolder);
        int maxLength = cl.Int("--max-length") ?? 256;
        int seed = (int)(cl.Long("--seed") ?? 0);
        var text = TrainingDataReader.Read(cl.Required("--data"), tokenizer, maxLength).ToList();
        using var model = new TrainableLlama(config, tokenizer.VocabSize, seed);
        Directory.CreateDirectory(output);
        string metrics = Path.Combine(output, "metrics.jsonl");
        File.Delete(metrics);
        Pretrainer.Train(model, text, cl.Int("--steps") ?? 1000, cl.Float("--lr") ?? 1e-3, seed, metrics, stderr);
        if (cl.Value("--sft") is string sft)
        {
            // The chat template must be in place before chat data is rendered.
            var withTemplate = tokenizer.Config with { ChatTemplate = Pretrainer.ChatMlTemplate };
            var chat = TrainingDataReader.Read(sft, WithConfig(tokenizerFolder, withTemplate), maxLength).ToList();
            Pretrainer.Train(model, chat, cl.Int("--sft-steps") ?? 300, cl.Float("--sft-lr") ?? 3e-4, seed + 1, metrics, stderr, "sft");
        }

        int eos = tokenizer.TryGetId("<|im_end|>", out int imEnd) ? imEnd : tokenizer.EosTokenId ?? 0;
        int bos = tokenizer.BosTokenId ?? eos;
        model.Save(output, tokenizerFolder, bos, eos, Pretrainer.ChatMlTemplate, cl.Flag("--bf16"));
        stderr.WriteLine($"wrote {output}");
        return 0;
    }

    private static HfTokenizer WithConfig(string folder, TokenizerConfig config)
    {
        string temp = Path.Combine(Path.GetTempPath(), "coral-pretrain-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(temp);
        File.Copy(Path.Combine(folder, "tokenizer.json"), Path.Combine(temp, "tokenizer.json"));
        File.WriteAllText(Path.Combine(temp, "tokenizer_config.json"), new System.Text.Json.Nodes.JsonObject
        {
            ["chat_template"] = config.ChatTemplate,
            ["bos_token"] = config.BosToken,
            ["eos_token"] = config.EosToken,
        }.ToJsonString());
        return HfTokenizer.Load(temp);
    }
}

using System.Globalization;
using Coral.AI;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.Cli;

/// <summary>
/// <c>coral pretrain</c>: a Llama from scratch on text (then optional SFT on chat JSONL), written as a standard HF folder
/// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a ChatML template, generation_config.json).
/// With <c>--export-blocks DIR</c> it trains nothing: it writes the packed training blocks (the same tokenization,
/// chat rendering, loss masks, shuffling and packing as training) and the model folder without weights, for a trainer
/// elsewhere (<c>eng/gpu/train-target.py</c>: PyTorch and transformers on a GPU machine).
/// </summary>
internal static class PretrainCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string>
            {
                "--config", "--data", "--tokenizer", "--out", "--steps", "--lr", "--seed", "--max-length", "--batch", "--accumulate", "--minutes",
                "--save-every", "--init", "--matmul", "--sft", "--sft-steps", "--sft-lr", "--sft-minutes", "--export-blocks",
            },
            new HashSet<string> { "--bf16" });
        NativeHeap.KeepFreedMemory();   // large tensors freed every step stay mapped for the next one
        // --export-blocks trains nothing and writes no model folder: --out is not needed then.
        string tokenizerFolder = cl.Required("--tokenizer");
        string? output = cl.Value("--export-blocks") is null ? cl.Required("--out") : null;
        if (tokenizerFolder == "gpt2")
        {
            // The demo tokenizer: GPT-2's byte-level BPE + ChatML tokens, generated from Microsoft.ML.Tokenizers' data
            // into a temporary folder that lives as long as the run (the written model copies it).
            string generated = Path.Combine(Path.GetTempPath(), "coral-gpt2-tokenizer-" + Guid.NewGuid().ToString("N"));
            try
            {
                ByteLevelTokenizer.WriteGpt2ChatTokenizer(generated);
                return Train(cl, generated, output, stderr);
            }
            finally
            {
                Directory.Delete(generated, recursive: true);
            }
        }

        if (!File.Exists(Path.Combine(tokenizerFolder, "tokenizer.json")))
        {
            throw new ArgumentException($"--tokenizer '{tokenizerFolder}' has no tokenizer.json (or pass --tokenizer gpt2).");
        }

        return Train(cl, tokenizerFolder, output, stderr);
    }

    private static int Train(CommandLine cl, string tokenizerFolder, string? output, TextWriter stderr)
    {
        bool bf16Matmuls = Bf16Matmuls(cl, stderr);

        // The shape: --config, else the --init model's own config.json (continue/convert), else the defaults.
        PretrainConfig config = cl.Value("--config") is string c ? PretrainConfig.Load(c)
            : cl.Value("--init") is string from ? PretrainConfig.Load(Path.Combine(from, "config.json"))
            : new PretrainConfig();
        HfTokenizer tokenizer = HfTokenizer.Load(tokenizerFolder);
        // Chat lines in either phase are rendered with the template the written model will carry.
        HfTokenizer chatTokenizer = WithConfig(tokenizerFolder, tokenizer.Config with { ChatTemplate = ByteLevelTokenizer.ChatMlTemplate });
        int maxLength = cl.Int("--max-length") ?? 256;
        int seed = (int)(cl.Long("--seed") ?? 0);
        int eos = tokenizer.TryGetId("<|im_end|>", out int imEnd) ? imEnd : tokenizer.EosTokenId ?? 0;
        int bos = tokenizer.BosTokenId ?? eos;
        using var model = new TrainableLlama(config, tokenizer.VocabSize, seed) { Bf16Matmuls = bf16Matmuls };
        if (cl.Value("--init") is string init)
        {
            model.LoadWeights(init);
        }

        if (output is null)
        {
            ExportBlocks(cl.Required("--export-blocks"), model, tokenizerFolder, bos, eos, seed, maxLength,
                [("pretrain", cl.Value("--data"), seed), ("sft", cl.Value("--sft"), seed + 1)], chatTokenizer, stderr);
            return 0;
        }

        Directory.CreateDirectory(output);
        string metrics = Path.Combine(output, "metrics.jsonl");
        if (cl.Value("--init") is null)
        {
            File.Delete(metrics);
        }

        void Save(int step)
        {
            model.Save(output, tokenizerFolder, bos, eos, ByteLevelTokenizer.ChatMlTemplate, cl.Flag("--bf16"));
            stderr.WriteLine($"saved {output} at step {step}");
        }

        var common = new PretrainOptions
        {
            BlockLength = maxLength, BatchSize = cl.Int("--batch") ?? 8, Accumulate = cl.Int("--accumulate") ?? 1,
            Save = Save, SaveEvery = cl.Int("--save-every") ?? 500,
        };
        if ((cl.Int("--steps") ?? 1000) > 0)
        {
            var data = TrainingDataReader.Read(cl.Required("--data"), chatTokenizer, maxLength).ToList();
            Pretrainer.Train(model, data, common with
            {
                Steps = cl.Int("--steps") ?? 1000, LearningRate = cl.Float("--lr") ?? 1e-3, Seed = seed,
                Budget = cl.Float("--minutes") is float m ? TimeSpan.FromMinutes(m) : null,
            }, metrics, stderr);
        }

        if (cl.Value("--sft") is string sft)
        {
            var chat = TrainingDataReader.Read(sft, chatTokenizer, maxLength).ToList();
            Pretrainer.Train(model, chat, common with
            {
                Steps = cl.Int("--sft-steps") ?? 300, LearningRate = cl.Float("--sft-lr") ?? 3e-4, Seed = seed + 1, Phase = "sft",
                Budget = cl.Float("--sft-minutes") is float m ? TimeSpan.FromMinutes(m) : null,
            }, metrics, stderr);
        }

        if ((cl.Int("--steps") ?? 1000) <= 0 && cl.Value("--sft") is null)
        {
            Save(0);   // --init + --steps 0: a conversion (e.g. to bf16 with --bf16)
        }

        stderr.WriteLine($"wrote {output}");
        return 0;
    }

    /// <summary>
    /// Writes <c>{phase}-blocks.safetensors</c> (<c>ids</c> I32 and <c>mask</c> U8, both [blocks, L + 1]; loss on token j
    /// of a block where mask[j] = 1, predicted from tokens 0..j−1) for each phase with data, and <c>model/</c>: the model
    /// folder (config, generation config, tokenizer files with the ChatML template) without its weights.
    /// </summary>
    private static void ExportBlocks(string folder, TrainableLlama model, string tokenizerFolder, int bos, int eos, int seed, int maxLength,
        (string Phase, string? Data, int Seed)[] phases, HfTokenizer chatTokenizer, TextWriter stderr)
    {
        if (phases.All(p => p.Data is null))
        {
            throw new UsageException("--export-blocks needs --data and/or --sft.");
        }

        Directory.CreateDirectory(folder);
        foreach (var (phase, data, phaseSeed) in phases)
        {
            if (data is null)
            {
                continue;
            }

            var examples = TrainingDataReader.Read(data, chatTokenizer, maxLength).ToList();
            (Tensor ids, Tensor mask) = Pretrainer.Pack(examples, maxLength, phaseSeed);
            using (ids)
            using (mask)
            using (Tensor ids32 = ids.to(ScalarType.Int32))
            {
                string path = Path.Combine(folder, $"{phase}-blocks.safetensors");
                SafetensorsWriter.Write(path, [new("ids", ids32), new("mask", mask)], new Dictionary<string, string>
                {
                    ["source"] = Path.GetFileName(data), ["sequences"] = examples.Count.ToString(CultureInfo.InvariantCulture),
                    ["seed"] = phaseSeed.ToString(CultureInfo.InvariantCulture),
                });
                stderr.WriteLine($"[{phase}] {examples.Count} sequences -> {ids.shape[0]} blocks of {ids.shape[1] - 1} tokens: {path}");
            }
        }

        string modelFolder = Path.Combine(folder, "model");
        model.Save(modelFolder, tokenizerFolder, bos, eos, ByteLevelTokenizer.ChatMlTemplate, bf16: true);
        File.Delete(Path.Combine(modelFolder, "model.safetensors"));   // the trainer elsewhere starts from its own init
        stderr.WriteLine($"wrote {modelFolder} (config and tokenizer, no weights)");
    }

    /// <summary><c>--matmul f32|bf16|auto</c> (default f32: exact, and what the tests compare with the inference
    /// forward); auto picks bf16 GEMMs only where the CPU has AMX (<see cref="MatmulPrecision"/>). Shared with
    /// <c>train-draft</c>.</summary>
    internal static bool Bf16Matmuls(CommandLine cl, TextWriter stderr)
    {
        string choice = cl.Value("--matmul") ?? "f32";
        bool bf16;
        try
        {
            bf16 = MatmulPrecision.UseBf16(choice);
        }
        catch (ArgumentException ex)
        {
            throw new UsageException(ex.Message);
        }

        if (choice == "auto")
        {
            stderr.WriteLine(bf16 ? "--matmul auto: bf16 GEMMs (the CPU has AMX)" : "--matmul auto: f32 GEMMs (no AMX: bf16 GEMMs would be slower here)");
        }

        return bf16;
    }

    private static HfTokenizer WithConfig(string folder, TokenizerConfig config)
    {
        string temp = Path.Combine(Path.GetTempPath(), "coral-pretrain-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(temp);
        File.Copy(Path.Combine(folder, "tokenizer.json"), Path.Combine(temp, "tokenizer.json"));
        try
        {
            File.WriteAllText(Path.Combine(temp, "tokenizer_config.json"), new System.Text.Json.Nodes.JsonObject
            {
                ["chat_template"] = config.ChatTemplate,
                ["bos_token"] = config.BosToken,
                ["eos_token"] = config.EosToken,
            }.ToJsonString());
            return HfTokenizer.Load(temp);   // reads both files whole
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }
}

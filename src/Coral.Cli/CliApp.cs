using Coral.AI;

namespace Coral.Cli;

/// <summary>The <c>coral</c> tool: verbs dispatch to one class each.</summary>
internal static class CliApp
{
    public const string Usage = """
        coral — local LLM inference with CORAL speculative decoding

        usage:
          coral generate --model <hf-dir> [--draft <draft-dir>] --prompt <text> [--chat] [--system <text>]
                         [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
                         [--stop <text>]... [--device cpu|cuda|cuda:N] [--dtype float32|bfloat16|float16] [--json]
          coral chat     --model <hf-dir> [--draft <draft-dir>] [--system <text>] [--temperature T] [--max-new-tokens N] [--device D] [--dtype T]
          coral embed    --model <hf-dir> [--text <text>]... [--dimensions N] [--pooling last|mean] [--no-normalize]
                         (no --text: one text per line of stdin; one JSON object per text)
          coral export-gguf --model <hf-dir> --out <file.gguf> [--type f32|f16|bf16|q8_0|q4_0]
          coral template --template <file.jinja> --context <context.json> [--now 2024-07-26T00:00:00]
          coral extract-features --target <hf-dir> --data <file.jsonl|file.txt> --out <dir> [--max-length N] [--shard-size N] [--limit N]
                         [--regenerate [--regenerate-temperature T] [--regenerate-max-tokens N]]
          coral train-draft --target <hf-dir> --data <features-dir|file.jsonl|file.txt> --out <dir> [--method eagle|hass|coral]
                         [--init <draft-dir>] [--steps N] [--lr LR] [--seed S] [--max-length N] [--align-steps N]
                         [--topk-weight W] [--csra-weight W] [--csra-tau T] [--csra-variant supcon|consecutive|teacher]
                         [--checkpoint-every N] [--held-out FRACTION] [--matmul f32|bf16|auto] [--pack TOKENS] [--format eagle] [--bf16]
                         (resumes from <out>/checkpoint)
          coral train-router --target <hf-dir> --draft <draft-dir> --data <features-dir|file.jsonl> [--groups G] [--topk K]
                         [--hidden R] [--grouping kmeans|frequency|contiguous] [--steps N] [--depths N] [--labels target|drafter]
          coral draft-inspect <draft-dir>
          coral info     --model <hf-dir>   (what the loader reads: architecture, layer kinds, weights, tokenizer, template)
          coral info     (no model: this machine — processor, instruction sets, CPU paths, the f32 GEMM's row blocks, CUDA)
          coral pretrain --tokenizer <dir-with-tokenizer.json|gpt2> --data <text|jsonl> --out <dir> [--config <json>] [--steps N]
                         [--lr LR] [--max-length N] [--batch B] [--accumulate A] [--minutes M] [--matmul f32|bf16|auto]
                         [--save-every N] [--init <hf-dir>] [--sft <chat.jsonl> [--sft-steps N] [--sft-lr LR] [--sft-minutes M]] [--bf16]
                         or: --tokenizer … --data … [--sft …] --export-blocks <dir>   (no training, no --out: the packed
                         blocks and masks for eng/gpu/train-target.py)
          coral draft-init --target <hf-dir> --out <dir> [--seed S] [--fc-bias] [--bf16] [--router-groups G --router-topk K [--shuffle-groups]]
          coral bench    --model <hf-dir> --draft <draft-dir> --prompts <file.jsonl> [--temperature T] [--max-new-tokens N]
                         [--rounds R] [--warmup N] [--fixed-depth] [--no-plain-fallback] [--device D] [--dtype T] [--json]
                         (no --model: the demo pair; --model without --draft: prompt lookup alone against plain decoding;
                         --warmup: prompts run once each way first, not measured, default 8;
                         --parallel N: every prompt arrives at once, served one after another (plain, and with the engine's
                         defaults) and together through continuous batching over N slots: tokens/s, time to answer, and
                         whether the batched answers equal the plain ones)
          coral eval     --model <hf-dir> --data <file.jsonl|file.txt> [--max-length N] [--limit N] [--per-kind N] [--device D] [--dtype T] [--quantize q8_0|q4_0] [--json]
                         (held-out loss, perplexity and top-1 accuracy, per "kind"; no --model: the demo target)
          coral plot     --bench label=bench.json[,label=bench.json...] --out <dir> [--title T]
          coral plot     --pretrain <metrics.jsonl> --out <file.png> [--title T]
          coral plot     --sweep label=bench.json[,label=bench.json...] --out <file.png> [--title T]
          coral plot     --tree-cost label=bench.json[,label=bench.json...] --out <file.png> [--title T]   (verify cost by tree size, a series per run)

        generate, chat and bench also take the tree: [--tree-tokens N] (fixed; default auto-tuned) [--tree-depth D] [--tree-topk K]
        [--router-topk K] (groups per draft step; 0 = the full LM head) and [--prompt-lookup N] (tokens of a prompt-lookup
        proposal, the sequence's own continuation of its last 1-3 tokens, verified without a draft forward; 0 = off, default 3).
        Every command that loads a model takes [--quantize q8_0|q4_0]: the decoder's projections quantized at load to
        llama.cpp's Q8_0 (int8 with an f16 scale per 32 inputs: about half the memory, faster CPU decoding, accuracy kept)
        or Q4_0 (4-bit levels: a third of the memory, faster still, at a visible cost in accuracy); and [--kv-cache f32|bf16]:
        bf16 keys and values take half the KV cache's memory (CPU kernels, or a GPU).
        bench takes [--parallel N] (1-64; CoralChatClientOptions.ParallelRequests for servers: N requests decode together).
        --model also takes a .gguf file (llama.cpp's, Ollama's): read in place, its tokenizer and chat template included;
        its quantized layers load as Q8_0 blocks, Q4_K ones kept as they are (Q8_0 and Q4_0 files as their own values),
        unless --quantize says otherwise;
        or ollama:<model>[:<tag>] for a model an Ollama installation has pulled (its store: $OLLAMA_MODELS or ~/.ollama/models).
        """;

    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            stdout.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }

        if (args.Skip(1).Contains("--help"))
        {
            stdout.WriteLine(Usage);   // `coral <verb> --help`
            return 0;
        }

        try
        {
            string[] rest = args[1..];
            return args[0] switch
            {
                "generate" => GenerateCommand.Run(rest, stdout, stderr),
                "embed" => await EmbedCommand.RunAsync(rest, stdout, stderr, stdin).ConfigureAwait(false),
                "chat" => await ChatCommand.RunAsync(rest, stdout, stderr, stdin).ConfigureAwait(false),
                "export-gguf" => ExportGgufCommand.Run(rest, stdout, stderr),
                "draft-init" => DraftInitCommand.Run(rest, stdout, stderr),
                "template" => TemplateCommand.Run(rest, stdout, stderr),
                "extract-features" => ExtractFeaturesCommand.Run(rest, stdout, stderr),
                "train-draft" => TrainDraftCommand.Run(rest, stdout, stderr),
                "train-router" => TrainRouterCommand.Run(rest, stdout, stderr),
                "draft-inspect" => DraftInspectCommand.Run(rest, stdout, stderr),
                "info" => InfoCommand.Run(rest, stdout, stderr),
                "pretrain" => PretrainCommand.Run(rest, stdout, stderr),
                "plot" => PlotCommand.Run(rest, stdout, stderr),
                "bench" => BenchCommand.Run(rest, stdout, stderr),
                "eval" => EvalCommand.Run(rest, stdout, stderr),
                _ => throw new UsageException($"Unknown command '{args[0]}'."),
            };
        }
        catch (UsageException ex)
        {
            stderr.WriteLine($"error: {ex.Message}");
            stderr.WriteLine(Usage);
            return 2;
        }
        catch (Exception ex) when (ex is CoralModelException or PromptTooLongException or ChatTemplateException or ArgumentException or InvalidOperationException or NotSupportedException or IOException)
        {
            stderr.WriteLine($"error: {ex.Message}");
            return 1;
        }
    }
}

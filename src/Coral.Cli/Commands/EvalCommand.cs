using System.Text.Json;
using System.Text.Json.Nodes;
using Coral.AI;
using Coral.AI.Training;

namespace Coral.Cli;

/// <summary>
/// <c>coral eval</c>: a model's next-token loss, perplexity and top-1 accuracy on held-out data (each sequence alone,
/// through the inference forward; chats score the assistant's tokens), overall and per JSONL <c>"kind"</c>.
/// </summary>
internal static class EvalCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--model", "--data", "--max-length", "--limit", "--per-kind", "--device", "--dtype", "--quantize" }, new HashSet<string> { "--json" });
        string data = cl.Required("--data");
        if (!File.Exists(data))
        {
            throw new ArgumentException($"--data '{data}' does not exist.");
        }

        int maxLength = cl.Int("--max-length") ?? 512;
        if (maxLength < 2)
        {
            throw new UsageException($"--max-length must be at least 2, not {maxLength}.");
        }

        string model = cl.Value("--model") ?? DemoModels.Locate()?.Target
            ?? throw new UsageException($"--model is required: the demo target (samples/models/{DemoModels.Target}) was not found here.");
        var options = new CoralChatClientOptions
        {
            ModelPath = model, Device = cl.Value("--device") ?? "cpu", DType = cl.Value("--dtype"), ContextLength = maxLength,
            Quantization = cl.Value("--quantize"),
        };
        ModelLoading.Check(options);

        using CoralModelHost host = CoralModelHost.Load(options);
        InferenceEngine engine = host.GetEngineAsync(CancellationToken.None).GetAwaiter().GetResult();
        EvaluationReport report = HeldOutEvaluator.Run(engine, data, maxLength, cl.Int("--limit"), cl.Int("--per-kind"), stderr);
        if (report.Scores[EvaluationReport.All].Tokens == 0)
        {
            throw new ArgumentException($"--data '{data}' has no tokens to score ({report.Sequences} sequences read; a chat scores only its assistant turns).");
        }

        var rows = report.Scores.OrderBy(k => k.Key == EvaluationReport.All ? "" : k.Key, StringComparer.Ordinal).ToList();
        if (cl.Flag("--json"))
        {
            var scores = new JsonObject();
            foreach ((string kind, EvaluationScore s) in rows)
            {
                scores[kind] = new JsonObject { ["tokens"] = s.Tokens, ["loss"] = s.MeanLoss, ["perplexity"] = s.Perplexity, ["accuracy"] = s.Accuracy };
            }

            stdout.WriteLine(new JsonObject { ["model"] = host.ModelId, ["data"] = Path.GetFileName(data), ["sequences"] = report.Sequences, ["scores"] = scores }
                .ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        stdout.WriteLine($"{host.ModelId} on {Path.GetFileName(data)}: {report.Sequences} sequences");
        stdout.WriteLine($"{"kind",-12} {"tokens",9} {"loss",7} {"ppl",9} {"top-1",6}");
        foreach ((string kind, EvaluationScore s) in rows)
        {
            stdout.WriteLine($"{kind,-12} {s.Tokens,9} {s.MeanLoss,7:F3} {s.Perplexity,9:F1} {s.Accuracy,6:F3}");
        }

        return 0;
    }
}

using System.Diagnostics;
using System.Text.Json;
using Coral.AI;
using Microsoft.Extensions.AI;

namespace Coral.Cli;

/// <summary><c>coral generate</c>: one prompt, one continuation; <c>--json</c> prints exactly one JSON object on stdout.</summary>
internal static class GenerateCommand
{
    private static readonly HashSet<string> ValueOptions =
        ModelLoading.With("--prompt", "--system", "--max-new-tokens", "--temperature", "--top-p", "--top-k", "--seed", "--stop");

    private static readonly HashSet<string> Flags = ["--chat", "--json"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, ValueOptions, Flags);
        string prompt = cl.Required("--prompt");
        using CoralModelHost host = ModelLoading.LoadHost(cl, stderr);
        InferenceEngine engine = host.GetEngineAsync(CancellationToken.None).GetAwaiter().GetResult();
        float temperature = cl.Float("--temperature") ?? 0.7f;
        var sampling = new SamplingParameters
        {
            Temperature = temperature,
            TopP = cl.Float("--top-p") ?? (cl.Value("--temperature") is null ? 0.95f : null),
            TopK = cl.Int("--top-k"),
            Seed = cl.Long("--seed"),
        };
        int maxNew = cl.Int("--max-new-tokens") ?? 256;
        if (maxNew < 1 || temperature < 0)
        {
            throw new UsageException("--max-new-tokens must be >= 1 and --temperature >= 0.");
        }

        GenerationRequest request;
        if (cl.Flag("--chat"))
        {
            var messages = new List<ChatMessage>();
            if (cl.Value("--system") is string system)
            {
                messages.Add(new ChatMessage(ChatRole.System, system));
            }

            messages.Add(new ChatMessage(ChatRole.User, prompt));
            request = ChatPromptFormatter.Render(engine.Tokenizer.Config, messages, null)
                .ToRequest(engine.Tokenizer, sampling, maxNew, cl.Values("--stop"));
        }
        else
        {
            if (cl.Value("--system") is not null)
            {
                throw new UsageException("--system needs --chat.");
            }

            request = new GenerationRequest(engine.Tokenizer.Encode(prompt, addSpecialTokens: true), sampling, maxNew, cl.Values("--stop"));
        }

        bool json = cl.Flag("--json");
        var clock = Stopwatch.StartNew();
        GenerationResult result = engine.Generate(request, json ? null : (_, text) =>
        {
            stdout.Write(text);
            stdout.Flush();
        }, CancellationToken.None);
        double elapsedMs = clock.Elapsed.TotalMilliseconds;
        double tokensPerSecond = result.TokenIds.Count / Math.Max(elapsedMs / 1000.0, 1e-9);
        string finish = result.Finish == GenerationFinish.Length ? "length" : "stop";
        if (json)
        {
            using var buffer = new MemoryStream();
            using var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
            w.WriteStartObject();
            w.WriteString("text", result.Text);
            w.WriteStartArray("token_ids");
            foreach (int id in result.TokenIds)
            {
                w.WriteNumberValue(id);
            }

            w.WriteEndArray();
            w.WriteNumber("prompt_token_count", result.PromptTokens);
            w.WriteNumber("completion_token_count", result.TokenIds.Count);
            w.WriteString("finish_reason", finish);
            w.WriteNumber("elapsed_ms", Math.Round(elapsedMs, 3));
            w.WriteNumber("tokens_per_second", Math.Round(tokensPerSecond, 3));
            if (result.Speculative is { } s)
            {
                w.WriteStartObject("speculative");
                w.WriteNumber("cycles", s.Cycles);
                w.WriteNumber("accepted_tokens", s.AcceptedTokens);
                w.WriteNumber("mean_accepted_length", s.MeanAcceptedLength);
                w.WriteNumber("draft_tokens", s.DraftTokens);
                w.WriteNumber("lookup_cycles", s.LookupCycles);
                w.WriteNumber("lookup_tokens_accepted", s.LookupAcceptedTokens);
                w.WriteNumber("plain_steps", s.PlainSteps);
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("speculative");
            }

            w.WriteEndObject();
            w.Flush();
            stdout.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
        }
        else
        {
            stdout.WriteLine();
            stderr.WriteLine($"[{result.TokenIds.Count} tokens, {finish}, prompt {result.PromptTokens} tokens, {elapsedMs:F0} ms, {tokensPerSecond:F1} tokens/s]");
        }

        return 0;
    }
}

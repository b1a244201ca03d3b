using System.Diagnostics;
using Coral.AI;
using Microsoft.Extensions.AI;

namespace Coral.Cli;

/// <summary><c>coral chat</c>: an interactive, streaming conversation through <see cref="CoralChatClient"/>.</summary>
internal static class ChatCommand
{
    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        var cl = new CommandLine(args, ModelLoading.With("--system", "--temperature", "--max-new-tokens", "--seed"), new HashSet<string>());
        using CoralModelHost host = ModelLoading.LoadHost(cl, stderr);
        using var client = new CoralChatClient(host);
        var history = new List<ChatMessage>();
        if (cl.Value("--system") is string system)
        {
            history.Add(new ChatMessage(ChatRole.System, system));
        }

        var options = new ChatOptions
        {
            Temperature = cl.Float("--temperature"),
            MaxOutputTokens = cl.Int("--max-new-tokens"),
            Seed = cl.Long("--seed"),
        };
        stderr.WriteLine("Type a message; /reset clears the conversation, /exit (or end of input) quits.");
        while (true)
        {
            stdout.Write("> ");
            stdout.Flush();
            string? line = await stdin.ReadLineAsync().ConfigureAwait(false);
            if (line is null || line.Trim() == "/exit")
            {
                return 0;
            }

            if (line.Trim() == "/reset")
            {
                history.RemoveAll(m => m.Role != ChatRole.System);
                continue;
            }

            if (line.Trim().Length == 0)
            {
                continue;
            }

            history.Add(new ChatMessage(ChatRole.User, line));
            var clock = Stopwatch.StartNew();
            var updates = new List<ChatResponseUpdate>();
            await foreach (ChatResponseUpdate update in client.GetStreamingResponseAsync(history, options).ConfigureAwait(false))
            {
                stdout.Write(update.Text);
                stdout.Flush();
                updates.Add(update);
            }

            ChatResponse response = updates.ToChatResponse();
            history.AddMessages(response);
            stdout.WriteLine();
            stderr.WriteLine(Stats(response, clock.Elapsed));
        }
    }

    internal static string Stats(ChatResponse response, TimeSpan elapsed)
    {
        UsageDetails? u = response.Usage;
        long output = u?.OutputTokenCount ?? 0;
        long decodeNs = u?.AdditionalCounts?.GetValueOrDefault("eval_duration_ns") ?? 0;
        double tps = decodeNs > 0 ? output / (decodeNs / 1e9) : output / Math.Max(elapsed.TotalSeconds, 1e-9);
        var counts = u?.AdditionalCounts;
        string tau = counts?.TryGetValue("mean_accepted_length_x1000", out long t) != true ? string.Empty
            : counts.GetValueOrDefault("speculative_cycles") > 0 ? $", τ {t / 1000.0:F2}"
            : counts.GetValueOrDefault("drafter_used") == 0 ? ", plain steps (the drafter sat out: it measured slower than plain steps)"
            : ", plain steps (no cycle paid)";
        return $"[{output} tokens, {tps:F1} tokens/s{tau}, finish {response.FinishReason}]";
    }
}

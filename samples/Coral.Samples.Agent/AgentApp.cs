using Coral.AI;
using Microsoft.Agents.AI;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;

namespace Coral.Samples.Agent;

/// <summary>
/// A dictionary agent: an Agent Framework <see cref="ChatClientAgent"/> over Coral whose tool is a Semantic Kernel plugin.
/// <c>--prompt "..."</c> answers once and reports the plugin calls; without it, an interactive loop.
/// </summary>
public static class AgentApp
{
    /// <summary>Runs the sample.</summary>
    /// <param name="args"><c>--model &lt;dir&gt;</c> (or Coral__ModelPath), <c>[--draft &lt;dir&gt;]</c>, <c>[--prompt &lt;text&gt;]</c>, <c>[--force-tool]</c>, <c>[--max-tokens N]</c>.</param>
    /// <param name="stdout">Where answers go.</param>
    /// <param name="stdin">Where interactive input comes from.</param>
    /// <returns>The exit code.</returns>
    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextReader stdin)
    {
        string? Arg(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();
        string? model = Arg("--model") ?? Environment.GetEnvironmentVariable("Coral__ModelPath");
        if (model is null)
        {
            await stdout.WriteLineAsync("usage: --model <hf-dir> [--draft <dir>] [--prompt <text>] [--force-tool] [--max-tokens N]");
            return 2;
        }

        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = model, DraftModelPath = Arg("--draft") });
        using var coral = new CoralChatClient(host);
        var plugin = new DictionaryPlugin();
        var kernel = new Kernel();
        KernelPlugin kernelPlugin = kernel.Plugins.AddFromObject(plugin, "dictionary");
        List<AITool> tools = [.. kernelPlugin.Select(f => f.WithKernel(kernel))];   // kernel functions are AIFunctions
        var options = new ChatOptions
        {
            Instructions = "You are a lexicographer. Use the dictionary tool to look words up, then answer in one sentence.",
            Tools = tools,
            ToolMode = args.Contains("--force-tool") ? ChatToolMode.RequireSpecific(tools[0].Name) : ChatToolMode.Auto,
            MaxOutputTokens = int.TryParse(Arg("--max-tokens"), out int max) ? max : 256,
        };
        var agent = new ChatClientAgent(coral, new ChatClientAgentOptions { Name = "lexicographer", ChatOptions = options });

        async Task Answer(string prompt)
        {
            plugin.Calls.Clear();
            AgentResponse response = await agent.RunAsync(prompt);
            foreach (string call in plugin.Calls)
            {
                await stdout.WriteLineAsync($"[plugin] {call}");
            }

            foreach (Microsoft.Extensions.AI.FunctionResultContent result in response.Messages.SelectMany(m => m.Contents).OfType<Microsoft.Extensions.AI.FunctionResultContent>().Where(r => r.Exception is not null))
            {
                await stdout.WriteLineAsync($"[plugin error] {result.Exception!.Message}");
            }

            if (Environment.GetEnvironmentVariable("CORAL_AGENT_TRACE") == "1")
            {
                foreach (AIContent c in response.Messages.SelectMany(m => m.Contents))
                {
                    await stdout.WriteLineAsync($"[trace] {c.GetType().Name}: {c}");
                }
            }

            await stdout.WriteLineAsync($"[agent] {response.Text}");
        }

        if (Arg("--prompt") is string once)
        {
            await Answer(once);
            return 0;
        }

        await stdout.WriteLineAsync("Ask about a word (empty line or end of input quits).");
        while (await stdin.ReadLineAsync() is { Length: > 0 } line)
        {
            await Answer(line);
        }

        return 0;
    }
}

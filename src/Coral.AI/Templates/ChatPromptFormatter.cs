using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI;

/// <summary>The rendered prompt of a conversation and the turn terminators that end the assistant's reply.</summary>
internal sealed record RenderedPrompt(string Text, IReadOnlyList<string> TurnTerminators)
{
    /// <summary>Builds the generation request: terminators that are single tokens stop like EOS, others as stop text.</summary>
    public GenerationRequest ToRequest(HfTokenizer tokenizer, SamplingParameters sampling, int maxNewTokens, IEnumerable<string>? userStops)
    {
        var stopIds = new List<int>();
        var stops = new List<string>();
        foreach (string t in TurnTerminators)
        {
            if (tokenizer.TryGetId(t, out int id))
            {
                stopIds.Add(id);
            }
            else
            {
                stops.Add(t);
            }
        }

        stops.AddRange(userStops ?? []);
        return new GenerationRequest(tokenizer.Encode(Text, addSpecialTokens: false), sampling, maxNewTokens, stops, stopIds);
    }
}

/// <summary>
/// Renders ME.AI chat messages with the model's own chat template (tokenizer_config.json / chat_template.jinja) through
/// the Jinja engine, passing the variables exactly as transformers' <c>apply_chat_template</c> does; models without a
/// template get ChatML.
/// </summary>
internal static class ChatPromptFormatter
{
    /// <summary>Turn-end markers of common template families (they stop generation even when not in the EOS list).</summary>
    private static readonly string[] KnownTerminators = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>"];

    private const string ChatMl =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    public static RenderedPrompt Render(TokenizerConfig config, IEnumerable<ChatMessage> messages, ChatOptions? options, bool addGenerationPrompt = true, DateTime? now = null)
    {
        string template = config.ChatTemplate ?? ChatMl;
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = ToTemplateMessages(messages, options?.Instructions),
            ["tools"] = options?.ToolMode is NoneChatToolMode ? null : ToTemplateTools(options?.Tools),
            ["documents"] = null,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        foreach (var (name, value) in new[] { ("bos_token", config.BosToken), ("eos_token", config.EosToken), ("pad_token", config.PadToken) })
        {
            if (value is not null)
            {
                variables[name] = value;
            }
        }

        if (options?.Reasoning is { } reasoning)
        {
            variables["enable_thinking"] = reasoning.Effort != ReasoningEffort.None;
        }

        string text = TemplateCache.Get(template).Render(variables, now);
        var terminators = KnownTerminators.Where(t => template.Contains(t, StringComparison.Ordinal) && !(t == "</s>" && config.EosToken != "</s>")).ToList();
        if (config.EosToken is { } eos && !terminators.Contains(eos))
        {
            terminators.Add(eos);
        }

        return new RenderedPrompt(text, terminators);
    }

    /// <summary>ME.AI messages as transformers expects them: role, content (text; "" rather than null), tool_calls with
    /// arguments as objects, one role=tool message per function result with tool_call_id and name.</summary>
    internal static List<object?> ToTemplateMessages(IEnumerable<ChatMessage> messages, string? instructions)
    {
        var list = new List<object?>();
        var callNames = new Dictionary<string, string>(StringComparer.Ordinal);
        if (!string.IsNullOrEmpty(instructions))
        {
            list.Add(Dict(("role", "system"), ("content", instructions)));
        }

        foreach (ChatMessage m in messages)
        {
            var results = m.Contents.OfType<FunctionResultContent>().ToList();
            if (results.Count > 0)
            {
                foreach (FunctionResultContent r in results)
                {
                    var tool = Dict(("role", "tool"), ("tool_call_id", r.CallId));
                    if (callNames.TryGetValue(r.CallId, out string? name))
                    {
                        tool["name"] = name;
                    }

                    tool["content"] = r.Result switch
                    {
                        null => string.Empty,
                        string s => s,
                        JsonElement e when e.ValueKind == JsonValueKind.String => e.GetString(),
                        _ => JsonSerializer.Serialize(r.Result, AIJsonUtilities.DefaultOptions),
                    };
                    list.Add(tool);
                }

                continue;
            }

            var message = Dict(("role", m.Role.Value), ("content", m.Text));
            var calls = m.Contents.OfType<FunctionCallContent>().ToList();
            if (calls.Count > 0)
            {
                message["tool_calls"] = calls.Select(c =>
                {
                    callNames[c.CallId] = c.Name;
                    var args = c.Arguments is null ? new OrderedDictionary<string, object?>()
                        : (OrderedDictionary<string, object?>)JinjaValues.FromJson(JsonSerializer.SerializeToNode(c.Arguments, AIJsonUtilities.DefaultOptions))!;
                    return (object?)Dict(("id", c.CallId), ("type", "function"), ("function", Dict(("name", c.Name), ("arguments", args))));
                }).ToList();
            }

            string reasoning = string.Concat(m.Contents.OfType<TextReasoningContent>().Select(r => r.Text));
            if (reasoning.Length > 0)
            {
                message["reasoning_content"] = reasoning;
            }

            list.Add(message);
        }

        return list;
    }

    /// <summary>Function declarations in the OpenAI tool format templates read.</summary>
    internal static List<object?>? ToTemplateTools(IList<AITool>? tools)
    {
        var functions = tools?.OfType<AIFunctionDeclaration>().ToList();
        if (functions is null || functions.Count == 0)
        {
            return null;
        }

        return functions.Select(f => (object?)Dict(
            ("type", "function"),
            ("function", Dict(
                ("name", f.Name),
                ("description", f.Description),
                ("parameters", JinjaValues.FromJson(JsonNode.Parse(f.JsonSchema.GetRawText()))))))).ToList();
    }

    private static OrderedDictionary<string, object?> Dict(params (string Key, object? Value)[] items) =>
        new(items.Select(i => KeyValuePair.Create(i.Key, i.Value)));

    /// <summary>Parsed templates by source text (models reuse one template for every request).</summary>
    private static class TemplateCache
    {
        private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, JinjaTemplate> Cache = new(StringComparer.Ordinal);

        public static JinjaTemplate Get(string source) => Cache.Count > 64 ? JinjaTemplate.Parse(source) : Cache.GetOrAdd(source, JinjaTemplate.Parse);
    }
}

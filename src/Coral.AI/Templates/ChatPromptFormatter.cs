using System.Text;
using Microsoft.Extensions.AI;

namespace Coral.AI;

/// <summary>The rendered prompt of a conversation and the turn terminator that ends the assistant's reply.</summary>
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
/// Renders ME.AI chat messages into the model's prompt format. Until the Jinja engine lands, two formats are built in and
/// chosen from the model's template: ChatML (also the fallback for models without a template) and Llama-3 headers.
/// </summary>
internal static class ChatPromptFormatter
{
    public static RenderedPrompt Render(TokenizerConfig config, IEnumerable<ChatMessage> messages, string? instructions, bool addGenerationPrompt = true)
    {
        var list = new List<(string Role, string Content)>();
        if (!string.IsNullOrEmpty(instructions))
        {
            list.Add(("system", instructions));
        }

        foreach (ChatMessage m in messages)
        {
            list.Add((m.Role.Value, m.Text));
        }

        string? template = config.ChatTemplate;
        if (template is null || template.Contains("<|im_start|>", StringComparison.Ordinal))
        {
            var sb = new StringBuilder();
            foreach (var (role, content) in list)
            {
                sb.Append("<|im_start|>").Append(role).Append('\n').Append(content).Append("<|im_end|>\n");
            }

            if (addGenerationPrompt)
            {
                sb.Append("<|im_start|>assistant\n");
            }

            return new RenderedPrompt(sb.ToString(), ["<|im_end|>"]);
        }

        if (template.Contains("<|start_header_id|>", StringComparison.Ordinal))
        {
            var sb = new StringBuilder(config.BosToken ?? string.Empty);
            foreach (var (role, content) in list)
            {
                sb.Append("<|start_header_id|>").Append(role).Append("<|end_header_id|>\n\n").Append(content.Trim()).Append("<|eot_id|>");
            }

            if (addGenerationPrompt)
            {
                sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }

            return new RenderedPrompt(sb.ToString(), ["<|eot_id|>"]);
        }

        throw new NotSupportedException(
            "This model's chat template is neither ChatML nor Llama-3 style; general Jinja chat templates are not supported yet. " +
            "Use raw-text generation (coral generate without --chat) for this model.");
    }
}

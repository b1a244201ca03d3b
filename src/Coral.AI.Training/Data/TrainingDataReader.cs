using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI.Training;

/// <summary>
/// Reads training data for a target: chat JSONL (<c>{"messages": [...]}</c>, rendered with the target's chat template,
/// loss on assistant tokens), JSONL with <c>{"text": ...}</c>, or a plain-text file (split into fixed-length chunks; loss
/// everywhere).
/// </summary>
internal static class TrainingDataReader
{
    /// <param name="path">The data file.</param>
    /// <param name="tokenizer">The target's tokenizer (and chat template).</param>
    /// <param name="maxLength">The longest sequence kept.</param>
    /// <param name="regenerate">Self-distillation (EAGLE-3's recommendation): given the conversation before an assistant
    /// turn, returns the target's own reply, which replaces the dataset's.</param>
    public static IEnumerable<TrainingExample> Read(string path, HfTokenizer tokenizer, int maxLength, Func<List<ChatMessage>, string>? regenerate = null)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Training data '{path}' does not exist.", path);
        }

        if (!path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) && !path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            foreach (TrainingExample chunk in Chunks(tokenizer.Encode(File.ReadAllText(path)), maxLength))
            {
                yield return chunk;
            }

            yield break;
        }

        foreach ((int lineNo, JsonObject o) in JsonLines.ReadObjects(path))
        {
            string? kind = o["kind"] is JsonValue k && k.TryGetValue(out string? name) ? name : null;
            if (o["text"] is JsonNode text)
            {
                foreach (TrainingExample chunk in Chunks(tokenizer.Encode(text.GetValue<string>()), maxLength))
                {
                    yield return chunk with { Kind = kind };
                }

                continue;
            }

            List<ChatMessage> messages = JsonLines.Messages(
                o["messages"] as JsonArray ?? throw new InvalidDataException($"{path}:{lineNo}: needs \"messages\" or \"text\"."), path, lineNo);
            if (regenerate is not null)
            {
                for (int i = 0; i < messages.Count; i++)
                {
                    if (messages[i].Role == ChatRole.Assistant)
                    {
                        messages[i] = new ChatMessage(ChatRole.Assistant, regenerate(messages.Take(i).ToList()));
                    }
                }
            }

            yield return Conversation(messages, tokenizer, maxLength) with { Kind = kind };
        }
    }

    /// <summary>
    /// Renders a conversation with the chat template; an assistant turn's tokens are those between the render of the
    /// conversation before it (with the generation prompt) and the render including it.
    /// </summary>
    public static TrainingExample Conversation(List<ChatMessage> messages, HfTokenizer tokenizer, int maxLength)
    {
        TokenizerConfig config = tokenizer.Config;
        string full = ChatPromptFormatter.Render(config, messages, null, addGenerationPrompt: false).Text;
        int[] ids = [.. tokenizer.Encode(full, addSpecialTokens: false)];
        var mask = new byte[ids.Length];
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != ChatRole.Assistant)
            {
                continue;
            }

            int start = tokenizer.Encode(ChatPromptFormatter.Render(config, messages.Take(i), null, addGenerationPrompt: true).Text, addSpecialTokens: false).Count;
            int end = tokenizer.Encode(ChatPromptFormatter.Render(config, messages.Take(i + 1), null, addGenerationPrompt: false).Text, addSpecialTokens: false).Count;
            for (int t = start; t < Math.Min(end, ids.Length); t++)
            {
                mask[t] = 1;
            }
        }

        int n = Math.Min(ids.Length, maxLength);
        return new TrainingExample(ids[..n], mask[..n]);
    }

    private static IEnumerable<TrainingExample> Chunks(List<int> ids, int maxLength)
    {
        for (int start = 0; start + 2 <= ids.Count; start += maxLength)
        {
            int[] chunk = ids.Skip(start).Take(maxLength).ToArray();
            yield return new TrainingExample(chunk, Enumerable.Repeat((byte)1, chunk.Length).ToArray());
        }
    }
}

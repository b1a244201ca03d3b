using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI.Training;

/// <summary>
/// Reads JSONL files (training data, bench prompts): one JSON object per non-blank line, errors naming the file and line.
/// </summary>
internal static class JsonLines
{
    /// <summary>Each non-blank line of <paramref name="path"/> as a JSON object, with its 1-based line number.</summary>
    /// <exception cref="InvalidDataException">A line is not a JSON object.</exception>
    public static IEnumerable<(int Line, JsonObject Value)> ReadObjects(string path)
    {
        int lineNo = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            JsonObject o;
            try
            {
                o = JsonNode.Parse(line) as JsonObject ?? throw new JsonException("not an object");
            }
            catch (JsonException ex)
            {
                throw new InvalidDataException($"{path}:{lineNo}: not a JSON object ({ex.Message}).", ex);
            }

            yield return (lineNo, o);
        }
    }

    /// <summary>
    /// An OpenAI-style <c>messages</c> array (<c>[{"role": ..., "content": "..."}]</c>; a missing content is empty).
    /// </summary>
    /// <exception cref="InvalidDataException">An entry lacks a string role or has a non-string content.</exception>
    public static List<ChatMessage> Messages(JsonArray array, string path, int line)
    {
        var messages = new List<ChatMessage>(array.Count);
        for (int i = 0; i < array.Count; i++)
        {
            string where = $"{path}:{line}: messages[{i}]";
            if (array[i] is not JsonObject m)
            {
                throw new InvalidDataException($"{where} is not an object.");
            }

            string role = String(m["role"]) ?? throw new InvalidDataException($"{where} needs a string \"role\".");
            string content = m["content"] is null ? string.Empty
                : String(m["content"]) ?? throw new InvalidDataException($"{where}.content must be a string.");
            messages.Add(new ChatMessage(new ChatRole(role), content));
        }

        return messages;
    }

    private static string? String(JsonNode? node) =>
        node is JsonValue v && v.TryGetValue(out string? s) ? s : null;
}

using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI;

/// <summary>Maps <see cref="ChatOptions"/> to an output constraint: JSON (with or without a schema) and forced tool calls.</summary>
internal static class OutputConstraints
{
    /// <summary>
    /// Returns the constraint the options ask for, or null. <paramref name="syntax"/> becomes Hermes when a tool call is
    /// forced on a model whose template shows no known syntax. <paramref name="instructions"/> explains a JSON schema in the
    /// prompt (ME.AI's <c>GetResponseAsync&lt;T&gt;</c> adds none; the backend is expected to).
    /// </summary>
    public static OutputConstraint? For(ChatOptions? options, ref ToolCallSyntax syntax, out string? instructions)
    {
        instructions = null;
        var functions = options?.Tools?.OfType<AIFunctionDeclaration>().ToList() ?? [];
        if (options?.ToolMode is RequiredChatToolMode required && functions.Count > 0)
        {
            if (required.RequiredFunctionName is string name && functions.All(f => f.Name != name))
            {
                throw new ArgumentException($"ChatOptions.ToolMode requires '{name}', which is not in ChatOptions.Tools.", nameof(options));
            }

            var chosen = required.RequiredFunctionName is string n ? functions.Where(f => f.Name == n).ToList() : functions;
            JsonNode nameSchema = chosen.Count == 1
                ? new JsonObject { ["const"] = chosen[0].Name }
                : new JsonObject { ["enum"] = new JsonArray(chosen.Select(f => (JsonNode)JsonValue.Create(f.Name)!).ToArray()) };
            JsonNode argsSchema = chosen.Count == 1 ? JsonNode.Parse(chosen[0].JsonSchema.GetRawText())! : new JsonObject { ["type"] = "object" };
            if (syntax == ToolCallSyntax.None)
            {
                syntax = ToolCallSyntax.Hermes;
            }

            string argsKey = syntax == ToolCallSyntax.LlamaJson ? "parameters" : "arguments";
            JsonElement call = Element(new JsonObject
            {
                ["type"] = "object",
                ["properties"] = new JsonObject { ["name"] = nameSchema, [argsKey] = argsSchema },
                ["required"] = new JsonArray("name", argsKey),
                ["additionalProperties"] = false,
            });
            return syntax switch
            {
                ToolCallSyntax.Mistral => OutputConstraint.Wrapped("[TOOL_CALLS][", call, "]"),
                ToolCallSyntax.Granite => OutputConstraint.Wrapped("<|tool_call|>[", call, "]"),
                ToolCallSyntax.LlamaJson => OutputConstraint.Json(call),
                _ => OutputConstraint.Wrapped("<tool_call>\n", call, "\n</tool_call>"),
            };
        }

        switch (options?.ResponseFormat)
        {
            case ChatResponseFormatJson { Schema: { } schema } json:
                instructions = $"Respond only with a JSON value{(json.SchemaName is { } sn ? $" ({sn})" : string.Empty)} that conforms to this JSON schema:\n{schema.GetRawText()}";
                return OutputConstraint.Json(schema);
            case ChatResponseFormatJson:
                instructions = "Respond only with a JSON value.";
                return OutputConstraint.Json(null);
            default:
                return null;
        }
    }

    private static JsonElement Element(JsonNode node) => JsonSerializer.Deserialize<JsonElement>(node.ToJsonString());
}

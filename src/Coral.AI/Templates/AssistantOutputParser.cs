using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI;

/// <summary>How a model family writes tool calls.</summary>
internal enum ToolCallSyntax
{
    /// <summary>No tool-call syntax known: everything is text.</summary>
    None,

    /// <summary>Hermes / Qwen: <c>&lt;tool_call&gt;{"name": ..., "arguments": {...}}&lt;/tool_call&gt;</c>, one or more.</summary>
    Hermes,

    /// <summary>Llama 3.1/3.2: the whole reply is <c>{"name": ..., "parameters": {...}}</c> (optionally after <c>&lt;|python_tag|&gt;</c>).</summary>
    LlamaJson,

    /// <summary>Mistral: <c>[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]</c>.</summary>
    Mistral,

    /// <summary>Granite 3.x: <c>&lt;|tool_call|&gt;[{"name": ..., "arguments": {...}}, ...]</c>.</summary>
    Granite,
}

/// <summary>
/// Splits a streamed assistant reply into text, reasoning (<c>&lt;think&gt;…&lt;/think&gt;</c>) and tool calls. Text that
/// might belong to a tool call or a reasoning tag is held back, so tool-call syntax never leaks into the streamed text.
/// </summary>
internal sealed class AssistantOutputParser
{
    private const string ThinkOpen = "<think>", ThinkClose = "</think>";
    private const string HermesOpen = "<tool_call>", HermesClose = "</tool_call>";
    private const string MistralOpen = "[TOOL_CALLS]";
    private const string GraniteOpen = "<|tool_call|>";
    private readonly ToolCallSyntax _syntax;
    private readonly StringBuilder _pending = new();
    private readonly StringBuilder _calls = new();
    private bool _inThink;
    private bool _inCalls;
    private bool _sawText;
    private bool _trimNewlines;   // newlines right after <think> or </think> are layout, not content

    public AssistantOutputParser(ToolCallSyntax syntax, bool startsInThink = false)
    {
        _syntax = syntax;
        _inThink = startsInThink;
    }

    /// <summary>Picks the syntax from the chat template's text.</summary>
    public static ToolCallSyntax Detect(string? template) => template switch
    {
        null => ToolCallSyntax.None,
        _ when template.Contains(GraniteOpen, StringComparison.Ordinal) => ToolCallSyntax.Granite,
        _ when template.Contains(HermesOpen, StringComparison.Ordinal) => ToolCallSyntax.Hermes,
        _ when template.Contains(MistralOpen, StringComparison.Ordinal) => ToolCallSyntax.Mistral,
        _ when template.Contains("\"parameters\": dictionary of argument name", StringComparison.Ordinal) || template.Contains("<|python_tag|>", StringComparison.Ordinal) => ToolCallSyntax.LlamaJson,
        _ => ToolCallSyntax.None,
    };

    /// <summary>Adds generated text; returns the pieces that are safe to stream, as (isReasoning, text).</summary>
    public List<(bool Reasoning, string Text)> Push(string text)
    {
        var output = new List<(bool, string)>();
        if (_inCalls)
        {
            _calls.Append(text);
            return output;
        }

        _pending.Append(text);
        while (_pending.Length > 0)
        {
            string p = _pending.ToString();
            if (_trimNewlines)
            {
                p = p.TrimStart('\n');
                _pending.Clear().Append(p);
                if (p.Length == 0)
                {
                    return output;
                }

                _trimNewlines = false;
            }

            if (_inThink)
            {
                int close = p.IndexOf(ThinkClose, StringComparison.Ordinal);
                if (close >= 0)
                {
                    Add(output, true, p[..close]);
                    _inThink = false;
                    _trimNewlines = true;
                    _pending.Clear().Append(p[(close + ThinkClose.Length)..]);
                    continue;
                }

                int hold = PartialSuffix(p, ThinkClose);
                Add(output, true, p[..^hold]);
                _pending.Clear().Append(p[^hold..]);
                return output;
            }

            if (!_sawText && _syntax == ToolCallSyntax.LlamaJson)
            {
                string trimmed = p.TrimStart();
                if (trimmed.Length == 0)
                {
                    return output;
                }

                if (trimmed.StartsWith('{') || trimmed.StartsWith("<|python_tag|>", StringComparison.Ordinal) || "<|python_tag|>".StartsWith(trimmed, StringComparison.Ordinal))
                {
                    _inCalls = true;
                    _calls.Append(p);
                    _pending.Clear();
                    return output;
                }
            }

            string[] markers = _syntax switch
            {
                ToolCallSyntax.Hermes => [ThinkOpen, HermesOpen],
                ToolCallSyntax.Mistral => [ThinkOpen, MistralOpen],
                ToolCallSyntax.Granite => [ThinkOpen, GraniteOpen],
                _ => [ThinkOpen],
            };
            int at = -1;
            string? marker = null;
            foreach (string m in markers)
            {
                int i = p.IndexOf(m, StringComparison.Ordinal);
                if (i >= 0 && (at < 0 || i < at))
                {
                    (at, marker) = (i, m);
                }
            }

            if (marker is null)
            {
                int hold = markers.Max(m => PartialSuffix(p, m));
                Add(output, false, p[..^hold]);
                _pending.Clear().Append(p[^hold..]);
                return output;
            }

            Add(output, false, p[..at]);
            if (marker == ThinkOpen)
            {
                _inThink = true;
                _trimNewlines = true;
                _pending.Clear().Append(p[(at + ThinkOpen.Length)..]);
                continue;
            }

            _inCalls = true;
            _calls.Append(p[at..]);
            _pending.Clear();
            return output;
        }

        return output;
    }

    /// <summary>Ends the reply: the held-back text, and the parsed tool calls (a reply that does not parse stays text).</summary>
    public (List<(bool Reasoning, string Text)> Remaining, List<FunctionCallContent> Calls) Finish()
    {
        var rest = new List<(bool, string)>();
        Add(rest, _inThink, _pending.ToString());
        _pending.Clear();
        var calls = new List<FunctionCallContent>();
        if (_calls.Length > 0)
        {
            string raw = _calls.ToString();
            if (!TryParseCalls(raw, calls))
            {
                calls.Clear();
                Add(rest, false, raw);
            }
        }

        return (rest, calls);
    }

    private void Add(List<(bool, string)> output, bool reasoning, string text)
    {
        if (text.Length == 0)
        {
            return;
        }

        if (!reasoning && text.Trim().Length > 0)
        {
            _sawText = true;
        }

        output.Add((reasoning, text));
    }

    private bool TryParseCalls(string raw, List<FunctionCallContent> calls)
    {
        switch (_syntax)
        {
            case ToolCallSyntax.Hermes:
            {
                int pos = 0;
                while ((pos = raw.IndexOf(HermesOpen, pos, StringComparison.Ordinal)) >= 0)
                {
                    int start = pos + HermesOpen.Length;
                    int end = raw.IndexOf(HermesClose, start, StringComparison.Ordinal);
                    string body = end < 0 ? raw[start..] : raw[start..end];
                    if (!TryAddCall(JsonParse(body), calls))
                    {
                        return false;
                    }

                    pos = end < 0 ? raw.Length : end + HermesClose.Length;
                }

                return calls.Count > 0;
            }

            case ToolCallSyntax.Mistral or ToolCallSyntax.Granite:
                // A marker, then a JSON list of calls.
                int open = (_syntax == ToolCallSyntax.Mistral ? MistralOpen : GraniteOpen).Length;
                return JsonParse(raw[open..]) is JsonArray array && array.All(n => TryAddCall(n, calls)) && calls.Count > 0;
            case ToolCallSyntax.LlamaJson:
            {
                string body = raw.Trim();
                if (body.StartsWith("<|python_tag|>", StringComparison.Ordinal))
                {
                    body = body["<|python_tag|>".Length..];
                }

                return body.Split(';').All(part => TryAddCall(JsonParse(part), calls)) && calls.Count > 0;
            }

            default:
                return false;
        }
    }

    private static JsonNode? JsonParse(string text)
    {
        try
        {
            return JsonNode.Parse(text.Trim());
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static bool TryAddCall(JsonNode? node, List<FunctionCallContent> calls)
    {
        if (node is not JsonObject o || o["name"]?.GetValue<string>() is not string name)
        {
            return false;
        }

        JsonNode? args = o["arguments"] ?? o["parameters"];
        if (args is JsonValue v && v.TryGetValue(out string? encoded))
        {
            args = JsonParse(encoded);   // some models write arguments as a JSON string
        }

        var arguments = args is JsonObject ao
            ? ao.ToDictionary(kv => kv.Key, kv => (object?)JsonSerializer.Deserialize<JsonElement>(kv.Value?.ToJsonString() ?? "null"))
            : new Dictionary<string, object?>();
        string id = o["id"]?.GetValue<string>() is { Length: > 0 } given ? given : "call_" + Guid.NewGuid().ToString("N")[..12];
        calls.Add(new FunctionCallContent(id, name, arguments));
        return true;
    }

    /// <summary>The length of the longest suffix of <paramref name="text"/> that is a proper prefix of <paramref name="marker"/>.</summary>
    private static int PartialSuffix(string text, string marker)
    {
        for (int len = Math.Min(marker.Length - 1, text.Length); len > 0; len--)
        {
            if (text.AsSpan(text.Length - len).SequenceEqual(marker.AsSpan(0, len)))
            {
                return len;
            }
        }

        return 0;
    }
}

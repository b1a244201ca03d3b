using System.Text.Json;
using System.Text.Json.Nodes;
using Coral.AI;
using Microsoft.Extensions.AI;

namespace Coral.Samples.WebApi;

/// <summary>The OpenAI chat-completions wire format mapped onto <see cref="IChatClient"/> (non-streaming and SSE).</summary>
public static class OpenAiProtocol
{
    /// <summary>GET /v1/models.</summary>
    /// <param name="client">The chat client.</param>
    /// <returns>The model list.</returns>
    public static JsonObject Models(IChatClient client) => new()
    {
        ["object"] = "list",
        ["data"] = new JsonArray(new JsonObject
        {
            ["id"] = client.GetService<ChatClientMetadata>()?.DefaultModelId,
            ["object"] = "model",
            ["owned_by"] = "coral",
        }),
    };

    /// <summary>POST /v1/chat/completions.</summary>
    /// <param name="context">The HTTP context.</param>
    /// <param name="client">The chat client.</param>
    /// <param name="queue">The admission queue.</param>
    /// <returns>A task.</returns>
    public static async Task ChatCompletionsAsync(HttpContext context, IChatClient client, RequestQueue queue)
    {
        using IDisposable? slot = await AdmitAsync(context, queue);
        if (slot is null)
        {
            return;
        }

        JsonObject request;
        List<ChatMessage> messages;
        ChatOptions options;
        try
        {
            request = await JsonNode.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted) as JsonObject
                ?? throw new JsonException("the body must be a JSON object");
            (messages, options) = ToChat(request);
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or FormatException or ArgumentException)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsJsonAsync(Error(ex.Message, "invalid_request_error"), context.RequestAborted);
            return;
        }

        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string model = options.ModelId ?? client.GetService<ChatClientMetadata>()?.DefaultModelId ?? "coral";
        try
        {
            if (request["stream"]?.GetValue<bool>() == true)
            {
                await StreamAsync(context, client, messages, options, id, created, model, request["stream_options"]?["include_usage"]?.GetValue<bool>() ?? false);
                return;
            }

            ChatResponse response = await client.GetResponseAsync(messages, options, context.RequestAborted);
            var message = new JsonObject { ["role"] = "assistant", ["content"] = response.Text };
            JsonArray? calls = ToolCalls(response.Messages.SelectMany(m => m.Contents));
            if (calls is not null)
            {
                message["tool_calls"] = calls;
            }

            await context.Response.WriteAsJsonAsync(new JsonObject
            {
                ["id"] = id,
                ["object"] = "chat.completion",
                ["created"] = created,
                ["model"] = model,
                ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["message"] = message, ["finish_reason"] = Finish(response.FinishReason) }),
                ["usage"] = Usage(response.Usage),
                ["coral"] = Stats(response.Usage),
            }, context.RequestAborted);
        }
        catch (Exception ex) when (ex is PromptTooLongException or ChatTemplateException or InvalidOperationException or ArgumentException)
        {
            if (!context.Response.HasStarted)
            {
                context.Response.StatusCode = StatusCodes.Status400BadRequest;
                await context.Response.WriteAsJsonAsync(Error(ex.Message, "invalid_request_error"), context.RequestAborted);
            }
        }
    }

    /// <summary>POST /v1/embeddings: <c>input</c> (a string or an array of strings), <c>model</c>, <c>dimensions</c>,
    /// <c>encoding_format</c> (<c>float</c>, or <c>base64</c> of little-endian f32, which the OpenAI .NET client asks for).</summary>
    /// <param name="context">The HTTP context.</param>
    /// <param name="generator">The embedding generator.</param>
    /// <param name="queue">The admission queue.</param>
    /// <returns>A task.</returns>
    public static async Task EmbeddingsAsync(HttpContext context, IEmbeddingGenerator<string, Embedding<float>> generator, RequestQueue queue)
    {
        using IDisposable? slot = await AdmitAsync(context, queue);
        if (slot is null)
        {
            return;
        }

        try
        {
            JsonObject request = await JsonNode.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted) as JsonObject
                ?? throw new JsonException("the body must be a JSON object");
            string[] inputs = request["input"] switch
            {
                JsonValue v when v.TryGetValue(out string? text) => [text],
                JsonArray a when a.All(x => x is JsonValue xv && xv.TryGetValue(out string? _)) => a.Select(x => x!.GetValue<string>()).ToArray(),
                null => throw new ArgumentException("'input' is required."),
                _ => throw new ArgumentException("'input' must be a string or an array of strings (token arrays are not supported)."),
            };
            string format = request["encoding_format"]?.GetValue<string>() ?? "float";
            if (format is not ("float" or "base64"))
            {
                throw new ArgumentException($"'encoding_format' must be 'float' or 'base64' (got '{format}').");
            }

            var options = new EmbeddingGenerationOptions
            {
                ModelId = request["model"]?.GetValue<string>(),
                Dimensions = request["dimensions"]?.GetValue<int>(),
            };
            GeneratedEmbeddings<Embedding<float>> embeddings = await generator.GenerateAsync(inputs, options, context.RequestAborted);
            var data = new JsonArray();
            for (int i = 0; i < embeddings.Count; i++)
            {
                ReadOnlyMemory<float> v = embeddings[i].Vector;
                data.Add(new JsonObject
                {
                    ["object"] = "embedding",
                    ["index"] = i,
                    ["embedding"] = format == "base64"
                        ? Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.Span))
                        : new JsonArray(v.ToArray().Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
                });
            }

            await context.Response.WriteAsJsonAsync(new JsonObject
            {
                ["object"] = "list",
                ["data"] = data,
                ["model"] = embeddings.FirstOrDefault()?.ModelId ?? options.ModelId ?? "coral",
                ["usage"] = new JsonObject
                {
                    ["prompt_tokens"] = embeddings.Usage?.InputTokenCount ?? 0,
                    ["total_tokens"] = embeddings.Usage?.TotalTokenCount ?? 0,
                },
            }, context.RequestAborted);
        }
        catch (Exception ex) when (ex is JsonException or PromptTooLongException or InvalidOperationException or FormatException or ArgumentException)
        {
            if (!context.Response.HasStarted)
            {
                context.Response.StatusCode = StatusCodes.Status400BadRequest;
                await context.Response.WriteAsJsonAsync(Error(ex.Message, "invalid_request_error"), context.RequestAborted);
            }
        }
    }

    private static async Task StreamAsync(HttpContext context, IChatClient client, List<ChatMessage> messages, ChatOptions options,
        string id, long created, string model, bool includeUsage)
    {
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        async Task Send(JsonObject chunk)
        {
            await context.Response.WriteAsync("data: " + chunk.ToJsonString() + "\n\n", context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted);
        }

        JsonObject Chunk(JsonObject delta, string? finish) => new()
        {
            ["id"] = id,
            ["object"] = "chat.completion.chunk",
            ["created"] = created,
            ["model"] = model,
            ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["delta"] = delta, ["finish_reason"] = finish }),
        };

        // The first update comes before anything is sent: a request the client refuses (an unknown model, a prompt over the
        // context) still gets its 400, not a 200 stream that ends empty.
        await using IAsyncEnumerator<ChatResponseUpdate> updates = client.GetStreamingResponseAsync(messages, options, context.RequestAborted)
            .GetAsyncEnumerator(context.RequestAborted);
        bool more = await updates.MoveNextAsync();
        await Send(Chunk(new JsonObject { ["role"] = "assistant", ["content"] = string.Empty }, null));
        UsageDetails? usage = null;
        ChatFinishReason? finish = null;
        for (; more; more = await updates.MoveNextAsync())
        {
            ChatResponseUpdate update = updates.Current;
            if (update.Text.Length > 0)
            {
                await Send(Chunk(new JsonObject { ["content"] = update.Text }, null));
            }

            if (ToolCalls(update.Contents) is { } calls)
            {
                for (int i = 0; i < calls.Count; i++)
                {
                    calls[i]!["index"] = i;
                }

                await Send(Chunk(new JsonObject { ["tool_calls"] = calls }, null));
            }

            usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usage;
            finish = update.FinishReason ?? finish;
        }

        JsonObject last = Chunk(new JsonObject(), Finish(finish));
        last["coral"] = Stats(usage);
        await Send(last);
        if (includeUsage)
        {
            JsonObject usageChunk = Chunk(new JsonObject(), null);
            usageChunk["choices"] = new JsonArray();
            usageChunk["usage"] = Usage(usage);
            await Send(usageChunk);
        }

        await context.Response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);
    }

    /// <summary>Maps an OpenAI request body to ME.AI messages and options.</summary>
    internal static (List<ChatMessage> Messages, ChatOptions Options) ToChat(JsonObject r)
    {
        var messages = new List<ChatMessage>();
        foreach (JsonNode? m in r["messages"] as JsonArray ?? throw new ArgumentException("'messages' is required."))
        {
            var role = new ChatRole(Need(Need(m as JsonObject, "every message (an object)")["role"], "every message's 'role'").GetValue<string>());
            string text = m!["content"] switch
            {
                null => string.Empty,
                JsonArray parts => string.Concat(parts.Where(p => p?["type"]?.GetValue<string>() == "text").Select(p => Need(p!["text"], "a text part's 'text'").GetValue<string>())),
                JsonNode c => c.GetValue<string>(),
            };
            if (role == ChatRole.Tool)
            {
                messages.Add(new ChatMessage(ChatRole.Tool, [new FunctionResultContent(m["tool_call_id"]?.GetValue<string>() ?? string.Empty, text)]));
                continue;
            }

            var message = new ChatMessage(role, text);
            foreach (JsonNode? call in m["tool_calls"] as JsonArray ?? [])
            {
                JsonNode function = Need(Need(call, "every tool call")["function"], "a tool call's 'function'");
                string args = function["arguments"]?.GetValue<string>() ?? "{}";
                var parsed = JsonSerializer.Deserialize<Dictionary<string, object?>>(args);
                message.Contents.Add(new FunctionCallContent(Need(call!["id"], "a tool call's 'id'").GetValue<string>(),
                    Need(function["name"], "a tool call's function 'name'").GetValue<string>(), parsed));
            }

            messages.Add(message);
        }

        var options = new ChatOptions
        {
            ModelId = r["model"]?.GetValue<string>() is { Length: > 0 } model && model != "coral" ? model : null,
            Temperature = r["temperature"]?.GetValue<float>(),
            TopP = r["top_p"]?.GetValue<float>(),
            MaxOutputTokens = (r["max_completion_tokens"] ?? r["max_tokens"])?.GetValue<int>(),
            Seed = r["seed"]?.GetValue<long>(),
            FrequencyPenalty = r["frequency_penalty"]?.GetValue<float>(),
            PresencePenalty = r["presence_penalty"]?.GetValue<float>(),
            StopSequences = r["stop"] switch
            {
                null => null,
                JsonArray a => a.Select(x => Need(x, "every stop sequence").GetValue<string>()).ToList(),
                JsonNode s => [s.GetValue<string>()],
            },
        };
        var tools = (r["tools"] as JsonArray ?? []).Select(t => Need(Need(t, "every tool")["function"], "a tool's 'function'")).Select(f => (AITool)AIFunctionFactory.CreateDeclaration(
            Need(f["name"], "a tool's function 'name'").GetValue<string>(),
            f["description"]?.GetValue<string>(),
            JsonSerializer.Deserialize<JsonElement>(f["parameters"]?.ToJsonString() ?? "{\"type\":\"object\"}"))).ToList();
        if (tools.Count > 0)
        {
            options.Tools = tools;
        }

        options.ToolMode = r["tool_choice"] switch
        {
            null => null,
            JsonValue v when v.GetValue<string>() == "none" => ChatToolMode.None,
            JsonValue v when v.GetValue<string>() == "required" => ChatToolMode.RequireAny,
            JsonValue => ChatToolMode.Auto,
            JsonObject o => ChatToolMode.RequireSpecific(Need(Need(o["function"], "tool_choice's 'function'")["name"], "tool_choice's function 'name'").GetValue<string>()),
            _ => null,
        };
        options.ResponseFormat = r["response_format"]?["type"]?.GetValue<string>() switch
        {
            "json_object" => ChatResponseFormat.Json,
            "json_schema" => ChatResponseFormat.ForJsonSchema(
                JsonSerializer.Deserialize<JsonElement>(Need(Need(r["response_format"]!["json_schema"], "response_format's 'json_schema'")["schema"], "the json_schema's 'schema'").ToJsonString()),
                r["response_format"]!["json_schema"]!["name"]?.GetValue<string>()),
            _ => null,
        };
        foreach (string key in new[] { "top_k", "min_p", "repetition_penalty", "speculative", "tree_total_tokens", "tree_depth", "tree_top_k", "router_top_k", "prompt_lookup_tokens" })
        {
            if (r[key] is JsonNode v)
            {
                if (key == "top_k")
                {
                    options.TopK = v.GetValue<int>();
                }
                else
                {
                    (options.AdditionalProperties ??= [])[key] = JsonSerializer.Deserialize<JsonElement>(v.ToJsonString());
                }
            }
        }

        return (messages, options);
    }

    /// <summary>A part of the request that must be there: absent (or JSON null) is a 400 naming it.</summary>
    private static JsonNode Need(JsonNode? node, string what) => node ?? throw new ArgumentException($"{what} is required.");

    private static JsonArray? ToolCalls(IEnumerable<AIContent> contents)
    {
        var calls = contents.OfType<FunctionCallContent>().Select(c => (JsonNode)new JsonObject
        {
            ["id"] = c.CallId,
            ["type"] = "function",
            ["function"] = new JsonObject { ["name"] = c.Name, ["arguments"] = JsonSerializer.Serialize(c.Arguments) },
        }).ToArray();
        return calls.Length == 0 ? null : new JsonArray(calls);
    }

    private static string? Finish(ChatFinishReason? reason) => reason?.Value switch
    {
        null => null,
        "tool_calls" => "tool_calls",
        "length" => "length",
        _ => "stop",
    };

    private static JsonObject Usage(UsageDetails? u) => new()
    {
        ["prompt_tokens"] = u?.InputTokenCount ?? 0,
        ["completion_tokens"] = u?.OutputTokenCount ?? 0,
        ["total_tokens"] = u?.TotalTokenCount ?? 0,
    };

    /// <summary>Coral's own numbers, in an extension field: decode tokens/s and, with a drafter, the mean accepted length.</summary>
    private static JsonObject Stats(UsageDetails? u)
    {
        var stats = new JsonObject();
        if (u?.AdditionalCounts is { } c)
        {
            if (c.TryGetValue("eval_duration_ns", out long ns) && ns > 0)
            {
                stats["tokens_per_second"] = Math.Round((u.OutputTokenCount ?? 0) / (ns / 1e9), 2);
            }

            if (c.TryGetValue("mean_accepted_length_x1000", out long tau))
            {
                stats["mean_accepted_length"] = tau / 1000.0;
            }

            foreach (var (key, value) in c)
            {
                stats[key] = value;
            }
        }

        return stats;
    }

    /// <summary>A place in the admission queue, or null after answering 429 with Retry-After when it is full.</summary>
    private static async Task<IDisposable?> AdmitAsync(HttpContext context, RequestQueue queue)
    {
        IDisposable? slot = queue.TryEnter();
        if (slot is null)
        {
            context.Response.StatusCode = StatusCodes.Status429TooManyRequests;
            context.Response.Headers.RetryAfter = "1";
            await context.Response.WriteAsJsonAsync(Error("Too many requests are queued; retry shortly.", "rate_limit_exceeded"), context.RequestAborted);
        }

        return slot;
    }

    private static JsonObject Error(string message, string type) => new()
    {
        ["error"] = new JsonObject { ["message"] = message, ["type"] = type },
    };
}

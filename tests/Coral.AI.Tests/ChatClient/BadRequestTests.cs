using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

/// <summary>
/// Odd and wrong requests through <see cref="IChatClient"/>, streaming and not: each either answers or fails with an
/// argument, template or prompt-length error that says what is wrong — never a NullReferenceException, an index error or
/// a hang — and the client answers the next good request.
/// </summary>
public class BadRequestTests
{
    public static TheoryData<string> Cases =>
    [
        "no messages", "only a system message", "an empty user message", "an unknown role", "an image only", "a tool result without its call",
        "a tool call without arguments", "max tokens 0", "max tokens -3", "temperature NaN", "temperature -1", "temperature infinity", "top-p 2",
        "top-k -1", "an empty stop sequence", "a huge seed", "an unknown model", "an invalid JSON schema", "a tool with no schema",
        "min_p as text", "repetition_penalty 0", "speculative as text", "tree_depth -5", "tree_total_tokens 100000", "router_top_k -2",
        "prompt_lookup_tokens 1000", "a prompt over the context", "reasoning on a template without it", "a required tool that is not offered",
    ];

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task OddRequest_AnswersOrFailsSayingWhy(string name)
    {
        using var client = new CoralChatClient(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), ContextLength = 128 });
        var (messages, options) = Case(name);
        foreach (bool streaming in new[] { false, true })
        {
            try
            {
                var run = streaming
                    ? Task.Run(async () => { await foreach (var _ in client.GetStreamingResponseAsync(messages, options)) { } })
                    : client.GetResponseAsync(messages, options);
                await run.WaitAsync(TimeSpan.FromSeconds(60));
            }
            catch (Exception ex) when (ex is ArgumentException or PromptTooLongException or ChatTemplateException or InvalidOperationException or NotSupportedException)
            {
                Assert.False(string.IsNullOrWhiteSpace(ex.Message));
                Assert.True(ex.GetType() != typeof(InvalidOperationException) || ex.Message.Length > 20, ex.ToString());
            }
        }

        ChatResponse good = await client.GetResponseAsync("Hello", new ChatOptions { Temperature = 0, MaxOutputTokens = 3 });
        Assert.NotNull(good.FinishReason);
    }

    private static (List<ChatMessage> Messages, ChatOptions Options) Case(string name)
    {
        var user = new List<ChatMessage> { new(ChatRole.User, "Hi there") };
        var options = new ChatOptions { MaxOutputTokens = 3, Temperature = 0 };
        ChatOptions With(string key, object value)
        {
            options.AdditionalProperties = new AdditionalPropertiesDictionary { [key] = value };
            return options;
        }

        return name switch
        {
            "no messages" => ([], options),
            "only a system message" => ([new(ChatRole.System, "Be brief.")], options),
            "an empty user message" => ([new(ChatRole.User, "")], options),
            "an unknown role" => ([new(new ChatRole("narrator"), "Once upon a time")], options),
            "an image only" => ([new(ChatRole.User, [new DataContent(new byte[] { 1, 2, 3 }, "image/png")])], options),
            "a tool result without its call" => ([new(ChatRole.User, "Hi"), new(ChatRole.Tool, [new FunctionResultContent("nope", "42")])], options),
            "a tool call without arguments" => ([new(ChatRole.User, "Hi"), new(ChatRole.Assistant, [new FunctionCallContent("c1", "f", null)]),
                new(ChatRole.Tool, [new FunctionResultContent("c1", null)])], options),
            "max tokens 0" => (user, new ChatOptions { MaxOutputTokens = 0 }),
            "max tokens -3" => (user, new ChatOptions { MaxOutputTokens = -3 }),
            "temperature NaN" => (user, new ChatOptions { MaxOutputTokens = 3, Temperature = float.NaN }),
            "temperature -1" => (user, new ChatOptions { MaxOutputTokens = 3, Temperature = -1 }),
            "temperature infinity" => (user, new ChatOptions { MaxOutputTokens = 3, Temperature = float.PositiveInfinity }),
            "top-p 2" => (user, new ChatOptions { MaxOutputTokens = 3, TopP = 2 }),
            "top-k -1" => (user, new ChatOptions { MaxOutputTokens = 3, TopK = -1 }),
            "an empty stop sequence" => (user, new ChatOptions { MaxOutputTokens = 3, StopSequences = ["", "x"] }),
            "a huge seed" => (user, new ChatOptions { MaxOutputTokens = 3, Seed = long.MaxValue, Temperature = 1 }),
            "an unknown model" => (user, new ChatOptions { MaxOutputTokens = 3, ModelId = "gpt-9" }),
            "an invalid JSON schema" => (user, new ChatOptions
            {
                MaxOutputTokens = 3,
                ResponseFormat = ChatResponseFormat.ForJsonSchema(System.Text.Json.JsonDocument.Parse("""{"type": 42, "properties": []}""").RootElement),
            }),
            "a tool with no schema" => (user, new ChatOptions
            {
                MaxOutputTokens = 3,
                Tools = [AIFunctionFactory.CreateDeclaration("f", null, System.Text.Json.JsonDocument.Parse("{}").RootElement)],
                ToolMode = ChatToolMode.RequireAny,
            }),
            "min_p as text" => (user, With("min_p", "a little")),
            "repetition_penalty 0" => (user, With("repetition_penalty", 0f)),
            "speculative as text" => (user, With("speculative", "perhaps")),
            "tree_depth -5" => (user, With("tree_depth", -5)),
            "tree_total_tokens 100000" => (user, With("tree_total_tokens", 100000)),
            "router_top_k -2" => (user, With("router_top_k", -2)),
            "prompt_lookup_tokens 1000" => (user, With("prompt_lookup_tokens", 1000)),
            "a prompt over the context" => ([new(ChatRole.User, string.Concat(Enumerable.Repeat("word ", 400)))], options),
            "reasoning on a template without it" => (user, new ChatOptions { MaxOutputTokens = 3, Reasoning = new ReasoningOptions { Effort = ReasoningEffort.High } }),
            "a required tool that is not offered" => (user, new ChatOptions { MaxOutputTokens = 3, ToolMode = ChatToolMode.RequireSpecific("missing") }),
            _ => throw new ArgumentOutOfRangeException(nameof(name)),
        };
    }
}

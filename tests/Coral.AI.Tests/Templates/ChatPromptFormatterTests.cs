using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

/// <summary>ME.AI messages (FunctionCallContent, FunctionResultContent, tools, instructions) render like transformers.</summary>
public class ChatPromptFormatterTests
{
    private static (TokenizerConfig Config, JsonObject Expected) Fixture(string template)
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        var meta = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "templates", template + ".json")))!;
        var tokens = meta["special_tokens"] as JsonObject ?? [];
        var config = new TokenizerConfig
        {
            ChatTemplate = File.ReadAllText(Path.Combine(root, "templates", template + ".jinja")),
            BosToken = tokens["bos_token"]?.GetValue<string>(),
            EosToken = tokens["eos_token"]?.GetValue<string>(),
            PadToken = tokens["pad_token"]?.GetValue<string>(),
        };
        var expected = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "expected", template + ".json")))!["results"]!;
        return (config, expected);
    }

    private static List<AITool> Tools()
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        var tools = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cases", "06_tool_call_roundtrip.json")))!["tools"]!.AsArray();
        return tools.Select(t => (AITool)AIFunctionFactory.CreateDeclaration(
            t!["function"]!["name"]!.GetValue<string>(),
            t["function"]!["description"]!.GetValue<string>(),
            JsonSerializer.Deserialize<JsonElement>(t["function"]!["parameters"]!.ToJsonString()))).ToList();
    }

    private static List<ChatMessage> ToolRoundTrip() =>
    [
        new(ChatRole.User, "What's the weather in Paris?"),
        new(ChatRole.Assistant, [new FunctionCallContent("call0001a", "get_weather", new Dictionary<string, object?> { ["location"] = "Paris, France", ["unit"] = "celsius" })]),
        new(ChatRole.Tool, [new FunctionResultContent("call0001a", "{\"temperature\": 22.5, \"condition\": \"sunny\"}")]),
    ];

    [Theory]
    [InlineData("qwen3-0.6b")]
    [InlineData("hermes-3-llama-3.1-8b-tool_use")]
    [InlineData("llama-3.2-3b-instruct")]
    public void ToolRoundTrip_FromMeAiContents_EqualsTheTransformersRender(string template)
    {
        var (config, expected) = Fixture(template);
        RenderedPrompt prompt = ChatPromptFormatter.Render(config, ToolRoundTrip(), new ChatOptions { Tools = Tools() }, now: new DateTime(2024, 7, 26));
        Assert.Equal(expected["06_tool_call_roundtrip"]!["output"]!.GetValue<string>(), prompt.Text);
    }

    [Fact]
    public void Instructions_BecomeTheSystemMessage_AndReasoningMapsToEnableThinking()
    {
        var (config, expected) = Fixture("qwen3-0.6b");
        var caseJson = JsonNode.Parse(File.ReadAllText(Path.Combine(ChatTemplateFixtureTests.FixtureRoot(), "cases", "11_thinking_disabled.json")))!;
        var messages = caseJson["messages"]!.AsArray().Select(m => new ChatMessage(new ChatRole(m!["role"]!.GetValue<string>()), m["content"]!.GetValue<string>())).ToList();
        var options = new ChatOptions { Reasoning = new ReasoningOptions { Effort = ReasoningEffort.None } };
        if (messages[0].Role == ChatRole.System)
        {
            options.Instructions = messages[0].Text;
            messages.RemoveAt(0);
        }

        Assert.Equal(expected["11_thinking_disabled"]!["output"]!.GetValue<string>(), ChatPromptFormatter.Render(config, messages, options).Text);
    }

    [Fact]
    public void TemplateErrors_Surface_AsChatTemplateException()
    {
        var (config, expected) = Fixture("gemma-2-2b-it");
        var ex = Assert.Throws<ChatTemplateException>(() => ChatPromptFormatter.Render(config, [new ChatMessage(ChatRole.User, "a"), new ChatMessage(ChatRole.User, "b")], null));
        Assert.Equal(expected["10_roles_not_alternating"]!["error"]!["message"]!.GetValue<string>(), ex.Message);
    }

    [Fact]
    public void NoTemplate_FallsBackToChatMl()
    {
        RenderedPrompt p = ChatPromptFormatter.Render(new TokenizerConfig(), [new ChatMessage(ChatRole.User, "hi")], null);
        Assert.Equal("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", p.Text);
        Assert.Contains("<|im_end|>", p.TurnTerminators);
    }
}

using System.Text.Json;
using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

public class AssistantOutputParserTests
{
    /// <summary>Streams <paramref name="output"/> in pieces of every size 1..7 and checks all splits give the same result.</summary>
    private static (string Text, string Reasoning, List<FunctionCallContent> Calls) Parse(ToolCallSyntax syntax, string output)
    {
        (string, string, List<FunctionCallContent>)? first = null;
        for (int size = 1; size <= 7; size++)
        {
            var parser = new AssistantOutputParser(syntax);
            var pieces = new List<(bool Reasoning, string Text)>();
            for (int i = 0; i < output.Length; i += size)
            {
                pieces.AddRange(parser.Push(output.Substring(i, Math.Min(size, output.Length - i))));
            }

            var (rest, calls) = parser.Finish();
            pieces.AddRange(rest);
            var result = (string.Concat(pieces.Where(p => !p.Reasoning).Select(p => p.Text)), string.Concat(pieces.Where(p => p.Reasoning).Select(p => p.Text)), calls);
            if (first is { } f)
            {
                Assert.Equal(f.Item1, result.Item1);
                Assert.Equal(f.Item2, result.Item2);
                Assert.Equal(f.Item3.Select(c => c.Name), result.calls.Select(c => c.Name));
            }

            first ??= result;
        }

        return first!.Value;
    }

    private static string Arg(FunctionCallContent c, string name) => ((JsonElement)c.Arguments![name]!).ToString();

    [Fact]
    public void Hermes_ToolCalls_AreParsed_AndNeverLeakIntoText()
    {
        var (text, _, calls) = Parse(ToolCallSyntax.Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris, France\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search_flights\", \"arguments\": {\"origin\": \"CDG\", \"max_stops\": 1}}\n</tool_call>");
        Assert.Equal("Let me check.\n", text);
        Assert.Equal(["get_weather", "search_flights"], calls.Select(c => c.Name));
        Assert.Equal("Paris, France", Arg(calls[0], "location"));
        Assert.Equal("1", Arg(calls[1], "max_stops"));
        Assert.Equal(2, calls.Select(c => c.CallId).Distinct().Count());
    }

    [Fact]
    public void MalformedToolCall_StaysText()
    {
        string output = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {oops}\n</tool_call>";
        var (text, _, calls) = Parse(ToolCallSyntax.Hermes, output);
        Assert.Empty(calls);
        Assert.Equal(output, text);
    }

    [Fact]
    public void LlamaJson_WholeReplyIsACall_ElseText()
    {
        var (text, _, calls) = Parse(ToolCallSyntax.LlamaJson, "{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\"}}");
        Assert.Equal(string.Empty, text);
        Assert.Equal("Paris", Arg(Assert.Single(calls), "location"));
        (text, _, calls) = Parse(ToolCallSyntax.LlamaJson, "The answer is {42}.");
        Assert.Empty(calls);
        Assert.Equal("The answer is {42}.", text);
    }

    [Fact]
    public void Mistral_ToolCalls_KeepTheirIds()
    {
        var (_, _, calls) = Parse(ToolCallSyntax.Mistral, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}, \"id\": \"abc123def\"}]");
        Assert.Equal("abc123def", Assert.Single(calls).CallId);
    }

    [Fact]
    public void Granite_ToolCalls_FollowTheirMarker_AndNeverStreamAsText()
    {
        var (text, _, calls) = Parse(ToolCallSyntax.Granite,
            "<|tool_call|>[{\"arguments\": {\"location\": \"Paris\"}, \"name\": \"get_weather\"}, {\"name\": \"get_time\", \"arguments\": {}}]");
        Assert.Equal(string.Empty, text);
        Assert.Equal(["get_weather", "get_time"], calls.Select(c => c.Name));
        Assert.Equal("Paris", Arg(calls[0], "location"));
        Assert.Equal(ToolCallSyntax.Granite, AssistantOutputParser.Detect("{{ '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['tool_calls'] | tojson }}"));
        (text, _, calls) = Parse(ToolCallSyntax.Granite, "No tools needed: 42.");
        Assert.Empty(calls);
        Assert.Equal("No tools needed: 42.", text);
    }

    [Fact]
    public void Think_BecomesReasoning_NotText()
    {
        var (text, reasoning, calls) = Parse(ToolCallSyntax.None, "<think>\nThe user wants a number.\n</think>\n\n42");
        Assert.Equal("42", text);
        Assert.Equal("The user wants a number.", reasoning.Trim());
        Assert.Empty(calls);
    }

    [Fact]
    public void Detect_FindsTheSyntaxOfRealTemplates()
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        string T(string name) => File.ReadAllText(Path.Combine(root, "templates", name + ".jinja"));
        Assert.Equal(ToolCallSyntax.Hermes, AssistantOutputParser.Detect(T("qwen3-0.6b")));
        Assert.Equal(ToolCallSyntax.Hermes, AssistantOutputParser.Detect(T("hermes-3-llama-3.1-8b-tool_use")));
        Assert.Equal(ToolCallSyntax.Mistral, AssistantOutputParser.Detect(T("mistral-nemo-instruct-2407")));
        Assert.Equal(ToolCallSyntax.LlamaJson, AssistantOutputParser.Detect(T("llama-3.2-3b-instruct")));
        Assert.Equal(ToolCallSyntax.None, AssistantOutputParser.Detect(T("gemma-2-2b-it")));
    }
}

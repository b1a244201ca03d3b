using System.ComponentModel;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

public class JsonConstraintTests
{
    private static JsonElement Schema(string json) => JsonSerializer.Deserialize<JsonElement>(json);

    private static bool Accepts(JsonElement? schema, string text, bool complete = true)
    {
        var c = JsonConstraint.Create(schema);
        return c.Advance(Encoding.UTF8.GetBytes(text)) && (!complete || c.CanEnd);
    }

    [Theory]
    [InlineData("{\"a\": [1, 2.5e3, -0.1, true, false, null, \"x\\n\\u00e9\"]}")]
    [InlineData("[]")]
    [InlineData("\"é 🙂\"")]
    [InlineData("42")]
    public void AnyJson_AcceptsValidDocuments(string doc) => Assert.True(Accepts(null, doc));

    [Theory]
    [InlineData("{\"a\" 1}")]
    [InlineData("[1,]")]
    [InlineData("{,}")]
    [InlineData("01")]
    [InlineData("tru")]
    [InlineData("\"a\nb\"")]
    [InlineData("{\"a\": 1}}")]
    public void AnyJson_RejectsInvalidOrIncomplete(string doc) => Assert.False(Accepts(null, doc));

    [Fact]
    public void Schema_RequiredKeysTypesAndEnums_AreEnforced()
    {
        var s = Schema("""{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"mood":{"enum":["happy","sad"]}},"required":["name","age"],"additionalProperties":false}""");
        Assert.True(Accepts(s, """{"name": "Jimbo", "age": 15, "mood": "sad"}"""));
        Assert.True(Accepts(s, """{"age": 15, "name": "J"}"""));
        Assert.False(Accepts(s, """{"name": "J"}"""));                      // age missing: '}' refused
        Assert.False(Accepts(s, """{"name": "J", "age": 1.5}""", complete: false));   // integer only
        Assert.False(Accepts(s, """{"name": 3""", complete: false));       // wrong type
        Assert.False(Accepts(s, """{"nick""", complete: false));           // unknown key
        Assert.False(Accepts(s, """{"name": "J", "age": 1, "mood": "angry""", complete: false));
        Assert.False(Accepts(s, """{"name": "J", "name""", complete: false));   // no duplicate keys
    }

    [Fact]
    public void Wrapped_ToolCall_MustSpellThePrefixAndSuffix()
    {
        var c = OutputConstraint.Wrapped("<tool_call>\n", Schema("""{"type":"object","properties":{"name":{"const":"f"}},"required":["name"],"additionalProperties":false}"""), "\n</tool_call>").Start();
        Assert.Null(c.TryAdvance("<tool_cal!"u8));
        var done = c.TryAdvance(Encoding.UTF8.GetBytes("<tool_call>\n{\"name\": \"f\"}\n</tool_call>"));
        Assert.NotNull(done);
        Assert.True(done!.IsComplete);
        Assert.Null(c.TryAdvance(Encoding.UTF8.GetBytes("<tool_call>\n{\"name\": \"g\"")));
    }

    public sealed record Person(string Name, int Age, bool Member);

    [Description("Gets the weather for a city.")]
    private static string GetWeather([Description("the city")] string city, int days) => $"sunny in {city} for {days} days";

    [Fact]
    public async Task GetResponseAsyncOfT_OnATinyRandomModel_ReturnsASchemaValidObject()
    {
        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), ContextLength = 512, DType = "float32" });
        using var client = new CoralChatClient(host);
        ChatResponse<Person> response = await client.GetResponseAsync<Person>("Describe a person.", new ChatOptions { Temperature = 0, MaxOutputTokens = 800 });
        Assert.True(response.TryGetResult(out Person? person), response.Text);
        Assert.NotNull(person!.Name);
        using JsonDocument doc = JsonDocument.Parse(response.Text);
        Assert.Equal(JsonValueKind.Number, doc.RootElement.GetProperty("age").ValueKind);

        var json = await client.GetResponseAsync("Anything", new ChatOptions { ResponseFormat = ChatResponseFormat.Json, Temperature = 0.8f, Seed = 3, MaxOutputTokens = 300 });
        using JsonDocument any = JsonDocument.Parse(json.Text);   // throws if not JSON
    }

    [Fact]
    public async Task RequireSpecific_ForcesThatCall_AndFunctionInvocationRoundTrips()
    {
        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), ContextLength = 1024, DType = "float32" });
        using var coral = new CoralChatClient(host);
        AIFunction weather = AIFunctionFactory.Create(GetWeather, "get_weather");
        var options = new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("get_weather"), Temperature = 0, MaxOutputTokens = 600 };

        ChatResponse forced = await coral.GetResponseAsync("Weather in Paris?", options);
        Assert.Equal(ChatFinishReason.ToolCalls, forced.FinishReason);
        FunctionCallContent call = Assert.Single(forced.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.True(call.Arguments!.ContainsKey("city"));
        Assert.DoesNotContain("<tool_call>", forced.Text);

        int invoked = 0;
        AIFunction counted = AIFunctionFactory.Create((string city, int days) => { invoked++; return GetWeather(city, days); }, "get_weather", "Gets the weather for a city.");
        IChatClient pipeline = coral.AsBuilder().UseFunctionInvocation().Build();
        ChatResponse final = await pipeline.GetResponseAsync("Weather in Paris?",
            new ChatOptions { Tools = [counted], ToolMode = ChatToolMode.RequireSpecific("get_weather"), Temperature = 0, MaxOutputTokens = 600 });
        Assert.True(invoked >= 1);
        Assert.Contains(final.Messages.SelectMany(m => m.Contents), c => c is FunctionResultContent);
    }

    /// <summary>A forced call on a Granite template is written in Granite's syntax (<c>&lt;|tool_call|&gt;[…]</c>, the
    /// marker a special token) and comes back as a call, the syntax never in the text.</summary>
    [Fact]
    public async Task RequiredToolCall_OnAGraniteTemplate_UsesItsSyntax()
    {
        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("granite"), ContextLength = 1024, DType = "float32" });
        using var coral = new CoralChatClient(host);
        AIFunction weather = AIFunctionFactory.Create(GetWeather, "get_weather");
        ChatResponse forced = await coral.GetResponseAsync("Weather in Paris?",
            new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("get_weather"), Temperature = 0, MaxOutputTokens = 600 });
        Assert.Equal(ChatFinishReason.ToolCalls, forced.FinishReason);
        FunctionCallContent call = Assert.Single(forced.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.DoesNotContain("tool_call", forced.Text);
    }
}

using System.Text.Json.Nodes;

namespace Coral.AI.Tests;

/// <summary>
/// Every real chat template in ../shared/data/chat-templates rendered against every case, compared byte for byte with
/// what Python transformers renders (or failing where it fails, with the template's own message for raise_exception).
/// </summary>
public class ChatTemplateFixtureTests
{
    private static readonly DateTime FixedNow = new(2024, 7, 26, 0, 0, 0);

    internal static string FixtureRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Coral.AI.sln")))
            {
                return Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared", "data", "chat-templates"));
            }
        }

        throw new DirectoryNotFoundException("repository root not found");
    }

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        string root = FixtureRoot();
        foreach (string template in Directory.GetFiles(Path.Combine(root, "templates"), "*.jinja").Select(Path.GetFileNameWithoutExtension).Order()!)
        {
            foreach (string c in Directory.GetFiles(Path.Combine(root, "cases"), "*.json").Select(Path.GetFileNameWithoutExtension).Order()!)
            {
                data.Add(template, c);
            }
        }

        return data;
    }

    /// <summary>The variables transformers passes: messages, tools, documents, add_generation_prompt, set special tokens, kwargs.</summary>
    internal static Dictionary<string, object?> Variables(JsonObject caseJson, JsonObject meta)
    {
        var vars = new Dictionary<string, object?>
        {
            ["messages"] = JinjaValues.FromJson(caseJson["messages"]),
            ["tools"] = JinjaValues.FromJson(caseJson["tools"]),
            ["documents"] = JinjaValues.FromJson(caseJson["documents"]),
            ["add_generation_prompt"] = caseJson["add_generation_prompt"]?.GetValue<bool>() ?? false,
        };
        foreach (var (k, v) in meta["special_tokens"] as JsonObject ?? [])
        {
            vars[k] = JinjaValues.FromJson(v);
        }

        foreach (var (k, v) in caseJson["kwargs"] as JsonObject ?? [])
        {
            vars[k] = JinjaValues.FromJson(v);
        }

        return vars;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Render_MatchesTransformers(string template, string caseId)
    {
        string root = FixtureRoot();
        string source = File.ReadAllText(Path.Combine(root, "templates", template + ".jinja"));
        var meta = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "templates", template + ".json")))!;
        var caseJson = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cases", caseId + ".json")))!;
        var expected = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "expected", template + ".json")))!["results"]![caseId]!;

        Func<string> render = () => JinjaTemplate.Parse(source).Render(Variables(caseJson, meta), FixedNow);
        if (expected["output"] is JsonNode output)
        {
            Assert.Equal(output.GetValue<string>(), render());
        }
        else
        {
            var ex = Assert.Throws<ChatTemplateException>(() => render());
            JsonNode error = expected["error"]!;
            if (error["raised_by"]!.GetValue<string>() == "raise_exception")
            {
                Assert.True(ex.RaisedByTemplate);
                Assert.Equal(error["message"]!.GetValue<string>(), ex.Message);
            }
        }
    }
}

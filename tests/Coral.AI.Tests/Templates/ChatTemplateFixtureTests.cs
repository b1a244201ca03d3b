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

/// <summary><c>coral template</c> renders the fixtures byte for byte too.</summary>
public class TemplateCommandTests
{
    [Theory]
    [InlineData("llama-3.2-3b-instruct", "05_tools_offered")]
    [InlineData("qwen3-0.6b", "12_reasoning_in_history")]
    [InlineData("mistral-nemo-instruct-2407", "08_unicode_quotes")]
    [InlineData("gemma-2-2b-it", "10_roles_not_alternating")]
    [InlineData("hermes-3-llama-3.1-8b-tool_use", "01_single_user")]
    public async Task CoralTemplate_PrintsTheExpectedRender(string template, string caseId)
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        var meta = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(root, "templates", template + ".json")))!;
        var caseJson = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cases", caseId + ".json")))!;
        var context = new System.Text.Json.Nodes.JsonObject
        {
            ["messages"] = caseJson["messages"]!.DeepClone(),
            ["tools"] = caseJson["tools"]?.DeepClone(),
            ["documents"] = caseJson["documents"]?.DeepClone(),
            ["add_generation_prompt"] = caseJson["add_generation_prompt"]?.GetValue<bool>() ?? false,
        };
        foreach (var (k, v) in meta["special_tokens"] as System.Text.Json.Nodes.JsonObject ?? [])
        {
            context[k] = v?.DeepClone();
        }

        foreach (var (k, v) in caseJson["kwargs"] as System.Text.Json.Nodes.JsonObject ?? [])
        {
            context[k] = v?.DeepClone();
        }

        string contextFile = Path.Combine(ModelZoo.TempFolder("template-cli"), "context.json");
        File.WriteAllText(contextFile, context.ToJsonString());
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["template", "--template", Path.Combine(root, "templates", template + ".jinja"), "--context", contextFile, "--now", "2024-07-26T00:00:00"], stdout, stderr, TextReader.Null);
        var expected = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(root, "expected", template + ".json")))!["results"]![caseId]!;
        if (expected["output"] is System.Text.Json.Nodes.JsonNode output)
        {
            Assert.Equal(0, code);
            Assert.Equal(output.GetValue<string>(), stdout.ToString());
        }
        else
        {
            Assert.NotEqual(0, code);
            Assert.Equal(string.Empty, stdout.ToString());
            if (expected["error"]!["raised_by"]!.GetValue<string>() == "raise_exception")
            {
                Assert.Equal(expected["error"]!["message"]!.GetValue<string>(), stderr.ToString().TrimEnd('\n'));
            }
        }
    }
}

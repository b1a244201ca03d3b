using System.Text.Json.Nodes;

namespace Coral.AI.Tests;

/// <summary>
/// Mangled chat templates — the real ones with characters deleted, Jinja tokens inserted or spans repeated — either render
/// or fail with a <see cref="ChatTemplateException"/>: a model's broken template is reported, never a crash or a hang.
/// </summary>
public class JinjaFuzzTests
{
    private static readonly string[] Insertions =
    [
        "{%", "%}", "{{", "}}", "{#", "#}", "(", ")", "[", "]", "|", ".", "'", "\"", ",", ":", " if ", " else ", " for ", " in ",
        "{% endfor %}", "{% endif %}", "-", "+", "*", "/", "%", "~", "0", "-1", "not ", " and ", "loop.", "messages[", "|length",
        "|tojson", "|trim", "{% set x = ", "namespace(", "raise_exception(", "none", "[0]", "[-1]", "[1:]", "==",
    ];

    [Fact]
    public async Task MangledTemplates_RenderOrFailWithAChatTemplateException()
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        var caseJson = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cases", "06_tool_call_roundtrip.json")))!;
        var random = new Random(77);
        var failures = new List<string>();
        int rendered = 0, refused = 0;
        foreach (string file in Directory.GetFiles(Path.Combine(root, "templates"), "*.jinja").Order())
        {
            string source = File.ReadAllText(file);
            var meta = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.ChangeExtension(file, ".json")))!;
            for (int trial = 0; trial < 60; trial++)
            {
                string mangled = source;
                for (int edit = 1 + random.Next(3); edit > 0; edit--)
                {
                    int at = random.Next(mangled.Length);
                    mangled = random.Next(3) switch
                    {
                        0 => mangled.Remove(at, Math.Min(1 + random.Next(3), mangled.Length - at)),
                        1 => mangled.Insert(at, Insertions[random.Next(Insertions.Length)]),
                        _ => mangled.Insert(at, mangled.Substring(at, Math.Min(random.Next(1, 40), mangled.Length - at))),
                    };
                }

                try
                {
                    await Task.Run(() => JinjaTemplate.Parse(mangled).Render(ChatTemplateFixtureTests.Variables(caseJson, meta), new DateTime(2024, 7, 26)))
                        .WaitAsync(TimeSpan.FromSeconds(10));
                    rendered++;
                }
                catch (ChatTemplateException)
                {
                    refused++;
                }
                catch (TimeoutException)
                {
                    failures.Add($"{Path.GetFileName(file)} #{trial}: no result in 10 s");
                }
                catch (Exception ex)
                {
                    failures.Add($"{Path.GetFileName(file)} #{trial}: {ex.GetType().Name}: {ex.Message.Split('\n')[0]}");
                }
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} mangled templates failed otherwise ({rendered} rendered, {refused} refused):\n" + string.Join("\n", failures.Take(20)));
        Assert.True(refused > 100, $"only {refused} refused");
    }
}

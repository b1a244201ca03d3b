using System.Diagnostics;

namespace Coral.AI.Tests;

public class JinjaEngineTests
{
    private static string Render(string template, Dictionary<string, object?>? vars = null, JinjaLimits? limits = null) =>
        JinjaTemplate.Parse(template).Render(vars ?? [], new DateTime(2024, 7, 26), limits);

    [Theory]
    [InlineData("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|{{ 1 / 2 }}", "7|3|2|1024|0.5")]
    [InlineData("{{ [1, 2, 3][::-1] }}|{{ 'hello'[1:3] }}|{{ [1,2,3][-1] }}", "[3, 2, 1]|el|3")]
    [InlineData("{{ 'a' ~ none ~ 1 }}|{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e-7 }}|{{ {'a': [1, 'x']} }}", "aNone1|None|True|1.0|1e-07|{'a': [1, 'x']}")]
    [InlineData("{% for x in [1,2,3] if x != 2 %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}", "1/2,2/2")]
    [InlineData("{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", "3")]
    [InlineData("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", "1")]
    [InlineData("{{ '  a b  '.strip() }}|{{ 'a,b,c'.split(',')[1] }}|{{ 'Hi'.startswith(('x', 'H')) }}|{{ '\u00a0x\u3000' | trim }}", "a b|b|True|x")]
    [InlineData("{{ {'b': 1, 'a': 2} | tojson }}|{{ [1.5, 'é', none, true] | tojson }}|{{ {'k': [1]} | tojson(indent=2) }}", "{\"b\": 1, \"a\": 2}|[1.5, \"é\", null, true]|{\n  \"k\": [\n    1\n  ]\n}")]
    [InlineData("{% macro m(a, b='x') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(2, b='y') }}", "1x2y")]
    [InlineData("{{ x is defined }}|{{ x | default('d') }}|{{ x | length }}|{% for i in x %}no{% endfor %}|{{ 'a' in x }}", "False|d|0||False")]
    [InlineData("{{ [{'r': 'u'}, {'r': 'a'}] | selectattr('r', 'equalto', 'a') | list | length }}|{{ ['a', 'b'] | join('-') }}|{{ [3, 1] | map('string') | join }}", "1|a-b|31")]
    [InlineData("  {% if true %}\n    x\n  {% endif %}\ny\n", "    x\ny")]
    [InlineData("a  {%- if true -%}  b  {%- endif -%}  c", "abc")]
    [InlineData("{% raw %}{{ not parsed }}{% endraw %}", "{{ not parsed }}")]
    [InlineData("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %d, %Y') }}", "26 Jul 2024|July 26, 2024")]
    public void Semantics_MatchJinja(string template, string expected) => Assert.Equal(expected, Render(template));

    [Theory]
    [InlineData("{{ 'a' + none }}")]
    [InlineData("{{ x.y }}")]
    [InlineData("{% for x in none %}{% endfor %}")]
    [InlineData("{{ 'x' in none }}")]
    [InlineData("{{ [1].append(2) }}")]
    [InlineData("{{ 1 / 0 }}")]
    [InlineData("{{ nofilter | frobnicate }}")]
    [InlineData("{% if %}")]
    [InlineData("{% for x in y %}")]
    [InlineData("{{ 'unterminated }}")]
    [InlineData("{% endif %}")]
    [InlineData("{{ 'x'.replace() }}")]
    [InlineData("{{ [1] | selectattr() | list }}")]
    public void Errors_AreTemplateExceptions(string template) =>
        Assert.Throws<ChatTemplateException>(() => Render(template));

    [Fact]
    public void RaiseException_SurfacesTheTemplatesMessage()
    {
        var ex = Assert.Throws<ChatTemplateException>(() => Render("{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"));
        Assert.True(ex.RaisedByTemplate);
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", ex.Message);
    }

    [Theory]
    [InlineData("{% for i in range(100000000) %}{% endfor %}")]
    [InlineData("{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}")]
    [InlineData("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")]
    [InlineData("{% for i in range(1000000) %}{{ 'xxxxxxxxxxxxxxxx' }}{% endfor %}")]
    [InlineData("{{ 'x' * 100000000 }}")]
    [InlineData("{% set s = namespace(v='ab') %}{% for i in range(60) %}{% set s.v = s.v ~ s.v %}{% endfor %}")]
    public void HostileTemplates_FailFast_WithAClearError(string template)
    {
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<ChatTemplateException>(() => Render(template, limits: new JinjaLimits(MaxOutputChars: 1_000_000, MaxIterations: 1_000_000, MaxSeconds: 5)));
        Assert.False(ex.RaisedByTemplate);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed}");
    }

    [Fact]
    public void DeeplyNestedExpressions_AreRejected_NotAStackOverflow()
    {
        string deep = "{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}";
        Assert.Throws<ChatTemplateException>(() => Render(deep));
        string deepIf = string.Concat(Enumerable.Repeat("{% if true %}", 5000)) + string.Concat(Enumerable.Repeat("{% endif %}", 5000));
        Assert.Throws<ChatTemplateException>(() => Render(deepIf));
    }

    [Fact]
    public void Fuzz_MutatedRealTemplates_RenderOrFailCleanly()
    {
        string root = ChatTemplateFixtureTests.FixtureRoot();
        string[] templates = Directory.GetFiles(Path.Combine(root, "templates"), "*.jinja").Select(File.ReadAllText).ToArray();
        var caseJson = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(root, "cases", "06_tool_call_roundtrip.json")))!;
        var vars = ChatTemplateFixtureTests.Variables(caseJson, new System.Text.Json.Nodes.JsonObject());
        string[] junk = ["{%", "%}", "{{", "}}", "(", ")", "[", "]", "'", "\"", "|", ".", "for", "endfor", "if", "-", "~", "{#", "#}", "loop", "is", "not"];
        var rng = new Random(12345);
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < 600; i++)
        {
            string t = templates[rng.Next(templates.Length)];
            int at = rng.Next(t.Length);
            t = rng.Next(3) switch
            {
                0 => t[..at],                                                   // truncated
                1 => t[..at] + junk[rng.Next(junk.Length)] + t[at..],           // token inserted
                _ => t.Remove(at, Math.Min(rng.Next(1, 8), t.Length - at)),     // characters deleted
            };
            try
            {
                JinjaTemplate.Parse(t).Render(vars, null, new JinjaLimits(MaxOutputChars: 200_000, MaxIterations: 100_000, MaxSeconds: 2));
            }
            catch (ChatTemplateException)
            {
            }
        }

        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60));
    }
}

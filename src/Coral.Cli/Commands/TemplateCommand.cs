using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Coral.AI;

namespace Coral.Cli;

/// <summary>
/// <c>coral template</c>: renders a chat template with a JSON context exactly as transformers would, printing the text
/// with nothing added. The context holds the template variables (messages, tools, documents, add_generation_prompt,
/// special tokens, extra kwargs); <c>--now</c> fixes strftime_now.
/// </summary>
internal static class TemplateCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--template", "--context", "--now" }, new HashSet<string>());
        string templatePath = cl.Required("--template");
        string contextPath = cl.Required("--context");
        if (!File.Exists(templatePath))
        {
            throw new ArgumentException($"--template '{templatePath}' does not exist.");
        }

        if (!File.Exists(contextPath))
        {
            throw new ArgumentException($"--context '{contextPath}' does not exist.");
        }

        DateTime? now = null;
        if (cl.Value("--now") is string text)
        {
            now = DateTime.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime t)
                ? t
                : throw new UsageException($"--now '{text}' is not a date-time (e.g. 2024-07-26T00:00:00).");
        }

        JsonObject context;
        try
        {
            context = JsonNode.Parse(File.ReadAllText(contextPath)) as JsonObject ?? throw new ArgumentException($"--context '{contextPath}' must hold a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new ArgumentException($"--context '{contextPath}' is not valid JSON: {ex.Message}", ex);
        }

        var variables = context.ToDictionary(kv => kv.Key, kv => JinjaValues.FromJson(kv.Value));
        try
        {
            stdout.Write(JinjaTemplate.Parse(File.ReadAllText(templatePath)).Render(variables, now));
            stdout.Flush();
            return 0;
        }
        catch (ChatTemplateException ex)
        {
            stderr.WriteLine(ex.Message);
            return 1;
        }
    }
}

namespace Coral.Cli;

/// <summary>
/// Finds the bundled demo pair (samples/models/coral-demo-chat and its CORAL drafter) for commands run without
/// <c>--model</c>: under <c>$CORAL_DEMO_MODELS</c>, else in samples/models of the current directory or of any folder
/// above it or above the executable.
/// </summary>
internal static class DemoModels
{
    public const string Target = "coral-demo-chat";
    public const string Drafter = "coral-demo-chat-drafter";

    public static (string Target, string? Drafter)? Locate()
    {
        var roots = new List<string>();
        if (Environment.GetEnvironmentVariable("CORAL_DEMO_MODELS") is { Length: > 0 } env)
        {
            roots.Add(env);
        }

        foreach (string start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (DirectoryInfo? d = new(start); d is not null; d = d.Parent)
            {
                roots.Add(Path.Combine(d.FullName, "samples", "models"));
            }
        }

        foreach (string root in roots)
        {
            string target = Path.Combine(root, Target);
            if (File.Exists(Path.Combine(target, "config.json")))
            {
                string drafter = Path.Combine(root, Drafter);
                return (target, File.Exists(Path.Combine(drafter, "config.json")) ? drafter : null);
            }
        }

        return null;
    }
}

using Coral.AI;

namespace Coral.Cli;

/// <summary>Builds a model host from the common options (--model, --device, --dtype).</summary>
internal static class ModelLoading
{
    public static CoralChatClientOptions Options(CommandLine cl) => new()
    {
        ModelPath = cl.Value("--model") ?? throw new UsageException("--model is required (no bundled demo model yet)."),
        Device = cl.Value("--device") ?? "cpu",
        DType = cl.Value("--dtype"),
    };

    public static CoralModelHost LoadHost(CommandLine cl, TextWriter stderr)
    {
        CoralChatClientOptions options = Options(cl);
        string? invalid = CoralChatClientOptionsValidator.Check(options);
        if (invalid is not null)
        {
            throw new ArgumentException(invalid.Replace("CoralChatClientOptions.ModelPath", "--model").Replace("CoralChatClientOptions.", "--"));
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        CoralModelHost host = CoralModelHost.Load(options);
        stderr.WriteLine($"[loaded {host.ModelId} on {options.Device} in {clock.ElapsedMilliseconds} ms]");
        return host;
    }
}

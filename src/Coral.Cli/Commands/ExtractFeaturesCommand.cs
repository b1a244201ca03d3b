using Coral.AI;
using Coral.AI.Training;

namespace Coral.Cli;

/// <summary><c>coral extract-features</c>: the target's post-norm features of the training data, in resumable bf16 shards.</summary>
internal static class ExtractFeaturesCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string> { "--target", "--data", "--out", "--max-length", "--shard-size", "--limit", "--device", "--dtype", "--regenerate-temperature", "--regenerate-max-tokens" },
            new HashSet<string> { "--regenerate" });
        string data = cl.Required("--data");
        string output = cl.Required("--out");
        var options = new CoralChatClientOptions { ModelPath = cl.Required("--target"), Device = cl.Value("--device") ?? "cpu", DType = cl.Value("--dtype") ?? "float32" };
        string? invalid = CoralChatClientOptionsValidator.Check(options);
        if (invalid is not null)
        {
            throw new ArgumentException(invalid.Replace("CoralChatClientOptions.ModelPath", "--target"));
        }

        if (!File.Exists(data))
        {
            throw new ArgumentException($"--data '{data}' does not exist.");
        }

        using CoralModelHost host = CoralModelHost.Load(options);
        InferenceEngine engine = host.GetEngineAsync(CancellationToken.None).GetAwaiter().GetResult();
        SamplingParameters? regenerate = cl.Flag("--regenerate")
            ? new SamplingParameters { Temperature = cl.Float("--regenerate-temperature") ?? 0f, Seed = 0 }
            : null;
        int total = FeatureExtractor.Run(engine, data, output, cl.Int("--max-length") ?? 1024, cl.Int("--shard-size") ?? 64, cl.Int("--limit"), stderr,
            regenerate, cl.Int("--regenerate-max-tokens") ?? 256);
        stderr.WriteLine($"{total} sequences in {output}");
        return 0;
    }
}

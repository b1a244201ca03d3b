using Coral.AI;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.Cli;

/// <summary>
/// <c>coral train-draft</c>: trains a drafter for a target. <c>--data</c> is a features folder (from
/// <c>coral extract-features</c>) or training data (JSONL/text), whose features are extracted into <c>&lt;out&gt;/features</c>
/// first. Methods: <c>eagle</c> (hass and coral are the trainer issue's next steps).
/// </summary>
internal static class TrainDraftCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string> { "--target", "--data", "--method", "--out", "--init", "--steps", "--lr", "--seed", "--max-length" }, new HashSet<string>());
        string target = cl.Required("--target"), data = cl.Required("--data"), output = cl.Required("--out");
        string method = cl.Value("--method") ?? "eagle";
        if (method != "eagle")
        {
            throw new NotSupportedException($"--method {method}: only 'eagle' is implemented so far (hass and coral are in progress).");
        }

        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 4096);
        string features = data;
        if (!File.Exists(Path.Combine(data, FeatureExtractor.ManifestName)))
        {
            features = Path.Combine(output, "features");
            FeatureExtractor.Run(engine, data, features, cl.Int("--max-length") ?? 1024, progress: stderr);
        }

        int seed = (int)(cl.Long("--seed") ?? 0);
        string init = cl.Value("--init") ?? Path.Combine(output, "init");
        if (cl.Value("--init") is null)
        {
            DraftCheckpoint.CreateRandom(target, init, new DraftInitOptions { Seed = seed, Scale = 0.3f });
        }

        var sequences = FeatureStore.Read(features).ToList();
        using var drafter = TrainableDrafter.Load(init, engine.Model.Config);
        var options = new DraftTrainingOptions { Steps = cl.Int("--steps") ?? 1000, LearningRate = cl.Float("--lr") ?? 1e-3, Seed = seed };
        new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options).Train(sequences, Path.Combine(output, "metrics.jsonl"), stderr);
        drafter.Save(output);
        stderr.WriteLine($"wrote the drafter to {output} ({sequences.Count} sequences, {options.Steps} steps; metrics in metrics.jsonl)");
        return 0;
    }
}

using System.Globalization;
using Coral.AI;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.Cli;

/// <summary><c>coral train-router</c>: CORAL stage 2 on a trained drafter (frozen): grouping, router training, recall@k.</summary>
internal static class TrainRouterCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string> { "--target", "--draft", "--data", "--groups", "--topk", "--hidden", "--grouping", "--steps", "--lr", "--seed", "--depths", "--labels" }, new HashSet<string>());
        string target = cl.Required("--target"), draft = cl.Required("--draft"), data = cl.Required("--data");
        GroupingMethod grouping = (cl.Value("--grouping") ?? "kmeans") switch
        {
            "kmeans" => GroupingMethod.KMeans,
            "frequency" => GroupingMethod.Frequency,
            "contiguous" => GroupingMethod.Contiguous,
            string other => throw new UsageException($"--grouping '{other}' is not one of kmeans, frequency, contiguous."),
        };
        RouterLabels labels = (cl.Value("--labels") ?? "target") switch
        {
            "target" => RouterLabels.Target,
            "drafter" => RouterLabels.Drafter,
            string other => throw new UsageException($"--labels '{other}' is not one of target, drafter."),
        };
        int depths = cl.Int("--depths") ?? 1;
        if (depths is < 1 or > 8)
        {
            throw new UsageException($"--depths {depths} is not a number of draft steps in 1..8.");
        }

        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 4096);
        string features = FeatureExtractor.Ensure(engine, data, Path.Combine(draft, "router-features"), progress: stderr);

        var options = new RouterTrainingOptions
        {
            Groups = cl.Int("--groups") ?? 16,
            TopK = cl.Int("--topk") ?? 2,
            Hidden = cl.Int("--hidden") ?? 64,
            Grouping = grouping,
            Steps = cl.Int("--steps") ?? 500,
            LearningRate = cl.Float("--lr") ?? 3e-3,
            Seed = (int)(cl.Long("--seed") ?? 0),
            Depths = depths,
            Labels = labels,
        };
        using var drafter = TrainableDrafter.Load(draft, engine.Model.Config);
        var trainer = new RouterTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options);
        RouterTrainingResult result = trainer.Train(FeatureStore.Read(features).ToList());
        trainer.Save(draft, result.Permutation, result.Weights);
        string byDepth = string.Join(", ", result.RecallByDepth.Select(r => r.ToString("F3", CultureInfo.InvariantCulture)));
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"router: {options.Groups} groups ({options.Grouping}), top-{options.TopK}, {options.Labels.ToString().ToLowerInvariant()} labels, draft steps 1..{depths}: " +
            $"recall@{options.TopK} {result.RecallBefore:F3} (untrained) -> {result.RecallAfter:F3} (by step: {byDepth}); " +
            $"the drafter's own top-1 kept {result.DrafterRecall:F3}; a draft step computes {100.0 * options.TopK / options.Groups:F1}% of the LM head"));
        return 0;
    }
}

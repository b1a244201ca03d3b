using Coral.AI;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.Cli;

/// <summary>
/// <c>coral train-draft</c>: trains a drafter for a target. <c>--data</c> is a features folder (from
/// <c>coral extract-features</c>) or training data (JSONL/text), whose features are extracted into <c>&lt;out&gt;/features</c>
/// first. Methods: <c>eagle</c>, <c>hass</c> (n-step alignment, optional top-K term), <c>coral</c> (hass + CSRA, variants
/// supcon / consecutive / teacher). CORAL's router stage is <c>coral train-router</c>, run on the result.
/// </summary>
internal static class TrainDraftCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            new HashSet<string> { "--target", "--data", "--method", "--out", "--init", "--steps", "--lr", "--seed", "--max-length",
                "--align-steps", "--topk-weight", "--csra-weight", "--csra-tau", "--csra-variant", "--checkpoint-every", "--held-out", "--matmul", "--format", "--pack" }, new HashSet<string> { "--bf16" });
        NativeHeap.KeepFreedMemory();   // large tensors freed every step stay mapped for the next one
        string target = cl.Required("--target"), data = cl.Required("--data"), output = cl.Required("--out");
        if ((cl.Value("--format") ?? "eagle") != "eagle")
        {
            // The published EAGLE layout (config.json + model.safetensors, unprefixed keys; a CORAL router goes in a
            // sibling router.safetensors) is the one format: EAGLE-style servers load it as is.
            throw new UsageException($"--format '{cl.Value("--format")}' is not supported; the drafter is written in the EAGLE layout (--format eagle).");
        }

        DraftMethod method = (cl.Value("--method") ?? "eagle") switch
        {
            "eagle" => DraftMethod.Eagle,
            "hass" => DraftMethod.Hass,
            "coral" => DraftMethod.Coral,
            string other => throw new UsageException($"--method '{other}' is not one of eagle, hass, coral."),
        };
        CsraVariant variant = (cl.Value("--csra-variant") ?? "supcon") switch
        {
            "supcon" => CsraVariant.SupCon,
            "consecutive" => CsraVariant.Consecutive,
            "teacher" => CsraVariant.Teacher,
            string other => throw new UsageException($"--csra-variant '{other}' is not one of supcon, consecutive, teacher."),
        };

        Directory.CreateDirectory(output);   // with a features folder and --init nothing else creates it
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 4096);
        string features = FeatureExtractor.Ensure(engine, data, Path.Combine(output, "features"), cl.Int("--max-length") ?? 1024, stderr);

        int seed = (int)(cl.Long("--seed") ?? 0);
        string init = cl.Value("--init") ?? Path.Combine(output, "init");
        if (cl.Value("--init") is null)
        {
            DraftCheckpoint.CreateRandom(target, init, new DraftInitOptions { Seed = seed, Scale = 0.3f });
        }

        var all = FeatureStore.Read(features).ToList();
        double heldOutFraction = cl.Float("--held-out") ?? 0.05;
        if (heldOutFraction is < 0 or >= 1)
        {
            throw new UsageException($"--held-out {heldOutFraction} is not a fraction in [0, 1).");
        }

        int heldOutCount = (int)Math.Round(all.Count * heldOutFraction);
        int pack = cl.Int("--pack") ?? 512;
        var heldOut = FeatureStore.Pack(all.TakeLast(heldOutCount).ToList(), pack);
        var sequences = FeatureStore.Pack(all.Take(all.Count - heldOutCount).ToList(), pack);
        if (sequences.Count == 0)
        {
            throw new UsageException($"--data '{data}' leaves no training sequences ({all.Count} in all, {heldOutCount} held out by --held-out).");
        }

        using var drafter = TrainableDrafter.Load(init, engine.Model.Config);
        var options = new DraftTrainingOptions
        {
            Method = method,
            Steps = cl.Int("--steps") ?? 1000,
            LearningRate = cl.Float("--lr") ?? 1e-3,
            Seed = seed,
            AlignmentSteps = cl.Int("--align-steps") ?? 3,
            TopKWeight = cl.Float("--topk-weight") ?? 0,
            CsraVariant = variant,
            CsraWeight = cl.Float("--csra-weight") ?? 0.1,
            CsraTemperature = cl.Float("--csra-tau") ?? 0.1,
            CheckpointEvery = cl.Int("--checkpoint-every") ?? 100,
            Bf16Matmuls = PretrainCommand.Bf16Matmuls(cl, stderr),
        };
        new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options)
            .Train(sequences, Path.Combine(output, "metrics.jsonl"), stderr, Path.Combine(output, "checkpoint"), heldOut);
        drafter.Save(output, cl.Flag("--bf16"));
        TrainingPlot.Save(Path.Combine(output, "metrics.jsonl"), Path.Combine(output, "training.png"), $"{options.Method} drafter for {Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(target)))}");
        stderr.WriteLine($"wrote the drafter to {output} ({sequences.Count} sequences, {options.Steps} steps; metrics.jsonl, training.png)");
        return 0;
    }
}

using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class DraftTrainerTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // a bf16-stored drafter: its layer packed straight from the stored rows
    public void TrainingForward_EqualsTheInferenceDrafter(bool bf16)
    {
        string target = TransformerModelTests.ModelFor("llama");
        string draft = DrafterZoo.Random(target, "trainable-" + bf16, new DraftInitOptions { Seed = 8, FcBias = true, Bf16 = bf16 });
        using var model = TransformerModel.Load(target, torch.CPU, ScalarType.Float32, 256);
        using var inference = DraftModel.Load(draft, model, 256, exactWeights: true);
        Assert.Equal(bf16 && PackedMatrix.Enabled, inference.UsesPackedWeights);
        using var trainable = TrainableDrafter.Load(draft, model.Config);
        long[] next = [5, 17, 300, 42, 8, 999, 3];
        Tensor features = torch.randn(next.Length, model.Config.HiddenSize, generator: new Generator(3));
        using var cache = inference.CreateCache(32);
        float[] expected, actual;
        using (torch.no_grad())
        {
            expected = TorchTestHelpers.ToArray(inference.Forward(next, features, cache));
            actual = TorchTestHelpers.ToArray(trainable.Forward(model.Embedding.index_select(0, torch.tensor(next)), features));
        }

        Assert.True(TorchTestHelpers.MaxAbsDiff(expected, actual) < 1e-4f);
    }

    [Theory]
    [InlineData("llama-tied-scaled")]
    [InlineData("gemma3")]   // a Gemma target: scaled embedding, sandwich norms, sliding and global layers on two RoPE bases
    public void EagleTraining_LowersTheLoss_AndTheTrainedDrafterBeatsTheRandomOne(string name)
    {
        string target = TransformerModelTests.ModelFor(name);
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);

        // Self-distillation: the target's own greedy continuations are the training text.
        string data = Path.Combine(ModelZoo.TempFolder("self-distill-" + name), "text.jsonl");
        string[] words = ["river", "house", "light", "stone", "water", "night", "green", "music", "paper", "winter", "garden", "silver", "market", "bridge", "forest", "window"];
        string[] prompts = words.SelectMany(w => new[] { $"The {w}", $"A small {w}", $"Her {w} was" }).ToArray();
        File.WriteAllLines(data, prompts.Select(p =>
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode(p), SamplingParameters.Greedy, 48, []), null, default);
            return new System.Text.Json.Nodes.JsonObject { ["text"] = p + r.Text }.ToJsonString();
        }));
        string features = ModelZoo.TempFolder("self-distill-features-" + name);
        FeatureExtractor.Run(engine, data, features, maxLength: 128);
        var sequences = FeatureStore.Read(features).ToList();

        string init = DrafterZoo.Random(target, "to-train-" + name, new DraftInitOptions { Seed = 4, Scale = 0.3f });
        string trained = ModelZoo.TempFolder("trained-drafter-" + name);
        List<double> losses;
        using (var drafter = TrainableDrafter.Load(init, engine.Model.Config))
        {
            var trainer = new DraftTrainer(drafter, engine.Model.Embedding.to(ScalarType.Float32), engine.Model.Head.to(ScalarType.Float32),
                new DraftTrainingOptions { Steps = 400, LearningRate = 2e-3, Seed = 1 });
            losses = trainer.Train(sequences, Path.Combine(trained, "metrics.jsonl"));
            drafter.Save(trained);
        }

        Assert.True(losses.TakeLast(16).Average() < 0.7 * losses.Take(16).Average(), $"loss {losses.Take(16).Average():F3} -> {losses.TakeLast(16).Average():F3}");
        Assert.Equal(400, File.ReadLines(Path.Combine(trained, "metrics.jsonl")).Count());

        double Tau(string drafterFolder)
        {
            using var spec = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512, draftFolder: drafterFolder);
            int accepted = 0, cycles = 0;
            foreach (string p in new[] { "The ocean", "A quiet village", "His letter was" })
            {
                spec.ResetCache();
                var r = spec.Generate(new GenerationRequest(spec.Tokenizer.Encode(p), SamplingParameters.Greedy, 40, []) { Tree = new TreeShape(4, 4, 12, 0) }, null, default);
                accepted += r.Speculative!.AcceptedTokens;
                cycles += r.Speculative.Cycles;
            }

            return (double)accepted / cycles;
        }

        double random = Tau(init), learned = Tau(trained);
        string last = File.ReadLines(Path.Combine(trained, "metrics.jsonl")).Last();
        Assert.True(learned > random, $"τ trained {learned:F2} vs random {random:F2}; last metrics {last}; data {File.ReadLines(data).First()}");
    }
}

public class TrainDraftCommandTests
{
    [Fact]
    public async Task TrainDraft_FromJsonl_WritesALoadableDrafter()
    {
        string target = TransformerModelTests.ModelFor("llama");
        string data = Path.Combine(ModelZoo.TempFolder("cli-train"), "data.jsonl");
        File.WriteAllLines(data, ["""{"text": "The quick brown fox jumps over the lazy dog again and again."}""", """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]}"""]);
        string output = ModelZoo.TempFolder("cli-trained");
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", data, "--out", output, "--steps", "5"], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.Equal(5, File.ReadLines(Path.Combine(output, "metrics.jsonl")).Count());
        byte[] png = File.ReadAllBytes(Path.Combine(output, "training.png"));
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        using var engine = DrafterZoo.Engine(target, output);
        var request = new GenerationRequest(engine.Tokenizer.Encode("Hello"), SamplingParameters.Greedy, 10, []);
        var spec = engine.Generate(request, null, default);
        engine.ResetCache();
        Assert.Equal(engine.Generate(request with { Speculative = false }, null, default).TokenIds, spec.TokenIds);

        string coral = ModelZoo.TempFolder("cli-trained-coral");
        code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", data, "--out", coral, "--method", "coral", "--steps", "3", "--csra-variant", "teacher"], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", data, "--out", coral, "--method", "medusa"], new StringWriter(), stderr, TextReader.Null);
        Assert.Equal(2, code);
        foreach (string fraction in new[] { "1", "-0.5" })
        {
            var err = new StringWriter();
            code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", data, "--out", coral, "--held-out", fraction], new StringWriter(), err, TextReader.Null);
            Assert.Equal(2, code);
            Assert.Contains("--held-out", err.ToString());
        }

        // A features folder is used as it is (train-draft extracted one into <out>/features); training data is extracted first.
        string features = Path.Combine(output, "features");
        Assert.True(File.Exists(Path.Combine(features, FeatureExtractor.ManifestName)));
        code = await Coral.Cli.CliApp.RunAsync(["train-router", "--target", target, "--draft", output, "--data", features, "--groups", "4", "--steps", "3"], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.False(Directory.Exists(Path.Combine(output, "router-features")));
        code = await Coral.Cli.CliApp.RunAsync(["train-router", "--target", target, "--draft", coral, "--data", data, "--groups", "4", "--steps", "3"], new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.True(File.Exists(Path.Combine(coral, "router-features", FeatureExtractor.ManifestName)));

        // The documented pipeline: features and an initial drafter made beforehand, --out a folder that does not exist
        // yet (this failed writing metrics.jsonl: nothing created the folder when no features were extracted into it).
        string fresh = Path.Combine(ModelZoo.TempFolder("cli-train-fresh"), "nested", "draft");
        code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", features, "--init", output, "--out", fresh, "--steps", "2"],
            new StringWriter(), stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.True(File.Exists(Path.Combine(fresh, "model.safetensors")));
    }
}

public class HassTrainingForwardTests
{
    /// <summary>The property HASS training exists for: step j of the training forward computes, at every position, what
    /// the drafter computes after drafting j steps autoregressively at inference (fed its own previous outputs).</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void StepJ_EqualsJAutoregressiveDraftSteps(int j)
    {
        string target = TransformerModelTests.ModelFor("llama");
        string draft = DrafterZoo.Random(target, "hass-" + j, new DraftInitOptions { Seed = 12 });
        using var model = TransformerModel.Load(target, torch.CPU, ScalarType.Float32, 256);
        using var inference = DraftModel.Load(draft, model, 256, exactWeights: true);
        using var trainable = TrainableDrafter.Load(draft, model.Config);
        using var noGrad = torch.no_grad();
        int n = 9;
        long[] next = Enumerable.Range(0, n).Select(i => (long)(i * 37 % 900 + 3)).ToArray();
        Tensor f = torch.randn(n, model.Config.HiddenSize, generator: new Generator(5));
        Tensor e = model.Embedding.index_select(0, torch.tensor(next));

        // Training: steps 1..j, each feeding the previous step's predictions shifted right by one (first row: f_0).
        var sets = new List<Tensor> { f };
        Tensor p = trainable.ForwardStep(e, sets);
        for (int step = 2; step <= j; step++)
        {
            Tensor shifted = torch.cat([sets[^1].narrow(0, 0, 1), p.narrow(0, 0, n - 1)], 0);
            sets.Add(shifted);
            p = trainable.ForwardStep(e, sets);
        }

        float[] training = TorchTestHelpers.ToArray(p);
        int d = (int)model.Config.HiddenSize;
        for (int t = j - 1; t < n; t++)
        {
            using var cache = inference.CreateCache(32);
            int real = t - j + 2;                                    // pairs 0..t−j+1 use target features
            Tensor h = inference.Forward(next.Take(real).ToArray(), f.narrow(0, 0, real), cache);
            Tensor last = h.narrow(0, real - 1, 1);
            for (int pos = real; pos <= t; pos++)
            {
                last = inference.Forward([next[pos]], last, cache);
            }

            float[] expected = TorchTestHelpers.ToArray(last);
            Assert.True(TorchTestHelpers.MaxAbsDiff(expected, training[(t * d)..((t + 1) * d)]) < 1e-4f, $"step {j}, position {t}");
        }
    }
}

public class CoralTrainingTests
{
    [Fact]
    public void Csra_SupCon_MatchesAHandComputation()
    {
        // Two steps × two positions, 2-d outputs; temperature 0.5.
        double[][] rows = [[1, 0], [0, 1], [1, 0], [1 / Math.Sqrt(2), 1 / Math.Sqrt(2)]];   // step-major: (s1,p0) (s1,p1) (s2,p0) (s2,p1)
        double tau = 0.5, expected = 0;
        for (int a = 0; a < 4; a++)
        {
            double Sim(int c) => (rows[a][0] * rows[c][0] + rows[a][1] * rows[c][1]) / tau;
            double denominator = Enumerable.Range(0, 4).Where(c => c != a).Sum(c => Math.Exp(Sim(c)));
            int positive = (a + 2) % 4;                                     // same position, other step
            expected += -Math.Log(Math.Exp(Sim(positive)) / denominator);
        }

        expected /= 4;
        Tensor step1 = torch.tensor(new float[] { 3, 0, 0, 2 }, [2, 2]);    // scaled: CSRA normalises
        Tensor step2 = torch.tensor(new float[] { 5, 0, 1, 1 }, [2, 2]);
        float actual = DraftTrainer.Csra([step1, step2], torch.ones(2), CsraVariant.SupCon, tau, 256).item<float>();
        Assert.Equal(expected, actual, 4);

        // Masked positions do not take part.
        Tensor third = torch.tensor(new float[] { 9, 9, 9, 9, 9, 9 }, [3, 2]);
        float masked = DraftTrainer.Csra([torch.cat([step1, third.narrow(0, 0, 1)], 0), torch.cat([step2, third.narrow(0, 1, 1)], 0)],
            torch.tensor(new float[] { 1, 1, 0 }), CsraVariant.SupCon, tau, 256).item<float>();
        Assert.Equal(expected, masked, 4);
    }

    [Theory]
    [InlineData("Hass", "SupCon")]
    [InlineData("Coral", "SupCon")]
    [InlineData("Coral", "Consecutive")]
    [InlineData("Coral", "Teacher")]
    public void MultiStepMethods_Train_AndLowerTheLoss(string methodName, string variantName)
    {
        var method = Enum.Parse<DraftMethod>(methodName);
        var variant = Enum.Parse<CsraVariant>(variantName);
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);
        string data = Path.Combine(ModelZoo.TempFolder("multi-step"), "text.jsonl");
        File.WriteAllLines(data, new[] { "The river", "A small house", "Her garden was" }.Select(p =>
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode(p), SamplingParameters.Greedy, 32, []), null, default);
            return new System.Text.Json.Nodes.JsonObject { ["text"] = p + r.Text }.ToJsonString();
        }));
        string features = ModelZoo.TempFolder("multi-step-features");
        FeatureExtractor.Run(engine, data, features, maxLength: 64);
        string init = DrafterZoo.Random(target, "multi-step-init", new DraftInitOptions { Seed = 4, Scale = 0.3f });
        using var drafter = TrainableDrafter.Load(init, engine.Model.Config);
        var losses = new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head,
            new DraftTrainingOptions { Method = method, CsraVariant = variant, Steps = 60, LearningRate = 2e-3, TopKWeight = method == DraftMethod.Hass ? 1 : 0 })
            .Train(FeatureStore.Read(features).ToList());
        Assert.True(losses.TakeLast(10).Average() < losses.Take(10).Average(), $"{losses.Take(10).Average():F3} -> {losses.TakeLast(10).Average():F3}");
    }
}

public class RouterTrainerTests
{
    [Theory]
    [InlineData("KMeans")]
    [InlineData("Frequency")]
    [InlineData("Contiguous")]
    public void RouterTraining_RaisesRecall_AndTheRouterLoadsLosslessly(string groupingName)
    {
        var grouping = Enum.Parse<GroupingMethod>(groupingName);
        string target = TransformerModelTests.ModelFor("llama");
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);
        var sequences = Sequences(engine);
        string drafterFolder = DrafterZoo.Random(target, "router-" + groupingName, new DraftInitOptions { Seed = 2, Scale = 0.5f });
        using var drafter = TrainableDrafter.Load(drafterFolder, engine.Model.Config);
        var router = new RouterTrainer(drafter, engine.Model.Embedding, engine.Model.Head,
            new RouterTrainingOptions { Groups = 8, TopK = 2, Hidden = 32, Grouping = grouping, Steps = 300, LearningRate = 1e-2 });
        RouterTrainingResult result = router.Train(sequences);
        var (before, after, perm, weights) = (result.RecallBefore, result.RecallAfter, result.Permutation, result.Weights);
        int vocab = engine.Model.Config.VocabSize;
        Assert.Equal(Enumerable.Range(0, vocab).Select(i => (long)i), perm.Where(p => p >= 0).Order());
        Assert.True(after > before, $"recall@2 {before:F3} -> {after:F3}");
        Assert.True(after > 2.0 / 8, $"recall@2 {after:F3} is no better than chance");

        router.Save(drafterFolder, perm, weights);
        using var spec = DrafterZoo.Engine(target, drafterFolder);
        Assert.Equal(8, spec.Drafter!.Model.Router!.Groups);
        var request = new GenerationRequest(spec.Tokenizer.Encode("The river"), SamplingParameters.Greedy, 16, []);
        var routed = spec.Generate(request, null, default);
        spec.ResetCache();
        Assert.Equal(spec.Generate(request with { Speculative = false }, null, default).TokenIds, routed.TokenIds);
    }

    [Fact]
    public void RouterTraining_OnTheDraftersOwnLabels_OverUnrolledSteps_KeepsTheDraftersChoices()
    {
        // A random drafter's top-1 has nothing to do with the target's: a router that learns the target's mass keeps the
        // drafter's choices at about chance, one that learns the drafter's own mass keeps most of them.
        string target = TransformerModelTests.ModelFor("llama");
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);
        var sequences = Sequences(engine);
        string drafterFolder = DrafterZoo.Random(target, "router-labels", new DraftInitOptions { Seed = 5, Scale = 0.5f });
        using var drafter = TrainableDrafter.Load(drafterFolder, engine.Model.Config);
        RouterTrainingResult Train(RouterLabels labels) => new RouterTrainer(drafter, engine.Model.Embedding, engine.Model.Head,
            new RouterTrainingOptions { Groups = 8, TopK = 2, Hidden = 32, Steps = 300, LearningRate = 1e-2, Depths = 3, Labels = labels }).Train(sequences);

        RouterTrainingResult onTarget = Train(RouterLabels.Target), onDrafter = Train(RouterLabels.Drafter);
        Assert.Equal(3, onTarget.RecallByDepth.Count);
        Assert.All(onTarget.RecallByDepth, r => Assert.InRange(r, 0, 1));
        Assert.True(onDrafter.DrafterRecall > onTarget.DrafterRecall + 0.1,
            $"the drafter's top-1 kept {onDrafter.DrafterRecall:F3} (drafter labels) vs {onTarget.DrafterRecall:F3} (target labels)");
        Assert.True(onTarget.RecallAfter > onDrafter.RecallAfter, $"target top-1 {onTarget.RecallAfter:F3} vs {onDrafter.RecallAfter:F3}");
    }

    private static List<FeatureSequence> Sequences(InferenceEngine engine)
    {
        string data = Path.Combine(ModelZoo.TempFolder("router-data"), "text.jsonl");
        File.WriteAllLines(data, new[] { "The river", "A small house", "Her garden was", "In winter", "The market" }.Select(p =>
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode(p), new SamplingParameters { Temperature = 1, Seed = 3 }, 48, []), null, default);
            return new System.Text.Json.Nodes.JsonObject { ["text"] = p + r.Text }.ToJsonString();
        }));
        string features = ModelZoo.TempFolder("router-features");
        FeatureExtractor.Run(engine, data, features, maxLength: 64);
        return FeatureStore.Read(features).ToList();
    }
}

public class RouterCommandTests
{
    [Fact]
    public async Task TrainRouter_ThenInspect_ReportsTheRouter()
    {
        string target = TransformerModelTests.ModelFor("llama");
        string data = Path.Combine(ModelZoo.TempFolder("cli-router"), "data.jsonl");
        File.WriteAllLines(data, ["""{"text": "The quick brown fox jumps over the lazy dog again and again, and the dog sleeps on."}"""]);
        string draft = DrafterZoo.Random(target, "cli-router-draft");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["train-router", "--target", target, "--draft", draft, "--data", data, "--groups", "4", "--topk", "1", "--steps", "20"], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("recall@1", stdout.ToString());
        stdout = new StringWriter();
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["draft-inspect", draft], stdout, stderr, TextReader.Null));
        Assert.Contains("router: 4 groups", stdout.ToString());
        Assert.Contains("fc.weight", stdout.ToString());
    }

    [Theory]
    [InlineData("--labels", "teacher", "--labels 'teacher' is not one of target, drafter.")]
    [InlineData("--depths", "0", "--depths 0 is not a number of draft steps in 1..8.")]
    public async Task TrainRouter_RefusesUnknownLabelsAndDepths_NamingTheOption(string option, string value, string message)
    {
        string target = TransformerModelTests.ModelFor("llama");
        string draft = DrafterZoo.Random(target, "cli-router-bad");
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["train-router", "--target", target, "--draft", draft, "--data", "unused.jsonl", option, value],
            new StringWriter(), stderr, TextReader.Null);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr.ToString());
    }
}

public class ChunkedCrossEntropyTests
{
    [Fact]
    public void ChunkedLoss_HasTheSameValueAndGradientsAsTheFullOne()
    {
        string target = TransformerModelTests.ModelFor("llama");
        using var model = TransformerModel.Load(target, torch.CPU, ScalarType.Float32, 256);
        string draft = DrafterZoo.Random(target, "chunked-ce", new DraftInitOptions { Seed = 6 });
        var sequence = new FeatureSequence(torch.tensor(new long[] { 1, 50, 300, 7, 999, 42, 5, 77 }),
            torch.randn(8, model.Config.HiddenSize, generator: new Generator(2)).to(ScalarType.BFloat16),
            torch.tensor(new byte[] { 0, 0, 1, 1, 1, 0, 1, 1 }));
        (double Value, float[] Grads) Run(int chunk)
        {
            using var drafter = TrainableDrafter.Load(draft, model.Config);
            var trainer = new DraftTrainer(drafter, model.Embedding, model.Head, new DraftTrainingOptions { ClassificationChunk = chunk, Noise = 0 });
            var (objective, reported, _, _, _) = trainer.Loss(sequence, null);
            objective.backward();
            return (reported, drafter.Parameters.SelectMany(p => TorchTestHelpers.ToArray(p.grad!)).ToArray());
        }

        var full = Run(0);
        var chunked = Run(3);   // rows in chunks of 3: the last chunk is partial
        Assert.Equal(full.Value, chunked.Value, 4);
        Assert.True(TorchTestHelpers.MaxAbsDiff(full.Grads, chunked.Grads) < 1e-4f);
    }
}

public class TrainerCheckpointTests
{
    [Fact]
    public void ResumingFromACheckpoint_ContinuesTheSameCurve_AndHeldOutDepthsAreLogged()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);
        string data = Path.Combine(ModelZoo.TempFolder("resume-data"), "text.jsonl");
        File.WriteAllLines(data, new[] { "The river", "A small house", "Her garden was", "In winter" }.Select(p =>
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode(p), SamplingParameters.Greedy, 32, []), null, default);
            return new System.Text.Json.Nodes.JsonObject { ["text"] = p + r.Text }.ToJsonString();
        }));
        string features = ModelZoo.TempFolder("resume-features");
        FeatureExtractor.Run(engine, data, features, maxLength: 64);
        var sequences = FeatureStore.Read(features).ToList();
        var train = sequences.Take(3).ToList();
        var heldOut = sequences.Skip(3).ToList();
        string init = DrafterZoo.Random(target, "resume-init", new DraftInitOptions { Seed = 4, Scale = 0.3f });
        var options = new DraftTrainingOptions { Method = DraftMethod.Hass, Steps = 20, LearningRate = 2e-3, CheckpointEvery = 10, Seed = 3 };

        List<double> straight;
        using (var drafter = TrainableDrafter.Load(init, engine.Model.Config))
        {
            straight = new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options).Train(train);
        }

        string checkpoint = ModelZoo.TempFolder("resume-checkpoint");
        string metrics = Path.Combine(checkpoint, "metrics.jsonl");
        using (var drafter = TrainableDrafter.Load(init, engine.Model.Config))
        {
            new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options with { Steps = 20 })
                .Train(train, metrics, checkpointFolder: checkpoint, heldOut: heldOut);
        }

        // A run interrupted after 10 steps, then resumed from its checkpoint, continues the uninterrupted curve.
        string interrupted = ModelZoo.TempFolder("resume-interrupted");
        using (var drafter = TrainableDrafter.Load(init, engine.Model.Config))
        {
            Assert.Equal(10, new DraftTrainer(drafter, engine.Model.Embedding, engine.Model.Head, options)
                .Train(train, null, checkpointFolder: interrupted, stopAfterSteps: 10).Count);
        }

        using (var resumed = TrainableDrafter.Load(init, engine.Model.Config))
        {
            List<double> tail = new DraftTrainer(resumed, engine.Model.Embedding, engine.Model.Head, options).Train(train, null, checkpointFolder: interrupted);
            Assert.Equal(10, tail.Count);
            for (int i = 0; i < 10; i++)
            {
                Assert.Equal(straight[10 + i], tail[i], 4);
            }
        }

        var logged = File.ReadLines(metrics).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).ToList();
        Assert.Equal(20, logged.Count);
        var depths = logged[^1]["held_out_acc_by_depth"]!.AsArray();
        Assert.Equal(5, depths.Count);
    }
}

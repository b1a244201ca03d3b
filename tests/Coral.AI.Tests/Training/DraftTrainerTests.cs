using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class DraftTrainerTests
{
    [Fact]
    public void TrainingForward_EqualsTheInferenceDrafter()
    {
        string target = TransformerModelTests.ModelFor("llama");
        string draft = DrafterZoo.Random(target, "trainable", new DraftInitOptions { Seed = 8, FcBias = true });
        using var model = TransformerModel.Load(target, torch.CPU, ScalarType.Float32, 256);
        using var inference = DraftModel.Load(draft, model, 256);
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

    [Fact]
    public void EagleTraining_LowersTheLoss_AndTheTrainedDrafterBeatsTheRandomOne()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);

        // Self-distillation: the target's own greedy continuations are the training text.
        string data = Path.Combine(ModelZoo.TempFolder("self-distill"), "text.jsonl");
        string[] words = ["river", "house", "light", "stone", "water", "night", "green", "music", "paper", "winter", "garden", "silver", "market", "bridge", "forest", "window"];
        string[] prompts = words.SelectMany(w => new[] { $"The {w}", $"A small {w}", $"Her {w} was" }).ToArray();
        File.WriteAllLines(data, prompts.Select(p =>
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode(p), SamplingParameters.Greedy, 48, []), null, default);
            return new System.Text.Json.Nodes.JsonObject { ["text"] = p + r.Text }.ToJsonString();
        }));
        string features = ModelZoo.TempFolder("self-distill-features");
        FeatureExtractor.Run(engine, data, features, maxLength: 128);
        var sequences = FeatureStore.Read(features).ToList();

        string init = DrafterZoo.Random(target, "to-train", new DraftInitOptions { Seed = 4, Scale = 0.3f });
        string trained = ModelZoo.TempFolder("trained-drafter");
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
        using var engine = DrafterZoo.Engine(target, output);
        var request = new GenerationRequest(engine.Tokenizer.Encode("Hello"), SamplingParameters.Greedy, 10, []);
        var spec = engine.Generate(request, null, default);
        engine.ResetCache();
        Assert.Equal(engine.Generate(request with { Speculative = false }, null, default).TokenIds, spec.TokenIds);

        code = await Coral.Cli.CliApp.RunAsync(["train-draft", "--target", target, "--data", data, "--out", output, "--method", "coral"], new StringWriter(), stderr, TextReader.Null);
        Assert.Equal(1, code);
    }
}

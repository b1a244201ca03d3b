using System.Text.Json.Nodes;
using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class FeatureExtractorTests
{
    [Fact]
    public void Safetensors_TensorAfterAnOddSizedOne_IsReadCorrectly()
    {
        string path = Path.Combine(ModelZoo.TempFolder("unaligned"), "x.safetensors");
        SafetensorsWriter.Write(path, [new("mask", torch.tensor(new byte[] { 1, 0, 1 })), new("values", torch.tensor(new[] { 1.5f, -2.25f }))]);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal(new[] { 1.5f, -2.25f }, TorchTestHelpers.ToArray(file.Get("values")));
        Assert.Equal(new byte[] { 1, 0, 1 }, file.Get("mask").data<byte>().ToArray());
    }

    private static string ChatData()
    {
        string path = Path.Combine(ModelZoo.TempFolder("chat-data"), "chat.jsonl");
        File.WriteAllLines(path,
        [
            """{"messages": [{"role": "user", "content": "What is a whale?"}, {"role": "assistant", "content": "A large sea mammal."}]}""",
            """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}""",
            """{"text": "Plain text is trained on everywhere."}""",
        ]);
        return path;
    }

    [Fact]
    public void Extract_StoresIdsFeaturesAndAssistantMasks_AndResumes()
    {
        string model = TransformerModelTests.ModelFor("qwen2");
        using var engine = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 256);
        string data = ChatData();
        string partial = ModelZoo.TempFolder("features-partial"), full = ModelZoo.TempFolder("features-full");
        Assert.Equal(1, FeatureExtractor.Run(engine, data, partial, sequencesPerShard: 1, limit: 1));
        Assert.Equal(3, FeatureExtractor.Run(engine, data, partial, sequencesPerShard: 1));       // resumes after shard 0
        Assert.Equal(3, FeatureExtractor.Run(engine, data, partial, sequencesPerShard: 1));       // nothing left to do
        Assert.Equal(3, FeatureExtractor.Run(engine, data, full, sequencesPerShard: 2));
        Assert.Equal(3, ((JsonArray)JsonNode.Parse(File.ReadAllText(Path.Combine(partial, "manifest.json")))!["shards"]!).Count);

        var a = FeatureStore.Read(partial).ToList();
        var b = FeatureStore.Read(full).ToList();
        Assert.Equal(3, a.Count);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(TorchTestHelpers.ToArray(a[i].HiddenState), TorchTestHelpers.ToArray(b[i].HiddenState));
            long[] ids = a[i].InputIds.data<long>().ToArray();
            // Stored features are the target's post-norm hidden states (bf16).
            float[] fresh = TorchTestHelpers.ToArray(FeatureExtractor.Hidden(engine, ids.Select(x => (int)x).ToArray()));
            float[] stored = TorchTestHelpers.ToArray(a[i].HiddenState);
            Assert.True(TorchTestHelpers.MaxAbsDiff(fresh, stored) < 0.05f);
        }

        // The mask covers exactly the assistant replies of a conversation.
        var tok = HfTokenizer.Load(model);
        string Masked(FeatureSequence s)
        {
            long[] ids = s.InputIds.data<long>().ToArray();
            byte[] mask = s.LossMask.data<byte>().ToArray();
            return tok.Decode(ids.Where((_, t) => mask[t] != 0).Select(x => (int)x), skipSpecial: false);
        }

        Assert.Equal("A large sea mammal.<|im_end|>\n", Masked(a[0]));
        Assert.Equal("Hello!<|im_end|>\nGoodbye.<|im_end|>\n", Masked(a[1]));
        Assert.Equal("Plain text is trained on everywhere.", Masked(a[2]));
    }

    [Fact]
    public void ExtractingForAnotherTarget_IntoTheSameFolder_IsRefused()
    {
        string folder = ModelZoo.TempFolder("features-mismatch");
        using (var qwen = InferenceEngine.Load(TransformerModelTests.ModelFor("qwen2"), torch.CPU, ScalarType.Float32, 256))
        {
            FeatureExtractor.Run(qwen, ChatData(), folder, limit: 1);
        }

        string narrow = ModelZoo.Get("narrow-qwen2", ModelZoo.Qwen2 with { HiddenSize = 32, Heads = 2, KvHeads = 1, IntermediateSize = 64 });
        using var other = InferenceEngine.Load(narrow, torch.CPU, ScalarType.Float32, 256);
        var ex = Assert.Throws<InvalidDataException>(() => FeatureExtractor.Run(other, ChatData(), folder));
        Assert.Contains("target_hidden_size", ex.Message);
    }
}

public class SelfDistillationTests
{
    [Fact]
    public void Regenerate_ReplacesAssistantTurnsWithTheTargetsOwnReplies()
    {
        string model = TransformerModelTests.ModelFor("qwen2");
        using var engine = InferenceEngine.Load(model, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 256);
        string data = Path.Combine(ModelZoo.TempFolder("regen"), "chat.jsonl");
        File.WriteAllLines(data, ["""{"messages": [{"role": "user", "content": "What is a whale?"}, {"role": "assistant", "content": "DATASET ANSWER"}]}"""]);
        string folder = ModelZoo.TempFolder("regen-features");
        FeatureExtractor.Run(engine, data, folder, regenerate: SamplingParameters.Greedy, regenerateMaxTokens: 12);
        FeatureSequence s = FeatureStore.Read(folder).Single();

        // The target's own greedy reply to the same prompt.
        var history = new List<Microsoft.Extensions.AI.ChatMessage> { new(Microsoft.Extensions.AI.ChatRole.User, "What is a whale?") };
        engine.ResetCache();
        string own = engine.Generate(ChatPromptFormatter.Render(engine.Tokenizer.Config, history, null).ToRequest(engine.Tokenizer, SamplingParameters.Greedy, 12, null), null, default).Text;
        var tok = HfTokenizer.Load(model);
        long[] ids = s.InputIds.data<long>().ToArray();
        byte[] mask = s.LossMask.data<byte>().ToArray();
        string masked = tok.Decode(ids.Where((_, t) => mask[t] != 0).Select(x => (int)x), skipSpecial: false);
        Assert.DoesNotContain("DATASET ANSWER", tok.Decode(ids.Select(x => (int)x), skipSpecial: false));
        Assert.StartsWith(own, masked);
    }
}

using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI.Tests;

/// <summary>The IEmbeddingGenerator contract on a tiny random Qwen2 model, sharing its host with a chat client.</summary>
public sealed class CoralEmbeddingGeneratorTests : IDisposable
{
    private readonly CoralModelHost _host;
    private readonly CoralEmbeddingGenerator _generator;

    public CoralEmbeddingGeneratorTests()
    {
        _host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), DType = "float32", ContextLength = 512 });
        _generator = new CoralEmbeddingGenerator(_host);
    }

    public void Dispose()
    {
        _generator.Dispose();
        _host.Dispose();
    }

    /// <summary>The final hidden states of a text (after the last norm), straight from the model, in one forward.</summary>
    private float[][] Rows(string text)
    {
        InferenceEngine engine = _host.LoadedEngine!;
        long[] ids = engine.Tokenizer.Encode(text).Select(i => (long)i).ToArray();
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        using KvCache cache = engine.Model.CreateCache(ids.Length);
        float[] flat = TorchTestHelpers.ToArray(engine.Model.Forward(ids, cache));
        int d = engine.Model.Config.HiddenSize;
        return Enumerable.Range(0, ids.Length).Select(r => flat[(r * d)..((r + 1) * d)]).ToArray();
    }

    private static float[] Normalized(IEnumerable<double> v)
    {
        double[] a = v.ToArray();
        double norm = Math.Sqrt(a.Sum(x => x * x));
        return a.Select(x => (float)(x / norm)).ToArray();
    }

    private static void Near(float[] expected, ReadOnlyMemory<float> actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        Assert.True(TorchTestHelpers.MaxAbsDiff(expected, actual.ToArray()) < tolerance, $"max diff {TorchTestHelpers.MaxAbsDiff(expected, actual.ToArray())}");
    }

    [Fact]
    public async Task Embeddings_AreTheLastTokensFinalState_Normalised_TheSameAloneOrBatched()
    {
        string[] texts = ["Hello world", "The quick brown fox jumps over the lazy dog.", "a"];
        GeneratedEmbeddings<Embedding<float>> batch = await _generator.GenerateAsync(texts);
        Assert.Equal(3, batch.Count);
        for (int i = 0; i < texts.Length; i++)
        {
            float[][] rows = Rows(texts[i]);
            Near(Normalized(rows[^1].Select(x => (double)x)), batch[i].Vector, 1e-6f);
            Assert.Equal(1.0, Math.Sqrt(batch[i].Vector.ToArray().Sum(x => (double)x * x)), 5);
            Assert.Equal(_host.ModelId, batch[i].ModelId);
        }

        Embedding<float> alone = await _generator.GenerateAsync(texts[1]);
        Assert.Equal(batch[1].Vector.ToArray(), alone.Vector.ToArray());
        Assert.NotEqual(batch[0].Vector.ToArray(), batch[1].Vector.ToArray());
        long tokens = texts.Sum(t => (long)_host.LoadedEngine!.Tokenizer.Encode(t).Count);
        Assert.Equal((tokens, tokens), (batch.Usage!.InputTokenCount, batch.Usage.TotalTokenCount));
    }

    [Fact]
    public async Task MeanPooling_Dimensions_AndUnnormalised_AreHonoured()
    {
        const string text = "Coral reefs are built by colonies of tiny animals.";
        float[][] rows = Rows(text);
        int d = rows[0].Length;
        var mean = Enumerable.Range(0, d).Select(k => rows.Average(r => (double)r[k])).ToArray();
        Embedding<float> pooled = await _generator.GenerateAsync(text, new EmbeddingGenerationOptions { AdditionalProperties = new() { ["pooling"] = "mean" } });
        Near(Normalized(mean), pooled.Vector, 1e-5f);

        Embedding<float> raw = await _generator.GenerateAsync(text, new EmbeddingGenerationOptions { AdditionalProperties = new() { ["normalize"] = false } });
        Near(rows[^1], raw.Vector, 1e-6f);

        // Matryoshka truncation: the first N values, normalised again.
        Embedding<float> small = await _generator.GenerateAsync(text, new EmbeddingGenerationOptions { Dimensions = 16 });
        Near(Normalized(rows[^1].Take(16).Select(x => (double)x)), small.Vector, 1e-6f);

        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _generator.GenerateAsync(text, new EmbeddingGenerationOptions { Dimensions = d + 1 }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _generator.GenerateAsync(text, new EmbeddingGenerationOptions { Dimensions = 0 }));
        await Assert.ThrowsAsync<ArgumentException>(() => _generator.GenerateAsync(text, new EmbeddingGenerationOptions { AdditionalProperties = new() { ["pooling"] = "max" } }));
        await Assert.ThrowsAsync<ArgumentException>(() => _generator.GenerateAsync(text, new EmbeddingGenerationOptions { AdditionalProperties = new() { ["normalize"] = "yes" } }));
    }

    /// <summary>A text longer than the engine's prefill chunk (256) runs in chunks over one cache: the same vector as a
    /// single forward over all its tokens (to f32 rounding: libtorch's f32 GEMMs round differently by row count).</summary>
    [Fact]
    public async Task LongText_RunsInChunks_AsOneForward()
    {
        string text = string.Join(" ", Enumerable.Range(0, 100).Select(i => $"w{i}"));
        float[][] rows = Rows(text);
        Assert.True(rows.Length > _host.LoadedEngine!.PrefillChunk, $"{rows.Length} tokens");
        Embedding<float> e = await _generator.GenerateAsync(text);
        Near(Normalized(rows[^1].Select(x => (double)x)), e.Vector, 1e-5f);
    }

    [Fact]
    public async Task Errors_AreTyped_AndNamed()
    {
        await Assert.ThrowsAsync<InvalidOperationException>(() => _generator.GenerateAsync(["x"], new EmbeddingGenerationOptions { ModelId = "other" }));
        string tooLong = string.Join(" ", Enumerable.Range(0, 600).Select(i => $"w{i}"));
        await Assert.ThrowsAsync<PromptTooLongException>(() => _generator.GenerateAsync([tooLong]));
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _generator.GenerateAsync(["x"], cancellationToken: cancelled.Token));
        await Assert.ThrowsAsync<ArgumentNullException>(() => _generator.GenerateAsync((IEnumerable<string>)null!));
        Assert.Throws<ArgumentNullException>(() => new CoralEmbeddingGenerator((CoralModelHost)null!));
    }

    /// <summary>Embeddings run with caches of their own: a chat conversation's cached prefix survives them, and a chat
    /// reply is the same with embeddings requested before, between and concurrently.</summary>
    [Fact]
    public async Task ChatOnTheSameHost_KeepsItsCache_AndItsReplies()
    {
        using var chat = new CoralChatClient(_host);
        List<ChatMessage> conversation = [new(ChatRole.User, "Tell me about whales.")];
        var greedy = new ChatOptions { Temperature = 0, MaxOutputTokens = 8 };
        _host.LoadedEngine!.ResetCache();
        ChatResponse first = await chat.GetResponseAsync(conversation, greedy);
        await _generator.GenerateAsync(["Something else entirely.", "And another text."]);
        ChatResponse again = await chat.GetResponseAsync(conversation, greedy);
        Assert.True(again.Usage!.CachedInputTokenCount > 0, "the embeddings reset the conversation's cache");
        Assert.Equal(first.Text, again.Text);

        Embedding<float> expected = await _generator.GenerateAsync("Whales are mammals.");
        Task<ChatResponse> replies = chat.GetResponseAsync(conversation, greedy);
        Task<Embedding<float>> embedded = _generator.GenerateAsync("Whales are mammals.");
        await Task.WhenAll(replies, embedded);
        Assert.Equal(first.Text, (await replies).Text);
        Assert.Equal(expected.Vector.ToArray(), (await embedded).Vector.ToArray());
    }

    [Fact]
    public void Metadata_NamesTheProviderModelAndWidth()
    {
        var metadata = (EmbeddingGeneratorMetadata)_generator.GetService(typeof(EmbeddingGeneratorMetadata))!;
        Assert.Equal((CoralChatClient.ProviderName, _host.ModelId, 64), (metadata.ProviderName, metadata.DefaultModelId, metadata.DefaultModelDimensions));
        Assert.Same(_host, _generator.GetService(typeof(CoralModelHost)));
        Assert.Null(_generator.GetService(typeof(EmbeddingGeneratorMetadata), "key"));
    }

    [Fact]
    public async Task DependencyInjection_SharesTheChatClientsHost()
    {
        var services = new ServiceCollection();
        services.AddCoralChatClient(o => (o.ModelPath, o.DType, o.ContextLength) = (TransformerModelTests.ModelFor("qwen2"), "float32", 128));
        services.AddCoralEmbeddingGenerator();
        await using ServiceProvider provider = services.BuildServiceProvider();
        var generator = provider.GetRequiredService<IEmbeddingGenerator<string, Embedding<float>>>();
        Assert.Same(provider.GetRequiredService<CoralModelHost>(), generator.GetService(typeof(CoralModelHost)));
        Embedding<float> e = await generator.GenerateAsync("Hello");
        Assert.Equal(64, e.Vector.Length);
        Assert.Throws<ArgumentNullException>(() => ((IServiceCollection)null!).AddCoralEmbeddingGenerator());
    }

    /// <summary>A base-model checkpoint without the <c>model.</c> prefix (as sentence-transformers saves Qwen3-Embedding:
    /// <c>embed_tokens.weight</c>, <c>layers.N.…</c>, <c>norm.weight</c>, tied, no LM head) loads and embeds as the
    /// prefixed one.</summary>
    [Fact]
    public async Task UnprefixedBaseModel_LoadsAndEmbedsAsThePrefixedOne()
    {
        string prefixed = TransformerModelTests.ModelFor("qwen3");   // tied
        string bare = ModelZoo.TempFolder("qwen3-unprefixed");
        foreach (string f in Directory.GetFiles(prefixed).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal)))
        {
            File.Copy(f, Path.Combine(bare, Path.GetFileName(f)), overwrite: true);
        }

        using (var scope = torch.NewDisposeScope())
        using (var file = SafetensorsFile.Open(Path.Combine(prefixed, "model.safetensors")))
        {
            Assert.DoesNotContain("lm_head.weight", file.Entries.Keys);
            SafetensorsWriter.Write(Path.Combine(bare, "model.safetensors"),
                file.Entries.Keys.Select(k => new KeyValuePair<string, Tensor>(k.StartsWith("model.", StringComparison.Ordinal) ? k["model.".Length..] : k, file.Get(k).clone())).ToList(),
                new Dictionary<string, string> { ["format"] = "pt" });
        }

        using var a = new CoralEmbeddingGenerator(new CoralChatClientOptions { ModelPath = prefixed, DType = "float32", ContextLength = 64 });
        using var b = new CoralEmbeddingGenerator(new CoralChatClientOptions { ModelPath = bare, DType = "float32", ContextLength = 64 });
        Embedding<float> x = await a.GenerateAsync("Whales are mammals."), y = await b.GenerateAsync("Whales are mammals.");
        Assert.Equal(x.Vector.ToArray(), y.Vector.ToArray());
    }
}

using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

/// <summary>The IChatClient contract on a tiny random Qwen2 model with a ChatML template.</summary>
public sealed class CoralChatClientTests : IDisposable
{
    private readonly CoralModelHost _host;
    private readonly CoralChatClient _client;

    public CoralChatClientTests()
    {
        _host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), DType = "float32", ContextLength = 256 });
        _client = new CoralChatClient(_host);
    }

    public void Dispose()
    {
        _client.Dispose();
        _host.Dispose();
    }

    private static List<ChatMessage> Conversation(string text = "Tell me a story about a whale.") =>
        [new ChatMessage(ChatRole.System, "You are helpful."), new ChatMessage(ChatRole.User, text)];

    private static ChatOptions Greedy(int max = 12) => new() { Temperature = 0, MaxOutputTokens = max };

    [Fact]
    public async Task InvalidArgs_Throw()
    {
        await Assert.ThrowsAsync<ArgumentNullException>(() => _client.GetResponseAsync((IEnumerable<ChatMessage>)null!));
        Assert.Throws<ArgumentNullException>(() => _client.GetService(null!));
        Assert.Throws<ArgumentNullException>(() => new CoralChatClient((CoralModelHost)null!));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _client.GetResponseAsync(Conversation(), new ChatOptions { MaxOutputTokens = 0 }));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Usage_IsReported_AndLengthFinishes(bool streaming)
    {
        ChatResponse r = streaming
            ? await _client.GetStreamingResponseAsync(Conversation(), Greedy(5)).ToChatResponseAsync()
            : await _client.GetResponseAsync(Conversation(), Greedy(5));
        Assert.NotNull(r.Usage);
        Assert.True(r.Usage!.InputTokenCount > 1);
        Assert.Equal(5, r.Usage.OutputTokenCount);
        Assert.Equal(r.Usage.InputTokenCount + r.Usage.OutputTokenCount, r.Usage.TotalTokenCount);
        Assert.Equal(ChatFinishReason.Length, r.FinishReason);
        Assert.True(r.Usage.AdditionalCounts!["eval_duration_ns"] > 0);
        Assert.Equal(_host.ModelId, r.ModelId);
        Assert.StartsWith("coral-", r.ResponseId);
    }

    [Fact]
    public async Task Streaming_OneResponseAndMessageId_ExactlyOneUsage_CoalescesToOneMessage()
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in _client.GetStreamingResponseAsync(Conversation(), Greedy(10)))
        {
            updates.Add(u);
        }

        Assert.True(updates.Count > 1);
        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.Single(updates.Select(u => u.MessageId).Distinct());
        Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>());
        Assert.NotNull(updates[^1].FinishReason);
        ChatResponse r = updates.ToChatResponse();
        ChatMessage m = Assert.Single(r.Messages);
        Assert.Equal(ChatRole.Assistant, m.Role);
        var text = Assert.Single(m.Contents.OfType<TextContent>());
        Assert.False(string.IsNullOrEmpty(text.Text));
    }

    [Fact]
    public async Task Greedy_IsDeterministic_AndStreamingEqualsNonStreaming()
    {
        ChatResponse a = await _client.GetResponseAsync(Conversation(), Greedy(16));
        ChatResponse b = await _client.GetStreamingResponseAsync(Conversation(), Greedy(16)).ToChatResponseAsync();
        Assert.Equal(a.Text, b.Text);
        Assert.Equal(a.Usage!.OutputTokenCount, b.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task SecondTurn_ReusesThePromptPrefix_WithTheSameOutput()
    {
        await _host.GetEngineAsync(default).ContinueWith(t => t.Result.ResetCache());
        ChatResponse first = await _client.GetResponseAsync(Conversation(), Greedy(8));
        Assert.Equal(0, first.Usage!.CachedInputTokenCount);
        ChatResponse again = await _client.GetResponseAsync(Conversation(), Greedy(8));
        Assert.True(again.Usage!.CachedInputTokenCount > 0);
        Assert.Equal(first.Text, again.Text);
    }

    [Fact]
    public async Task StopSequence_AcrossTokens_EndsTheReplyWithoutTheStopText()
    {
        ChatResponse full = await _client.GetResponseAsync(Conversation(), Greedy(30));
        string text = full.Text;
        Assert.True(text.Length > 8, "need some text to cut");
        string stop = text.Substring(text.Length / 2, 4);
        int at = text.IndexOf(stop, StringComparison.Ordinal);
        var options = Greedy(30);
        options.StopSequences = [stop];
        ChatResponse cut = await _client.GetResponseAsync(Conversation(), options);
        Assert.Equal(text[..at], cut.Text);
        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
    }

    [Fact]
    public async Task Seed_MakesSamplingReproducible_AndDefaultsAreStochastic()
    {
        var seeded = new ChatOptions { Seed = 99, MaxOutputTokens = 20, Temperature = 1.0f };
        string a = (await _client.GetResponseAsync(Conversation(), seeded)).Text;
        string b = (await _client.GetResponseAsync(Conversation(), seeded)).Text;
        Assert.Equal(a, b);
        var texts = new HashSet<string>();
        for (int i = 0; i < 3; i++)
        {
            texts.Add((await _client.GetResponseAsync(Conversation(), new ChatOptions { MaxOutputTokens = 20 })).Text);
        }

        Assert.True(texts.Count > 1, "default options must sample");
    }

    [Fact]
    public async Task Cancellation_StopsGeneration_AndTheClientStaysUsable()
    {
        using var cts = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in _client.GetStreamingResponseAsync(Conversation(), Greedy(200), cts.Token))
            {
                if (++seen == 2)
                {
                    cts.Cancel();
                }
            }
        });
        Assert.True(seen < 10);
        ChatResponse after = await _client.GetResponseAsync(Conversation(), Greedy(4));
        Assert.Equal(4, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task AbandonedStream_ReleasesTheModel()
    {
        await foreach (var _ in _client.GetStreamingResponseAsync(Conversation(), Greedy(200)))
        {
            break;
        }

        ChatResponse after = await _client.GetResponseAsync(Conversation(), Greedy(3)).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(3, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ConcurrentRequests_EqualTheSameRequestsRunOneAtATime()
    {
        ChatOptions Options(int i) => new() { Seed = i, Temperature = 0.9f, MaxOutputTokens = 12 };
        var prompts = Enumerable.Range(0, 4).Select(i => Conversation($"Question number {i}: why is the sky blue?")).ToArray();
        var serial = new List<string>();
        for (int i = 0; i < prompts.Length; i++)
        {
            serial.Add((await _client.GetResponseAsync(prompts[i], Options(i))).Text);
        }

        var parallel = await Task.WhenAll(prompts.Select((p, i) => Task.Run(() => _client.GetResponseAsync(p, Options(i)))));
        Assert.Equal(serial, parallel.Select(r => r.Text));
    }

    [Fact]
    public async Task UnknownModelId_IsRejected_KnownIsAccepted()
    {
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => _client.GetResponseAsync(Conversation(), new ChatOptions { ModelId = "gpt-4o" }));
        Assert.Contains("gpt-4o", ex.Message);
        var ok = await _client.GetResponseAsync(Conversation(), new ChatOptions { ModelId = _host.ModelId, MaxOutputTokens = 2 });
        Assert.Equal(_host.ModelId, ok.ModelId);
    }

    [Fact]
    public async Task PromptOverContext_IsAClearError()
    {
        string longText = string.Join(" ", Enumerable.Repeat("lorem ipsum dolor", 200));
        var ex = await Assert.ThrowsAsync<PromptTooLongException>(() => _client.GetResponseAsync(Conversation(longText)));
        Assert.Equal(256, ex.ContextLength);
        Assert.True(ex.PromptTokens > 256);
    }

    [Fact]
    public async Task CallersOptions_AreNotMutated()
    {
        var stops = new List<string> { "zzz" };
        var options = new ChatOptions { StopSequences = stops, MaxOutputTokens = 3, Temperature = 0 };
        await _client.GetResponseAsync(Conversation(), options);
        Assert.Equal(["zzz"], stops);
        Assert.Same(stops, options.StopSequences);
        Assert.Equal(3, options.MaxOutputTokens);
        Assert.Null(options.TopP);
        Assert.Null(options.ModelId);
    }

    [Fact]
    public void Metadata_AndServices()
    {
        var meta = _client.GetService<ChatClientMetadata>()!;
        Assert.Equal("coral", meta.ProviderName);
        Assert.Equal(_host.ModelId, meta.DefaultModelId);
        Assert.True(meta.ProviderUri!.IsFile);
        Assert.Same(_host, _client.GetService<CoralModelHost>());
        Assert.Null(_client.GetService<ChatClientMetadata>("key"));
        IChatClient pipeline = _client.AsBuilder().UseFunctionInvocation().Build();
        Assert.Same(_client, pipeline.GetService<CoralChatClient>());
    }

    [Fact]
    public async Task Instructions_BecomeASystemMessage()
    {
        ChatResponse with = await _client.GetResponseAsync([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { Instructions = "Be brief.", Temperature = 0, MaxOutputTokens = 2 });
        ChatResponse explicitSystem = await _client.GetResponseAsync([new ChatMessage(ChatRole.System, "Be brief."), new ChatMessage(ChatRole.User, "hi")], Greedy(2));
        Assert.Equal(explicitSystem.Usage!.InputTokenCount, with.Usage!.InputTokenCount);
        Assert.Equal(explicitSystem.Text, with.Text);
    }
}

using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Coral.Samples.WebApi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using OpenAI;

namespace Coral.AI.Tests;

/// <summary>The ASP.NET sample on Kestrel at 127.0.0.1, driven by the real OpenAI .NET client.</summary>
public sealed class WebApiTests : IAsyncLifetime
{
    private WebApplication _app = null!;
    private string _baseUrl = null!;

    public async Task InitializeAsync()
    {
        _app = CoralWebApp.Build(["--urls", "http://127.0.0.1:0", "--Coral:ModelPath", TransformerModelTests.ModelFor("qwen2"),
            "--Coral:ContextLength", "256", "--Coral:DType", "float32", "--Coral:MaxQueuedRequests", "1", "--Logging:LogLevel:Default", "Warning"]);
        await _app.StartAsync();
        _baseUrl = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        await _app.Services.GetRequiredService<CoralModelHost>().WaitUntilReadyAsync(default);
    }

    public async Task DisposeAsync() => await _app.DisposeAsync();

    private IChatClient OpenAiClient() =>
        new OpenAI.Chat.ChatClient("qwen2", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(_baseUrl + "/v1") }).AsIChatClient();

    [Fact]
    public async Task OpenAiClient_NonStreaming_GetsTheSameGreedyTextAsTheDirectClient()
    {
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
        ChatResponse viaHttp = await OpenAiClient().GetResponseAsync("Tell me about whales.", options);
        ChatResponse direct = await _app.Services.GetRequiredService<IChatClient>().GetResponseAsync("Tell me about whales.", options);
        Assert.Equal(direct.Text, viaHttp.Text);
        Assert.Equal(ChatFinishReason.Length, viaHttp.FinishReason);
        Assert.Equal(12, viaHttp.Usage!.OutputTokenCount);
        Assert.Equal(direct.Usage!.InputTokenCount, viaHttp.Usage.InputTokenCount);
    }

    /// <summary>POST /v1/embeddings through the official OpenAI client (which asks for base64): the direct generator's
    /// vectors, truncated by <c>dimensions</c>, usage counted; plain JSON floats too; an unknown model or token-array
    /// input is a 400.</summary>
    [Fact]
    public async Task OpenAiClient_Embeddings_AreTheDirectGeneratorsVectors()
    {
        IEmbeddingGenerator<string, Embedding<float>> viaHttp =
            new OpenAI.Embeddings.EmbeddingClient("qwen2", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(_baseUrl + "/v1") })
                .AsIEmbeddingGenerator();
        var direct = _app.Services.GetRequiredService<IEmbeddingGenerator<string, Embedding<float>>>();
        string modelId = _app.Services.GetRequiredService<CoralModelHost>().ModelId;
        string[] texts = ["Whales are mammals.", "Coral reefs grow slowly."];
        var options = new EmbeddingGenerationOptions { ModelId = modelId };
        GeneratedEmbeddings<Embedding<float>> a = await viaHttp.GenerateAsync(texts, options), b = await direct.GenerateAsync(texts);
        Assert.Equal(2, a.Count);
        Assert.Equal(b[0].Vector.ToArray(), a[0].Vector.ToArray());
        Assert.Equal(b[1].Vector.ToArray(), a[1].Vector.ToArray());
        Assert.Equal(b.Usage!.InputTokenCount, a.Usage!.InputTokenCount);

        Embedding<float> small = await viaHttp.GenerateAsync("Whales are mammals.", new EmbeddingGenerationOptions { ModelId = modelId, Dimensions = 16 });
        Assert.Equal(16, small.Vector.Length);

        using var http = new HttpClient();
        async Task<HttpResponseMessage> Post(string json) =>
            await http.PostAsync(_baseUrl + "/v1/embeddings", new StringContent(json, Encoding.UTF8, "application/json"));
        JsonNode body = JsonNode.Parse(await (await Post("{\"input\": \"Whales are mammals.\"}")).Content.ReadAsStringAsync())!;
        Assert.Equal(b[0].Vector.ToArray(), body["data"]![0]!["embedding"]!.AsArray().Select(x => x!.GetValue<float>()).ToArray());
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("{\"input\": \"x\", \"model\": \"gpt-4\"}")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("{\"input\": [[1, 2, 3]]}")).StatusCode);
    }

    [Fact]
    public async Task OpenAiClient_Streaming_ReceivesManyUpdatesAndUsage()
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in OpenAiClient().GetStreamingResponseAsync("Hello!", new ChatOptions { Temperature = 0, MaxOutputTokens = 10 }))
        {
            updates.Add(u);
        }

        Assert.True(updates.Count > 2);
        ChatResponse r = updates.ToChatResponse();
        Assert.False(string.IsNullOrEmpty(r.Text));
        Assert.Equal(10, r.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ModelsHealthAndPage_AreServed()
    {
        using var http = new HttpClient { BaseAddress = new Uri(_baseUrl) };
        JsonNode models = JsonNode.Parse(await http.GetStringAsync("/v1/models"))!;
        Assert.Equal("qwen2", models["data"]![0]!["id"]!.GetValue<string>());
        Assert.Equal("Healthy", await http.GetStringAsync("/health"));
        Assert.Contains("/v1/chat/completions", await http.GetStringAsync("/"));
    }

    /// <summary>Chat and embedding requests with one value swapped for a wrong one (a wrong type, a negative or huge
    /// number, an empty or missing part): the server answers 200 or 400 with an error message, never a 500, and stays up.</summary>
    [Fact]
    public async Task MangledRequests_Are200Or400_Never500()
    {
        using var http = new HttpClient { BaseAddress = new Uri(_baseUrl) };
        const string Chat = """
            {"model":"qwen2","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]},
             {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
             {"role":"tool","tool_call_id":"c1","content":"42"}],
             "max_tokens":2,"temperature":0.5,"top_p":0.9,"seed":3,"stop":["\n"],"frequency_penalty":0.1,"presence_penalty":0.1,
             "tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{"a":{"type":"integer"}}}}}],
             "tool_choice":"auto","response_format":{"type":"text"},"stream":false}
            """;
        const string Embeddings = """{"model":"qwen2","input":["Whales are mammals.","Reefs"],"dimensions":8,"encoding_format":"float"}""";
        JsonNode[] Replacements() => [null!, -1, 0, 1e300, 2147483648L, 3.5, "", "x", true, new JsonArray(), new JsonObject(), new JsonArray("a", 1)];
        var random = new Random(5);
        var failures = new List<string>();
        var seen = new Dictionary<HttpStatusCode, int>();
        for (int trial = 0; trial < 160; trial++)
        {
            bool chat = trial % 4 != 3;
            JsonNode root = JsonNode.Parse(chat ? Chat : Embeddings)!;
            var nodes = new List<JsonNode>();
            void Walk(JsonNode n)
            {
                nodes.Add(n);
                foreach (JsonNode? child in n switch { JsonObject o => o.Select(kv => kv.Value), JsonArray a => a, _ => [] })
                {
                    if (child is not null)
                    {
                        Walk(child);
                    }
                }
            }

            Walk(root);
            JsonNode target = nodes[1 + random.Next(nodes.Count - 1)];
            JsonNode[] choices = Replacements();
            JsonNode? replacement = choices[random.Next(choices.Length)]?.DeepClone();
            bool remove = random.Next(4) == 0;
            switch (target.Parent)
            {
                case JsonObject o:
                    string key = o.First(kv => ReferenceEquals(kv.Value, target)).Key;
                    if (remove) { o.Remove(key); } else { o[key] = replacement; }
                    break;
                case JsonArray a:
                    int i = a.IndexOf(target);
                    if (remove) { a.RemoveAt(i); } else { a[i] = replacement; }
                    break;
            }

            string body = root.ToJsonString();
            using HttpResponseMessage r = await http.PostAsync(chat ? "/v1/chat/completions" : "/v1/embeddings", new StringContent(body, Encoding.UTF8, "application/json"));
            seen[r.StatusCode] = seen.GetValueOrDefault(r.StatusCode) + 1;
            string text = await r.Content.ReadAsStringAsync();
            if (r.StatusCode is not (HttpStatusCode.OK or HttpStatusCode.BadRequest) || (r.StatusCode == HttpStatusCode.BadRequest && !text.Contains("error", StringComparison.Ordinal)))
            {
                failures.Add($"{(int)r.StatusCode}: {body}\n  -> {text[..Math.Min(text.Length, 200)]}");
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of 160 mangled requests ({string.Join(", ", seen.Select(kv => $"{(int)kv.Key}: {kv.Value}"))}):\n" + string.Join("\n", failures.Take(6)));
        Assert.True(seen.GetValueOrDefault(HttpStatusCode.BadRequest) > 10, "too few requests were refused to have tested anything");
        using HttpResponseMessage still = await http.PostAsync("/v1/chat/completions",
            new StringContent("""{"messages":[{"role":"user","content":"still there?"}],"max_tokens":2}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, still.StatusCode);
    }

    [Fact]
    public async Task Overload_Returns429_WithRetryAfter_AndBadRequestsAre400()
    {
        using var http = new HttpClient { BaseAddress = new Uri(_baseUrl) };
        // Fill the admission queue (capacity 1) as a long request would, then ask again.
        var queue = _app.Services.GetRequiredService<RequestQueue>();
        using (IDisposable? held = queue.TryEnter())
        {
            Assert.NotNull(held);
            using var rejected = await http.PostAsync("/v1/chat/completions",
                new StringContent("""{"messages":[{"role":"user","content":"me too"}],"max_tokens":2}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.TooManyRequests, rejected.StatusCode);
            Assert.NotNull(rejected.Headers.RetryAfter);
        }

        using var admitted = await http.PostAsync("/v1/chat/completions",
            new StringContent("""{"messages":[{"role":"user","content":"now"}],"max_tokens":2}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, admitted.StatusCode);
        Assert.Equal(0, queue.InFlight);
        using HttpResponseMessage bad = await http.PostAsync("/v1/chat/completions", new StringContent("{\"nope\": 1}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
    }

    /// <summary>A streamed request the client refuses (an unknown model) is a 400 naming the model, as without streaming —
    /// not a 200 stream that ends empty (the sample used to send the first chunk before the client looked at the request).</summary>
    [Fact]
    public async Task StreamingRequest_ForAnUnknownModel_Is400()
    {
        using var http = new HttpClient { BaseAddress = new Uri(_baseUrl) };
        foreach (string stream in new[] { "true", "false" })
        {
            using HttpResponseMessage r = await http.PostAsync("/v1/chat/completions", new StringContent(
                $$"""{"model":"no-such-model","messages":[{"role":"user","content":"hi"}],"stream":{{stream}}}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Contains("no-such-model", await r.Content.ReadAsStringAsync());
        }
    }

    [Fact]
    public async Task ConcurrentRequests_EqualTheSameRequestsOneAtATime()
    {
        IChatClient client = OpenAiClient();
        ChatOptions Options(int i) => new() { Temperature = 0.9f, Seed = i, MaxOutputTokens = 8 };
        var serial = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            serial.Add((await client.GetResponseAsync($"Question {i}: what is the sea?", Options(i))).Text);
        }

        // Capacity is 1 here, so run them through the direct client concurrently (the host queues them).
        IChatClient direct = _app.Services.GetRequiredService<IChatClient>();
        var parallel = await Task.WhenAll(Enumerable.Range(0, 3).Select(i => Task.Run(() => direct.GetResponseAsync($"Question {i}: what is the sea?", Options(i)))));
        Assert.Equal(serial, parallel.Select(r => r.Text));

    }
}

public class WebApiDisconnectTests
{
    [Fact]
    public async Task ClientDisconnect_CancelsGeneration_AndFreesTheSlot()
    {
        await using WebApplication app = CoralWebApp.Build(["--urls", "http://127.0.0.1:0", "--Coral:ModelPath", TransformerModelTests.ModelFor("llama"),
            "--Coral:ContextLength", "4096", "--Coral:DType", "float32", "--Logging:LogLevel:Default", "Warning"]);
        await app.StartAsync();
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        await app.Services.GetRequiredService<CoralModelHost>().WaitUntilReadyAsync(default);
        var queue = app.Services.GetRequiredService<RequestQueue>();
        using var http = new HttpClient { BaseAddress = new Uri(url) };

        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = new StringContent("""{"messages":[{"role":"user","content":"talk"}],"max_tokens":4000,"temperature":1,"stream":true}""", System.Text.Encoding.UTF8, "application/json"),
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        HttpResponseMessage response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using (var reader = new StreamReader(await response.Content.ReadAsStreamAsync()))
        {
            await reader.ReadLineAsync();   // the first chunk arrived: generation is running
            Assert.Equal(1, queue.InFlight);
        }

        response.Dispose();               // disconnect
        while (queue.InFlight > 0 && clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(20);
        }

        Assert.Equal(0, queue.InFlight);
        // A full 4000-token generation would take far longer on this model than the disconnect took to free the slot.
        ChatResponseCheck(await http.PostAsync("/v1/chat/completions",
            new StringContent("""{"messages":[{"role":"user","content":"next"}],"max_tokens":3}""", System.Text.Encoding.UTF8, "application/json")));
    }

    private static void ChatResponseCheck(HttpResponseMessage r) => Assert.Equal(System.Net.HttpStatusCode.OK, r.StatusCode);
}

/// <summary>The ASP.NET sample with <c>Coral:ParallelRequests</c> 3 (continuous batching) on Kestrel.</summary>
public class WebApiParallelTests
{
    /// <summary>Five streamed chat completions sent at once through the OpenAI client (three decode together, two wait
    /// for a slot), an embeddings request among them: each answer equals the same request sent alone, and the
    /// scheduler did batch them.</summary>
    [Fact]
    public async Task ConcurrentCompletions_EqualTheSameRequestsAlone()
    {
        await using WebApplication app = CoralWebApp.Build(["--urls", "http://127.0.0.1:0", "--Coral:ModelPath", TransformerModelTests.ModelFor("qwen2-bf16"),
            "--Coral:ContextLength", "256", "--Coral:ParallelRequests", "3", "--Coral:MaxQueuedRequests", "8", "--Logging:LogLevel:Default", "Warning"]);
        await app.StartAsync();
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        CoralModelHost host = app.Services.GetRequiredService<CoralModelHost>();
        await host.WaitUntilReadyAsync(default);
        var endpoint = new OpenAIClientOptions { Endpoint = new Uri(url + "/v1") };
        IChatClient client = new OpenAI.Chat.ChatClient(host.ModelId, new ApiKeyCredential("unused"), endpoint).AsIChatClient();
        ChatOptions Options(int i) => new() { Temperature = i % 2 == 0 ? 0 : 0.9f, Seed = i, MaxOutputTokens = 10 + (3 * i) };
        string Question(int i) => $"Question {i}: what is the sea?";
        async Task<string> Streamed(int i)
        {
            var text = new StringBuilder();
            await foreach (ChatResponseUpdate u in client.GetStreamingResponseAsync(Question(i), Options(i)))
            {
                text.Append(u.Text);
            }

            return text.ToString();
        }

        var alone = new List<string>();
        for (int i = 0; i < 5; i++)
        {
            alone.Add(await Streamed(i));
        }

        Assert.Equal(1, (await host.GetEngineAsync(default)).Batch!.PeakBatch);   // one at a time so far
        var embeddings = new OpenAI.Embeddings.EmbeddingClient(host.ModelId, new ApiKeyCredential("unused"), endpoint).AsIEmbeddingGenerator();
        Task<GeneratedEmbeddings<Embedding<float>>> embedding = embeddings.GenerateAsync(["Coral reefs grow slowly."], new EmbeddingGenerationOptions { ModelId = host.ModelId });
        string[] together = await Task.WhenAll(Enumerable.Range(0, 5).Select(i => Task.Run(() => Streamed(i))));
        Assert.Equal(alone, together);
        Assert.Contains(alone, a => a.Length > 0);
        Assert.Single(await embedding);
        Assert.InRange((await host.GetEngineAsync(default)).Batch!.PeakBatch, 2, 3);
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

public class TelemetryTests
{
    [Fact]
    public async Task MeterAndActivitySource_Report_PrefillDecodeTokensQueueAndCache()
    {
        var measurements = new ConcurrentDictionary<string, List<double>>();
        using var meters = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == CoralTelemetry.Name)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            },
        };
        meters.SetMeasurementEventCallback<double>((i, v, _, _) => measurements.GetOrAdd(i.Name, _ => []).Add(v));
        meters.SetMeasurementEventCallback<long>((i, v, _, _) => measurements.GetOrAdd(i.Name, _ => []).Add(v));
        meters.Start();
        var activities = new ConcurrentBag<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == CoralTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activities.Add,
        };
        ActivitySource.AddActivityListener(listener);

        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = TransformerModelTests.ModelFor("qwen2"), ContextLength = 128, DType = "float32" });
        using var client = new CoralChatClient(host);
        await client.GetResponseAsync("hello", new ChatOptions { MaxOutputTokens = 5, Temperature = 0 });
        using var generator = new CoralEmbeddingGenerator(host);
        GeneratedEmbeddings<Embedding<float>> embedded = await generator.GenerateAsync(["whales", "coral reefs"]);
        meters.RecordObservableInstruments();

        Assert.Contains("coral.prefill.duration", measurements.Keys);
        Assert.Contains("coral.decode.duration", measurements.Keys);
        Assert.Equal(5, measurements["coral.tokens.output"].Sum());
        Assert.Equal(0, measurements["coral.queue.depth"].Sum());      // +1 on entry, −1 when done (chat and embeddings)
        Assert.Equal(4, measurements["coral.queue.depth"].Count);
        Assert.True(measurements["coral.kv_cache.bytes"].Max() > 0);
        Activity generate = Assert.Single(activities, a => a.OperationName == "coral.generate");
        Assert.Equal(5, generate.GetTagItem("gen_ai.usage.output_tokens"));
        Activity embed = Assert.Single(activities, a => a.OperationName == "coral.embed");
        Assert.Equal((int)embedded.Usage!.InputTokenCount!, embed.GetTagItem("gen_ai.usage.input_tokens"));
    }
}

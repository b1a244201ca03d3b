using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Coral.AI;

/// <summary>
/// Coral's <see cref="Meter"/> and <see cref="ActivitySource"/>, both named <c>Coral.AI</c> (add them to OpenTelemetry with
/// <c>AddMeter("Coral.AI")</c> / <c>AddSource("Coral.AI")</c>; they sit beside ME.AI's <c>UseOpenTelemetry()</c> spans).
/// </summary>
public static class CoralTelemetry
{
    /// <summary>The name of the meter and the activity source.</summary>
    public const string Name = "Coral.AI";

    internal static readonly ActivitySource Source = new(Name);
    internal static readonly Meter Meter = new(Name);

    internal static readonly Histogram<double> PrefillDuration = Meter.CreateHistogram<double>("coral.prefill.duration", "s", "Prompt prefill time per request.");
    internal static readonly Histogram<double> DecodeDuration = Meter.CreateHistogram<double>("coral.decode.duration", "s", "Decode time per request.");
    internal static readonly Histogram<double> TokensPerSecond = Meter.CreateHistogram<double>("coral.decode.tokens_per_second", "{token}/s", "Decode throughput per request.");
    internal static readonly Histogram<double> AcceptedLength = Meter.CreateHistogram<double>("coral.speculative.mean_accepted_length", "{token}", "Mean tokens emitted per draft-verify cycle (τ).");
    internal static readonly Counter<long> OutputTokens = Meter.CreateCounter<long>("coral.tokens.output", "{token}", "Generated tokens.");
    internal static readonly UpDownCounter<long> QueueDepth = Meter.CreateUpDownCounter<long>("coral.queue.depth", "{request}", "Requests waiting for or holding a model.");

    private static readonly ConcurrentDictionary<object, long> CacheBytes = new();

    static CoralTelemetry()
    {
        Meter.CreateObservableGauge("coral.kv_cache.bytes", () => CacheBytes.Values.Sum(), "By", "Memory held by the KV caches of loaded models.");
    }

    /// <summary>Counts a request in <see cref="QueueDepth"/> and waits for <paramref name="gate"/>; a cancelled wait leaves
    /// the count as it found it. The caller takes the request off the count when it releases the gate.</summary>
    internal static async Task EnterAsync(SemaphoreSlim gate, CancellationToken cancellationToken)
    {
        QueueDepth.Add(1);
        try
        {
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            QueueDepth.Add(-1);
            throw;
        }
    }

    internal static void TrackCache(object owner, long bytes) => CacheBytes[owner] = bytes;

    internal static void UntrackCache(object owner) => CacheBytes.TryRemove(owner, out _);

    internal static void Record(GenerationResult r, string modelId, Activity? activity)
    {
        var tags = new TagList { { "gen_ai.request.model", modelId } };
        PrefillDuration.Record(r.PrefillTime.TotalSeconds, tags);
        DecodeDuration.Record(r.DecodeTime.TotalSeconds, tags);
        OutputTokens.Add(r.TokenIds.Count, tags);
        if (r.DecodeTime > TimeSpan.Zero && r.TokenIds.Count > 1)
        {
            TokensPerSecond.Record((r.TokenIds.Count - 1) / r.DecodeTime.TotalSeconds, tags);
        }

        if (r.Speculative is { Cycles: > 0 } s)
        {
            AcceptedLength.Record(s.MeanAcceptedLength, tags);
        }

        if (activity is not null)
        {
            activity.SetTag("gen_ai.usage.input_tokens", r.PromptTokens);
            activity.SetTag("gen_ai.usage.output_tokens", r.TokenIds.Count);
            activity.SetTag("coral.cached_input_tokens", r.CachedPromptTokens);
            activity.SetTag("coral.finish_reason", r.Finish.ToString().ToLowerInvariant());
            if (r.Speculative is { } spec)
            {
                activity.SetTag("coral.speculative.mean_accepted_length", spec.MeanAcceptedLength);
            }
        }
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Coral.AI;
using Coral.AI.Training;

namespace Coral.Cli;

/// <summary>
/// <c>coral bench --parallel N</c>: a server's view of the prompt set — every prompt arrives at once — served three ways,
/// interleaved round by round in one process: one request after another with plain steps, one after another with the
/// engine's defaults (drafter and prompt lookup; only when it has either), and all together through continuous batching
/// over N slots; with a drafter also one after another through the scheduler (a single user's view: alone, a request
/// drafts in the engine's slot). Prints total generated tokens per second of wall time, the median time until a request
/// has its answer, and whether every batched answer equals the plain one (greedy, or sampled with the same seed per prompt).
/// </summary>
internal static class ParallelBench
{
    private sealed record Served(double Seconds, int Tokens, double[] Finished, IReadOnlyList<int>[] Ids)
    {
        public double Throughput => Tokens / Seconds;
    }

    public static int Run(CoralModelHost host, InferenceEngine engine, List<BenchCommand.Prompt> prompts, float temperature, int maxNew,
        int rounds, int warmup, long seed, TextWriter? json, TextWriter log)
    {
        BatchScheduler batch = engine.Batch!;
        GenerationRequest[] requests = prompts.Select((p, i) => ChatPromptFormatter.Render(engine.Tokenizer.Config, p.Messages, null)
            .ToRequest(engine.Tokenizer, new SamplingParameters { Temperature = temperature, TopP = temperature > 0 ? 1f : null, Seed = temperature > 0 ? seed + i : null },
                maxNew, null))
            .ToArray();
        bool speculates = engine.Drafter is not null || (engine.PromptLookupTokens > 0 && engine.Model.UsesPackedWeights);
        string[] modes = engine.Drafter is not null ? ["serial_plain", "serial_default", "batched_serial", "batched"]
            : speculates ? ["serial_plain", "serial_default", "batched"] : ["serial_plain", "batched"];

        Served Serve(string mode, int count)
        {
            engine.ResetCache();
            batch.ForgetCachedTokens();
            var finished = new double[count];
            var ids = new IReadOnlyList<int>[count];
            var clock = Stopwatch.StartNew();
            if (mode == "batched")
            {
                Task[] all = Enumerable.Range(0, count).Select(i => batch.GenerateAsync(requests[i], null, CancellationToken.None).ContinueWith(t =>
                {
                    finished[i] = clock.Elapsed.TotalSeconds;
                    ids[i] = t.Result.TokenIds;
                }, TaskScheduler.Default)).ToArray();
                Task.WaitAll(all);
            }
            else
            {
                for (int i = 0; i < count; i++)
                {
                    GenerationRequest r = mode == "serial_plain" ? requests[i] with { Speculative = false, PromptLookupTokens = 0 } : requests[i];
                    ids[i] = mode == "batched_serial" ? batch.GenerateAsync(r, null, CancellationToken.None).GetAwaiter().GetResult().TokenIds
                        : engine.Generate(r, null, CancellationToken.None).TokenIds;
                    finished[i] = clock.Elapsed.TotalSeconds;
                }
            }

            return new Served(clock.Elapsed.TotalSeconds, ids.Sum(x => x.Count), finished, ids);
        }

        if (warmup > 0)
        {
            foreach (string mode in modes)
            {
                Serve(mode, Math.Min(warmup, requests.Length));
            }

            log.WriteLine($"warm-up: {Math.Min(warmup, requests.Length)} prompt(s) served each way, not measured");
        }

        var measured = modes.ToDictionary(m => m, _ => new List<Served>());
        for (int r = 0; r < rounds; r++)
        {
            foreach (string mode in modes.Skip(r % modes.Length).Concat(modes.Take(r % modes.Length)))
            {
                measured[mode].Add(Serve(mode, requests.Length));
            }

            log.WriteLine($"round {r + 1}/{rounds} done");
        }

        bool identical = modes.Where(m => m.StartsWith("batched", StringComparison.Ordinal)).All(m => measured[m].Zip(measured["serial_plain"])
            .All(x => x.First.Ids.Zip(x.Second.Ids).All(p => p.First.SequenceEqual(p.Second))));
        var byMode = new JsonObject();
        foreach (string mode in modes)
        {
            List<Served> runs = measured[mode];
            byMode[mode] = new JsonObject
            {
                ["tokens_per_second"] = BenchCommand.Round(BenchCommand.Median(runs.Select(x => x.Throughput))),
                ["median_seconds_to_answer"] = BenchCommand.Round(BenchCommand.Median(runs.Select(x => BenchCommand.Median(x.Finished)))),
                ["wall_seconds"] = BenchCommand.Round(BenchCommand.Median(runs.Select(x => x.Seconds))),
                ["batched_speedup"] = mode == "batched" ? null
                    : BenchCommand.Round(BenchCommand.Median(runs.Zip(measured["batched"]).Select(x => x.Second.Throughput / x.First.Throughput))),
            };
        }

        var result = new JsonObject
        {
            ["model"] = host.ModelId,
            ["draft"] = host.Options.DraftModelPath is string draft ? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(draft))) : null,
            ["device"] = host.Options.Device,
            ["dtype"] = engine.Model.WeightType.ToString(),
            ["quantization"] = engine.Model.Quantization == WeightQuantization.None ? null : engine.Model.Quantization.ToString().ToLowerInvariant(),
            ["int8_activations"] = engine.Model.UsesInt8Activations,
            ["kv_cache"] = ModelLoading.KvCacheName(engine.Cache),
            ["parallel"] = batch.Slots,
            ["peak_batch"] = batch.PeakBatch,
            ["prompts"] = requests.Length,
            ["temperature"] = temperature,
            ["max_new_tokens"] = maxNew,
            ["rounds"] = rounds,
            ["batched_identical_to_plain"] = identical,
            ["modes"] = byMode,
        };
        if (json is not null)
        {
            json.WriteLine(result.ToJsonString());
            return 0;
        }

        log.WriteLine($"{requests.Length} requests arriving together, {batch.Slots} slots, T={temperature.ToString(CultureInfo.InvariantCulture)}, "
            + $"≤ {maxNew} new tokens, medians of {rounds} interleaved rounds; batched answers identical to plain: {(identical ? "yes" : "NO")}");
        log.WriteLine("| mode | tokens/s (all requests) | median s to answer | batched speedup |");
        log.WriteLine("| --- | --- | --- | --- |");
        foreach (string mode in modes)
        {
            JsonNode m = byMode[mode]!;
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {mode} | {m["tokens_per_second"]!.GetValue<double>():F1} | {m["median_seconds_to_answer"]!.GetValue<double>():F2} | {(m["batched_speedup"] is JsonNode s ? s.GetValue<double>().ToString("F2", CultureInfo.InvariantCulture) + "×" : "–")} |"));
        }

        return 0;
    }
}

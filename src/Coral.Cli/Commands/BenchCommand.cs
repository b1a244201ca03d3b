using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Coral.AI;
using Coral.AI.Training;
using Microsoft.Extensions.AI;

namespace Coral.Cli;

/// <summary>
/// <c>coral bench</c>: plain and speculative decoding of the same prompts, interleaved in one process (order alternated
/// every round, caches reset before every run), with τ, tokens/s, speedup, draft time share, verify cost by tree size and
/// draft step time with and without the router. Before the rounds, a warm-up runs the first prompts once each way and
/// discards them (<c>--warmup N</c>, default <see cref="DefaultWarmup"/>), so that no measured run includes JIT compilation
/// (on the demo pair the difference stayed within the machine's noise). The engine's adaptive depth keeps what it
/// learned in the warm-up: the rounds measure its steady state.
/// </summary>
internal static class BenchCommand
{
    /// <summary>Prompts run once each way before the measured rounds (fewer when the set is smaller).</summary>
    public const int DefaultWarmup = 8;

    internal sealed record Prompt(int Index, string Kind, List<ChatMessage> Messages);

    private sealed record Measured(int Tokens, double DecodeSeconds, SpeculativeStats? Stats, IReadOnlyList<int> Ids);

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args,
            ModelLoading.With("--prompts", "--temperature", "--max-new-tokens", "--rounds", "--seed", "--warmup"),
            new HashSet<string> { "--json", "--fixed-depth", "--no-plain-fallback" });
        if (cl.Value("--draft") is null && cl.Value("--model") is not null && cl.Int("--prompt-lookup") == 0 && cl.Int("--parallel") is null or 1)
        {
            throw new UsageException("--draft (or prompt lookup) is required with --model: bench compares plain and speculative decoding.");
        }

        List<Prompt> prompts = ReadPrompts(cl.Required("--prompts"));
        float temperature = cl.Float("--temperature") ?? 0f;
        int maxNew = cl.Int("--max-new-tokens") ?? 128;
        int rounds = cl.Int("--rounds") ?? 3;
        int warmup = cl.Int("--warmup") ?? DefaultWarmup;
        if (warmup < 0)
        {
            throw new UsageException("--warmup must be 0 or more (prompts run once each way before measuring).");
        }

        warmup = Math.Min(warmup, prompts.Count);
        long seed = cl.Long("--seed") ?? 0;
        bool json = cl.Flag("--json");
        TextWriter log = json ? stderr : stdout;

        using CoralModelHost host = ModelLoading.LoadHost(cl, stderr);
        InferenceEngine engine = host.GetEngineAsync(CancellationToken.None).GetAwaiter().GetResult();
        if (engine.Drafter is null && !engine.Model.UsesPackedWeights && engine.Batch is null)
        {
            // Lookup alone runs only where verified rows equal one-token steps bit for bit: the run would compare plain with plain.
            throw new UsageException($"--model {cl.Value("--model")} without --draft: prompt lookup alone needs bf16-stored weights on CPU (packed); "
                + "this model's are not, so there is nothing to compare. Pass --draft.");
        }

        if (engine.Batch is not null)
        {
            return ParallelBench.Run(host, engine, prompts, temperature, maxNew, rounds, warmup, seed, json ? stdout : null, log);
        }

        engine.AdaptiveDepth = !cl.Flag("--fixed-depth");
        engine.PlainFallback = !cl.Flag("--no-plain-fallback");
        TreeShape tree = engine.Tree;
        var requests = prompts.Select(p => ChatPromptFormatter.Render(engine.Tokenizer.Config, p.Messages, null)
            .ToRequest(engine.Tokenizer, new SamplingParameters { Temperature = temperature, TopP = temperature > 0 ? 1f : null }, maxNew, null) with { Tree = tree })
            .ToArray();

        GenerationResult Run(int i, bool speculative, long runSeed)
        {
            engine.ResetCache();
            GenerationRequest request = requests[i] with
            {
                Speculative = speculative,
                Sampling = requests[i].Sampling with { Seed = temperature > 0 ? runSeed : null },
            };
            return engine.Generate(request, null, CancellationToken.None);
        }

        for (int i = 0; i < warmup; i++)
        {
            Run(i, speculative: false, seed - 1 - i);
            Run(i, speculative: true, seed - 1 - i);
        }

        if (warmup > 0)
        {
            log.WriteLine($"warm-up: {warmup} prompt(s) run once each way, not measured");
        }

        var plain = prompts.Select(_ => new List<Measured>()).ToArray();
        var spec = prompts.Select(_ => new List<Measured>()).ToArray();
        for (int r = 0; r < rounds; r++)
        {
            for (int i = 0; i < prompts.Count; i++)
            {
                foreach (bool speculative in (r + i) % 2 == 0 ? new[] { false, true } : new[] { true, false })
                {
                    GenerationResult g = Run(i, speculative, seed + (r * 1000) + i);
                    (speculative ? spec : plain)[i].Add(new Measured(g.TokenIds.Count, g.DecodeTime.TotalSeconds, g.Speculative, g.TokenIds));
                }
            }

            log.WriteLine($"round {r + 1}/{rounds} done");
        }

        // Without a drafter (prompt lookup alone) there is no tree to time. The verify costs cover the tuner's candidates
        // for the configured depth and top-k (not only the chosen tree, which may be a 3-node chain): the cost curve.
        CoralChatClientOptions options = host.Options;
        IReadOnlyDictionary<int, double> verifyMs = engine.Drafter is null ? new Dictionary<int, double>()
            : engine.TuneTree(Math.Max(tree.Depth, options.TreeDepth), Math.Max(tree.TopK, options.TreeTopK), tree.RouterTopK, timeEverySize: true).VerifyMs;
        double? draftFull = engine.Drafter is null ? null : engine.MeasureDraftStep(tree.TopK, 0);
        // The routed step is measured whenever the drafter has a router, at the run's top-k or, in a router-off run
        // (--router-topk 0), at the router's own: the JSON then holds both costs whatever the run used.
        double? draftRouted = engine.Drafter?.Model.Router is null ? null : engine.MeasureDraftStep(tree.TopK, tree.RouterTopK > 0 ? tree.RouterTopK : -1);

        var perPrompt = new JsonArray();
        for (int i = 0; i < prompts.Count; i++)
        {
            double p = Median(plain[i].Select(Rate)), s = Median(spec[i].Select(Rate));
            var o = new JsonObject
            {
                ["index"] = i,
                ["kind"] = prompts[i].Kind,
                ["mean_accepted_length"] = Round(Tau(spec[i])),
                ["plain_tokens_per_second"] = Round(p),
                ["speculative_tokens_per_second"] = Round(s),
                ["speedup"] = Round(s / p),
                ["draft_time_share"] = Round(DraftShare(spec[i])),
            };
            if (temperature == 0)
            {
                o["greedy_identical"] = plain[i].Zip(spec[i]).All(x => x.First.Ids.SequenceEqual(x.Second.Ids));
            }

            perPrompt.Add(o);
        }

        var byKind = new JsonObject();
        foreach (var group in Enumerable.Range(0, prompts.Count).GroupBy(i => prompts[i].Kind))
        {
            byKind[group.Key] = Summary(group.SelectMany(i => plain[i]).ToList(), group.SelectMany(i => spec[i]).ToList(), temperature);
        }

        var result = new JsonObject
        {
            ["model"] = host.ModelId,
            ["draft"] = host.Options.DraftModelPath is string draft ? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(draft))) : null,
            ["prompt_lookup_tokens"] = engine.PromptLookupTokens,
            ["device"] = host.Options.Device,
            ["dtype"] = engine.Model.WeightType.ToString(),
            ["head_dtype"] = engine.Model.HeadType.ToString(),
            ["quantization"] = engine.Model.Quantization == WeightQuantization.None ? null : engine.Model.Quantization.ToString().ToLowerInvariant(),
            ["int8_activations"] = engine.Model.UsesInt8Activations,
            ["kv_cache"] = ModelLoading.KvCacheName(engine.Cache),
            ["temperature"] = temperature,
            ["max_new_tokens"] = maxNew,
            ["rounds"] = rounds,
            ["warmup_prompts"] = warmup,
            ["tree"] = engine.Drafter is null ? null : new JsonObject
            {
                ["depth"] = tree.Depth, ["top_k"] = tree.TopK, ["total_tokens"] = tree.TotalTokens, ["router_top_k"] = tree.RouterTopK,
                ["adaptive_depth"] = engine.AdaptiveDepth, ["plain_fallback"] = engine.AdaptiveDepth && engine.PlainFallback,
                ["final_depth"] = engine.DepthState?.Depth,
                ["reach_by_depth"] = engine.DepthState is { } state ? new JsonArray(state.Reach.Skip(1).Select(x => (JsonNode?)Round(x)).ToArray()) : null,
            },
            ["prompts"] = perPrompt,
            ["by_kind"] = byKind,
            ["overall"] = Summary(plain.SelectMany(x => x).ToList(), spec.SelectMany(x => x).ToList(), temperature),
            ["verify_ms_by_tree_size"] = new JsonObject(verifyMs.OrderBy(kv => kv.Key).Select(kv => KeyValuePair.Create(kv.Key.ToString(CultureInfo.InvariantCulture), (JsonNode?)Round(kv.Value)))),
            ["draft_step_ms"] = draftFull is double full ? new JsonObject { ["full_head"] = Round(full), ["router"] = draftRouted is double dr ? Round(dr) : null } : null,
        };

        if (json)
        {
            stdout.WriteLine(result.ToJsonString());
        }
        else
        {
            WriteTable(stdout, result);
        }

        return 0;
    }

    private static JsonObject Summary(List<Measured> plain, List<Measured> spec, float temperature)
    {
        double p = plain.Sum(r => r.Tokens - 1) / plain.Sum(r => r.DecodeSeconds);
        double s = spec.Sum(r => r.Tokens - 1) / spec.Sum(r => r.DecodeSeconds);
        var o = new JsonObject
        {
            ["mean_accepted_length"] = Round(Tau(spec)),
            ["accepted_at_least"] = AcceptedAtLeast(spec),
            ["plain_tokens_per_second"] = Round(p),
            ["speculative_tokens_per_second"] = Round(s),
            ["speedup"] = Round(s / p),
            ["draft_time_share"] = Round(DraftShare(spec)),
            ["plain_step_ms"] = Round(1000 / p),
            ["cycle_ms"] = CycleParts(spec),
        };
        if (temperature == 0)
        {
            o["greedy_identical"] = plain.Zip(spec).All(x => x.First.Ids.SequenceEqual(x.Second.Ids));
        }

        return o;
    }

    private static double Rate(Measured r) => (r.Tokens - 1) / r.DecodeSeconds;

    private static double Tau(IEnumerable<Measured> runs)
    {
        var stats = runs.Select(r => r.Stats).OfType<SpeculativeStats>().ToList();
        int cycles = stats.Sum(s => s.Cycles);
        return cycles == 0 ? 0 : (double)stats.Sum(s => s.AcceptedTokens) / cycles;
    }

    /// <summary>The fraction of all cycles that accepted at least j drafted tokens, j = 1..depth (over the whole run, unlike
    /// the depth controller's moving estimate; cycles drafted shallower than j count as not reaching j).</summary>
    private static JsonArray AcceptedAtLeast(IEnumerable<Measured> runs)
    {
        var stats = runs.Select(r => r.Stats).OfType<SpeculativeStats>().ToList();
        int depth = Math.Max(0, stats.Select(s => s.AcceptedDrafted.Count).DefaultIfEmpty(1).Max() - 1);
        var counts = new long[depth + 1];
        foreach (SpeculativeStats s in stats)
        {
            for (int j = 0; j < s.AcceptedDrafted.Count; j++)
            {
                counts[j] += s.AcceptedDrafted[j];
            }
        }

        long cycles = counts.Sum();
        return new JsonArray(Enumerable.Range(1, depth).Select(j => (JsonNode?)Round(cycles == 0 ? 0 : (double)counts[j..].Sum() / cycles)).ToArray());
    }

    /// <summary>Where a speculative cycle's time goes, in ms per cycle: drafting, the verify forward with its logits read
    /// back, and the rest (acceptance, KV compaction, emission, the plain steps that finish a sequence near the context
    /// end); how many plain steps the adaptive depth chose instead of cycles, and their mean ms.</summary>
    private static JsonObject CycleParts(IEnumerable<Measured> runs)
    {
        var list = runs.Where(r => r.Stats is not null).ToList();
        int cycles = Math.Max(1, list.Sum(r => r.Stats!.Cycles)), plainSteps = list.Sum(r => r.Stats!.PlainSteps);
        double draft = list.Sum(r => r.Stats!.DraftTime.TotalMilliseconds), verify = list.Sum(r => r.Stats!.VerifyTime.TotalMilliseconds);
        double plain = list.Sum(r => r.Stats!.PlainTime.TotalMilliseconds), total = list.Sum(r => r.DecodeSeconds) * 1000;
        return new JsonObject
        {
            ["draft"] = Round(draft / cycles),
            ["verify"] = Round(verify / cycles),
            ["rest"] = Round((total - draft - verify - plain) / cycles),
            ["plain_steps"] = plainSteps,
            ["plain_step_share"] = Round((double)plainSteps / (plainSteps + cycles)),
            ["plain_step_in_loop"] = Round(plainSteps == 0 ? 0 : plain / plainSteps),
            ["lookup_cycles"] = list.Sum(r => r.Stats!.LookupCycles),
            ["runs_with_drafter"] = list.Count(r => r.Stats!.UsedDrafter),
            ["runs"] = list.Count,
            ["lookup_tokens_accepted"] = list.Sum(r => r.Stats!.LookupAcceptedTokens),
        };
    }

    private static double DraftShare(IEnumerable<Measured> runs)
    {
        var list = runs.ToList();
        return list.Sum(r => r.Stats?.DraftTime.TotalSeconds ?? 0) / list.Sum(r => r.DecodeSeconds);
    }

    /// <summary>The median of <paramref name="values"/> (0 when there are none).</summary>
    internal static double Median(IEnumerable<double> values)
    {
        double[] v = values.Order().ToArray();
        return v.Length == 0 ? 0 : v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    internal static double Round(double x) => Math.Round(x, 4);

    internal static List<Prompt> ReadPrompts(string path)
    {
        if (!File.Exists(path))
        {
            throw new ArgumentException($"--prompts '{path}' does not exist.");
        }

        var prompts = new List<Prompt>();
        foreach ((int lineNo, JsonObject o) in JsonLines.ReadObjects(path))
        {
            string kind = o["kind"]?.GetValue<string>() ?? "default";
            List<ChatMessage> messages = o["prompt"] is JsonNode p
                ? [new ChatMessage(ChatRole.User, p.GetValue<string>())]
                : JsonLines.Messages(o["messages"] as JsonArray ?? throw new ArgumentException($"{path}:{lineNo}: needs \"prompt\" or \"messages\"."), path, lineNo);
            prompts.Add(new Prompt(prompts.Count, kind, messages));
        }

        return prompts.Count > 0 ? prompts : throw new ArgumentException($"--prompts '{path}' has no prompts.");
    }

    private static void WriteTable(TextWriter w, JsonObject r)
    {
        w.WriteLine($"model {r["model"]}, draft {r["draft"]}, {r["device"]} {r["dtype"]}{(r["quantization"] is null ? "" : $" ({r["quantization"]} weights)")}, T={r["temperature"]}, {r["max_new_tokens"]} new tokens, {r["rounds"]} rounds after {r["warmup_prompts"]} warm-up prompt(s), tree {r["tree"]?.ToJsonString() ?? "none (prompt lookup only)"}");
        w.WriteLine("| prompt | kind | τ | plain tok/s | spec tok/s | speedup | draft share |");
        w.WriteLine("| --- | --- | --- | --- | --- | --- | --- |");
        foreach (JsonNode? p in (JsonArray)r["prompts"]!)
        {
            w.WriteLine($"| {p!["index"]} | {p["kind"]} | {p["mean_accepted_length"]} | {p["plain_tokens_per_second"]} | {p["speculative_tokens_per_second"]} | {p["speedup"]} | {p["draft_time_share"]} |");
        }

        JsonNode o = r["overall"]!;
        w.WriteLine($"| all | | {o["mean_accepted_length"]} | {o["plain_tokens_per_second"]} | {o["speculative_tokens_per_second"]} | {o["speedup"]} | {o["draft_time_share"]} |");
        if (o["greedy_identical"] is JsonNode same)
        {
            w.WriteLine($"greedy identical: {same}");
        }

        w.WriteLine($"verify ms by tree size: {r["verify_ms_by_tree_size"]!.ToJsonString()}");
        w.WriteLine($"draft step ms: {r["draft_step_ms"]?.ToJsonString() ?? "–"}");
    }
}

using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

/// <summary>Prompt lookup: the sequence's own continuation of its last n-gram, verified as a chain; output unchanged.</summary>
public class PromptLookupTests
{
    /// <summary>The match's n and the proposed tokens, comma-separated.</summary>
    private static (int Ngram, string Tokens) Find(int[] context, int last, int length)
    {
        var continuation = new int[length];
        var (ngram, count) = PromptLookup.Find(context, last, continuation);
        return (ngram, string.Join(",", continuation[..count]));
    }

    [Fact]
    public void Find_PrefersTheLongestMatch_ThenTheLatest()
    {
        int[] context = [1, 2, 3, 7, 8, 5, 9, 3, 4, 4, 6, 2];
        // ... 6 2 | 3: "6 2 3" never occurred; "2 3" did (index 1, followed by 7 8 5), "3" alone later (index 7): the
        // 2-gram wins over the later 1-gram.
        Assert.Equal((2, "7,8,5"), Find(context, 3, 3));
        // ... 2 9 | 3: "9 3" (index 6, followed by 4 4 6) beats "3" at index 2.
        Assert.Equal((2, "4,4,6"), Find([.. context, 9], 3, 3));
        // ... 6 2 | 4: only 1-grams; the latest 4 (index 9) is followed by 6 2 and then the sequence's own last token.
        Assert.Equal((1, "6,2,4"), Find(context, 4, 3));
        // Never occurred, nothing asked for, nothing before.
        Assert.Equal((0, ""), Find(context, 42, 3));
        Assert.Equal((0, ""), Find(context, 3, 0));
        Assert.Equal((0, ""), Find([], 3, 3));
    }

    [Fact]
    public void Find_ContinuesARepeatingPattern_PastTheEndOfTheSequence()
    {
        // 5 1 2 1 2 1 | 2: "2 1 2" last occurred ending at index 4; what followed is 1 2 (then the sequence ends) and the
        // copy goes on from what it copied: 1 2 1 2 1.
        Assert.Equal((3, "1,2,1,2,1"), Find([5, 1, 2, 1, 2, 1], 2, 5));
        // A run of one token: 7 7 7 | 7 → 7 7 7 7.
        Assert.Equal((3, "7,7,7,7"), Find([7, 7, 7], 7, 4));
    }

    [Fact]
    public void Gate_VerifiesTheFirstProposals_ThenOnlyWhatPays_AndExploresNowAndThen()
    {
        var gate = new LookupGate();
        for (int i = 0; i < DepthController.PlainProbes; i++)
        {
            Assert.True(gate.Use(3, alternativeRate: 10));   // the first ones always, whatever they cost
            gate.Observe(3, accepted: 0, ms: i == 0 ? 50 : 1);
        }

        // 3-gram proposals now accept ~0 tokens for 1 ms: 1 token/ms. Against 2 tokens/ms they are skipped, except one
        // in ExploreEvery; against 0.5 tokens/ms (or an unknown alternative) they are used.
        var used = Enumerable.Range(0, 4 * LookupGate.ExploreEvery).Select(_ => gate.Use(3, alternativeRate: 2)).ToList();
        Assert.Equal(4, used.Count(u => u));
        Assert.True(used[LookupGate.ExploreEvery - 1]);
        Assert.True(gate.Use(3, alternativeRate: 0.5));
        Assert.True(gate.Use(3, alternativeRate: 0));

        // Acceptance is kept per match length: 2-gram matches that accept 3 tokens pay against 2 tokens/ms.
        for (int i = 0; i < 20; i++)
        {
            gate.Observe(2, accepted: 3, ms: 1);
        }

        Assert.True(gate.Accepted[2] > 2.5 && gate.Accepted[3] < 0.5);
        Assert.True(gate.Use(2, alternativeRate: 2));
        Assert.False(gate.Use(3, alternativeRate: 2));
    }

    [Fact]
    public void Greedy_WithLookup_EqualsPlain_AndAcceptsTheCopiedRun()
    {
        // The successor target counts up (t → t + 1): a prompt that holds a run 10..30 and ends 10 11 12 is continued
        // 13 14 15 ..., which is exactly what the lookup copies from the run, so its proposals are accepted.
        string target = TransformerModelTests.ModelFor("llama-successor");
        List<int> prompt = [.. Enumerable.Range(10, 21), 10, 11, 12];
        foreach (int lookup in new[] { 3, 5, 1 })
        {
            // A fresh engine each time: the lookup gate learns from timings, and the first proposals are always verified.
            using var engine = DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-successor", "random"));
            var request = new GenerationRequest(prompt, SamplingParameters.Greedy, 24, []) { PromptLookupTokens = lookup };
            GenerationResult spec = engine.Generate(request, null, default);
            // The accepted lookup tokens' pairs reached the drafter in order (its next draft starts from them).
            SpeculativeDecodingTests.AssertDrafterCacheEqualsRecomputation(engine, [.. prompt.Select(t => (long)t), .. spec.TokenIds.Select(t => (long)t)]);
            engine.ResetCache();
            GenerationResult plain = engine.Generate(request with { Speculative = false }, null, default);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(Enumerable.Range(13, 24), plain.TokenIds);   // the target does count up
            SpeculativeStats stats = spec.Speculative!;
            Assert.True(stats.LookupCycles >= 1);
            Assert.True(stats.LookupAcceptedTokens >= lookup, $"{stats.LookupAcceptedTokens} lookup tokens accepted in {stats.LookupCycles} cycles");
            Assert.Equal(spec.TokenIds.Count, 1 + stats.AcceptedTokens + stats.PlainSteps);
            Assert.Equal(1 + stats.Cycles + stats.PlainSteps, spec.TargetForwardPasses);


            // Off: no lookup cycles, the same tokens.
            engine.ResetCache();
            GenerationResult off = engine.Generate(request with { PromptLookupTokens = 0 }, null, default);
            Assert.Equal(plain.TokenIds, off.TokenIds);
            Assert.Equal(0, off.Speculative!.LookupCycles);
        }
    }

    [Fact]
    public void StopsInsideALookupChain_MatchPlain_AndTheDrafterCacheStaysInStep()
    {
        string target = TransformerModelTests.ModelFor("llama-successor");
        List<int> prompt = [.. Enumerable.Range(10, 21), 10, 11, 12];
        foreach (int stop in new[] { 14, 15, 16, 20 })
        {
            using var engine = DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-successor", "random"));
            var request = new GenerationRequest(prompt, SamplingParameters.Greedy, 24, [], [stop]) { PromptLookupTokens = 4 };
            GenerationResult spec = engine.Generate(request, null, default);
            Assert.True(spec.Speculative!.LookupCycles >= 1, $"stop {stop}: {spec.Speculative.Cycles} cycles, {spec.Speculative.PlainSteps} plain steps");
            Assert.Equal(Enumerable.Range(13, stop - 12), spec.TokenIds);   // up to the stop token
            Assert.Equal(GenerationFinish.Stop, spec.Finish);
            Assert.Equal(engine.Cache.Length, engine.CachedTokens.Count);

            // A follow-up reuses the cached prefix (both caches) and still equals a cold plain run.
            var followUp = request with { PromptIds = [.. prompt, .. spec.TokenIds, 40, 41], StopTokenIds = [] };
            GenerationResult reused = engine.Generate(followUp, null, default);
            engine.ResetCache();
            Assert.Equal(engine.Generate(followUp with { Speculative = false }, null, default).TokenIds, reused.TokenIds);
        }
    }

    [Fact]
    public void WithoutADrafter_PackedWeightsSpeculateByLookup_AndStayExact_OtherWeightsDecodePlainly()
    {
        List<int> prompt = [.. Enumerable.Range(10, 21), 10, 11, 12];
        foreach (string arch in new[] { "llama-successor-bf16", "llama-successor-f16", "llama-successor" })
        {
            using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor(arch), TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 512);
            engine.PromptLookupTokens = 3;
            var request = new GenerationRequest(prompt, SamplingParameters.Greedy, 24, []);
            engine.ResetCache();
            GenerationResult spec = engine.Generate(request, null, default);
            engine.ResetCache();
            GenerationResult plain = engine.Generate(request with { Speculative = false }, null, default);
            Assert.Equal(Enumerable.Range(13, 24), plain.TokenIds);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Null(plain.Speculative);
            Assert.Equal(arch.EndsWith("16", StringComparison.Ordinal) && PackedMatrix.Enabled, engine.Model.UsesPackedWeights);   // bf16 and f16 alike
            if (!engine.Model.UsesPackedWeights)
            {
                // f32 weights on libtorch GEMMs: a verified row is not bit-identical to a one-token step (the reason an
                // engine with a drafter pads and keeps a bf16 head), so no lookup without one.
                Assert.Null(spec.Speculative);
                continue;
            }

            SpeculativeStats stats = spec.Speculative!;
            Assert.True(stats.LookupCycles >= 1 && stats.LookupAcceptedTokens >= 3, $"{stats.LookupAcceptedTokens} tokens in {stats.LookupCycles} lookups");
            Assert.Equal(stats.LookupCycles, stats.Cycles);
            Assert.Equal(spec.TokenIds.Count, 1 + stats.AcceptedTokens + stats.PlainSteps);
            Assert.Equal(1 + stats.Cycles + stats.PlainSteps, spec.TargetForwardPasses);
            Assert.True(spec.TargetForwardPasses < plain.TargetForwardPasses);
            Assert.Equal(engine.Cache.Length, engine.CachedTokens.Count);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AtTheContextEnd_LookupStopsWhereAPlainRunStops(bool withDrafter)
    {
        // A 40-token context holds the 24-token prompt and 16 more: proposals must not run past it, and the finish
        // (context) and tokens equal a plain run's.
        string target = TransformerModelTests.ModelFor("llama-successor-bf16");
        using var engine = withDrafter
            ? DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-successor-bf16", "random"), context: 40)
            : InferenceEngine.Load(target, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 40);
        engine.PromptLookupTokens = 3;
        // (A small tree, so that the speculative loop runs until near the end: it stops where the tree no longer fits.)
        var request = new GenerationRequest([.. Enumerable.Range(10, 21), 10, 11, 12], SamplingParameters.Greedy, 100, []) { Tree = new TreeShape(2, 1, 3, 0) };
        engine.ResetCache();
        GenerationResult spec = engine.Generate(request, null, default);
        engine.ResetCache();
        GenerationResult plain = engine.Generate(request with { Speculative = false }, null, default);
        Assert.Equal(plain.TokenIds, spec.TokenIds);
        Assert.Equal(plain.Finish, spec.Finish);
        Assert.True(spec.Speculative!.LookupCycles >= 1);
        Assert.True(engine.Cache.Length < 40);
    }

    [Fact]
    public void ADrafterThatLoses_SitsOutTheNextRequestsOfItsKind_AndIsReMeasured()
    {
        // A random drafter is never right on a target that counts up (nothing to copy either): its cycles lose to plain
        // steps. After a request that measured so, the next greedy requests run without it (plain steps and lookup,
        // still the plain tokens) until every DrafterRecheckEvery-th, which speculates again; sampled requests keep
        // their own account.
        string target = TransformerModelTests.ModelFor("llama-successor");
        using var engine = DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-successor", "random"));
        engine.PromptLookupTokens = 3;
        var request = new GenerationRequest(engine.Tokenizer.Encode("Once upon a time"), SamplingParameters.Greedy, 40, [])
        {
            Tree = TreeShape.Default with { RouterTopK = 0, TotalTokens = 8 },
        };
        engine.ResetCache();
        List<int> plain = engine.Generate(request with { Speculative = false }, null, default).TokenIds.ToList();
        GenerationResult Run(GenerationRequest r)
        {
            engine.ResetCache();
            GenerationResult g = engine.Generate(r, null, default);
            Assert.Equal(plain, g.TokenIds);
            return g;
        }

        // The first request speculates and measures the drafter losing; then DrafterRecheckEvery − 1 requests sit it
        // out and the next one speculates again, loses again, and the wait doubles.
        int every = engine.DrafterRecheckEvery;
        var used = Enumerable.Range(0, (3 * every) + 3).Select(_ => Run(request).Speculative!.UsedDrafter).ToList();
        string pattern = string.Concat(used.Select(u => u ? 'D' : '.'));
        int firstSkip = used.IndexOf(false);
        Assert.True(firstSkip is >= 1 and <= 3, pattern);
        Assert.All(used.Skip(firstSkip).Take(every - 1), u => Assert.False(u));
        Assert.True(used[firstSkip + every - 1], pattern);
        Assert.All(used.Skip(firstSkip + every).Take((2 * every) - 1), u => Assert.False(u));
        Assert.True(used[firstSkip + (3 * every) - 1], pattern);

        // Sampled requests are their own kind: the first one speculates.
        var sampled = request with { Sampling = new SamplingParameters { Temperature = 1f, Seed = 7 } };
        engine.ResetCache();
        Assert.True(engine.Generate(sampled, null, default).Speculative!.UsedDrafter);

        // Off: always speculate.
        engine.DrafterRecheckEvery = 0;
        Assert.All(Enumerable.Range(0, 3), _ => Assert.True(Run(request).Speculative!.UsedDrafter));
    }

    [Fact]
    public void DraftCyclesLosing_ComparesTheirTokensPerSecondWithThePlainSteps()
    {
        // 10 cycles, 4 of them lookups that gave 4 + 6 tokens; the 6 drafter cycles gave 14 − 10 = 4... tokens over the
        // loop time left by plain steps and lookups.
        static SpeculativeStats Stats(int cycles, int accepted, double loopMs) => new(cycles, accepted, 0, TimeSpan.Zero, TimeSpan.Zero, [])
        {
            LookupCycles = 4, LookupAcceptedTokens = 6, PlainSteps = 10,
            PlainTime = TimeSpan.FromMilliseconds(10), LookupTime = TimeSpan.FromMilliseconds(8), LoopTime = TimeSpan.FromMilliseconds(loopMs),
        };

        Assert.True(Stats(10, 14, 30).DraftCyclesLosing);    // 4 tokens in 12 ms against 1 per ms
        Assert.False(Stats(10, 26, 30).DraftCyclesLosing);   // 16 tokens in 12 ms
        Assert.False(Stats(4, 10, 30).DraftCyclesLosing);    // no drafter cycles: no evidence
        Assert.False((Stats(10, 14, 30) with { PlainSteps = 0 }).DraftCyclesLosing);
    }

    /// <summary>A quantized target benches (and says so) with lookup exact against its own plain decoding.</summary>
    [Fact]
    public async Task Bench_OfAQuantizedTarget_SaysSo_AndStaysExact()
    {
        string target = TransformerModelTests.ModelFor("llama-successor-bf16");
        string prompts = Path.Combine(ModelZoo.TempFolder("bench-lookup-q8"), "prompts.jsonl");
        File.WriteAllLines(prompts, ["{\"prompt\": \"abcdefghijklmnop abc\", \"kind\": \"copy\"}"]);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await Coral.Cli.CliApp.RunAsync(["bench", "--model", target, "--prompts", prompts, "--max-new-tokens", "16", "--rounds", "1", "--warmup", "0",
            "--quantize", "q8_0", "--json"], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        var root = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal("q8_0", root.GetProperty("quantization").GetString());
        Assert.True(root.GetProperty("overall").GetProperty("greedy_identical").GetBoolean());
    }

    [Fact]
    public async Task Bench_WithoutADrafter_ComparesPlainWithLookup()
    {
        string target = TransformerModelTests.ModelFor("llama-successor-bf16");
        string prompts = Path.Combine(ModelZoo.TempFolder("bench-lookup"), "prompts.jsonl");
        File.WriteAllLines(prompts, ["{\"prompt\": \"abcdefghijklmnop abc\", \"kind\": \"copy\"}", "{\"prompt\": \"klmnopqrstuvw klm\"}"]);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await Coral.Cli.CliApp.RunAsync(["bench", "--model", target, "--prompts", prompts, "--max-new-tokens", "16", "--rounds", "1", "--warmup", "0", "--json"], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        var root = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal(System.Text.Json.JsonValueKind.Null, root.GetProperty("draft").ValueKind);
        Assert.Equal(System.Text.Json.JsonValueKind.Null, root.GetProperty("tree").ValueKind);
        Assert.Equal(System.Text.Json.JsonValueKind.Null, root.GetProperty("quantization").ValueKind);
        Assert.Equal(3, root.GetProperty("prompt_lookup_tokens").GetInt32());
        Assert.True(root.GetProperty("overall").GetProperty("greedy_identical").GetBoolean());
        // The lookup loop ran (its steps are counted; whether a proposal exists depends on the rendered prompt's tokens,
        // which the engine test above controls).
        var cycles = root.GetProperty("overall").GetProperty("cycle_ms");
        int steps = cycles.GetProperty("plain_steps").GetInt32() + cycles.GetProperty("lookup_cycles").GetInt32() + cycles.GetProperty("lookup_tokens_accepted").GetInt32();
        Assert.True(steps is > 0 and <= 2 * 15, stdout.ToString());   // every token after the first: a plain step, a lookup's bonus or an accepted proposal
        Assert.Equal(2, await Coral.Cli.CliApp.RunAsync(["bench", "--model", target, "--prompts", prompts, "--prompt-lookup", "0"], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--draft (or prompt lookup) is required", stderr.ToString());

        // f32 weights: lookup alone cannot run exactly there, so the comparison is refused, naming the model and the cause.
        string f32 = TransformerModelTests.ModelFor("llama-successor");
        Assert.Equal(2, await Coral.Cli.CliApp.RunAsync(["bench", "--model", f32, "--prompts", prompts], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains(f32, stderr.ToString());
        Assert.Contains("bf16-stored", stderr.ToString());
    }

    [Fact]
    public async Task ChatClient_TakesTheOptionAndTheRequestProperty_AndRejectsBadValues()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        string draft = DrafterZoo.Copy(target, "lookup-client");
        Assert.Contains("PromptLookupTokens", CoralChatClientOptionsValidator.Check(new CoralChatClientOptions { ModelPath = target, PromptLookupTokens = 33 }));
        using var host = CoralModelHost.Load(new CoralChatClientOptions { ModelPath = target, DraftModelPath = draft, ContextLength = 256, PromptLookupTokens = 3 });
        using var client = new CoralChatClient(host);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 32 };
        ChatResponse on = await client.GetResponseAsync("one two three one two three one two", options);
        Assert.True(on.Usage!.AdditionalCounts!.ContainsKey("lookup_cycles"));
        var off = options.Clone();
        off.AdditionalProperties = new() { ["prompt_lookup_tokens"] = 0 };
        ChatResponse without = await client.GetResponseAsync("one two three one two three one two", off);
        Assert.Equal(on.Text, without.Text);
        Assert.Equal(0, without.Usage!.AdditionalCounts!["lookup_cycles"]);
        off.AdditionalProperties["prompt_lookup_tokens"] = -1;
        var ex = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("x", off));
        Assert.Contains("prompt_lookup_tokens", ex.Message);
    }
}

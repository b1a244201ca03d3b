using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>Speculative decoding is lossless: greedy output equals plain greedy output token for token.</summary>
public class SpeculativeDecodingTests
{
    public static TheoryData<string, string, int, int, int, string> Cases => new()
    {
        { "llama", "random", 5, 8, 16, "float32" },
        { "qwen2", "random", 3, 4, 8, "float32" },
        { "llama-tied-scaled", "copy", 5, 8, 16, "float32" },
        { "llama-tied-scaled", "copy", 1, 4, 4, "float32" },
        { "llama-tied-scaled", "copy", 6, 10, 60, "float32" },
        { "qwen3", "copy", 4, 3, 12, "float32" },
        { "qwen3", "random", 2, 2, 3, "float32" },
        { "llama", "random", 5, 8, 24, "bfloat16" },
        { "llama-tied-scaled", "copy", 5, 8, 16, "bfloat16" },
        { "qwen2", "random", 4, 6, 20, "bfloat16" },
        { "llama-demo-width", "random", 4, 8, 16, "float32" },
        { "llama-demo-width", "random", 4, 8, 16, "bfloat16" },
        { "llama-successor", "random", 4, 8, 16, "float32" },
        { "llama-successor", "random", 3, 4, 8, "bfloat16" },
        { "llama-sharded-bf16", "random", 5, 8, 16, "float32" },
        { "qwen2-bf16", "copy", 3, 4, 8, "float32" },
        { "mistral-bf16", "random", 4, 4, 12, "float32" },
        { "llama-successor-bf16", "random", 4, 8, 16, "float32" },
        { "llama-successor-bf16", "random", 1, 1, 2, "float32" },
        { "qwen2-f16", "copy", 3, 4, 8, "float32" },
        { "mistral-f16", "random", 4, 4, 12, "float32" },
        { "llama-successor-f16", "random", 4, 8, 16, "float32" },
        { "qwen2-partial", "copy", 3, 4, 8, "float32" },
        { "granite-bf16", "random", 4, 4, 12, "float32" },
        { "granite", "random", 3, 4, 8, "bfloat16" },
        { "smollm3-bf16", "copy", 4, 4, 12, "float32" },
        { "gemma2", "random", 4, 4, 12, "float32" },
        { "olmo2-bf16", "random", 4, 4, 12, "float32" },
        { "qwen3moe-bf16", "random", 4, 4, 12, "float32" },
        { "olmoe-bf16", "random", 4, 6, 16, "float32" },
        { "mixtral-bf16", "random", 4, 4, 12, "float32" },
        { "granitemoe-bf16", "random", 4, 4, 12, "float32" },
        { "qwen2moe-bf16", "random", 4, 4, 12, "float32" },
        { "cohere2-bf16", "random", 4, 4, 12, "float32" },
        { "qwen3moe", "random", 3, 4, 8, "float32" },
        { "llama-sharded-bf16", "random", 5, 8, 16, "q8_0" },   // Q8_0 weights (f32 compute on their blocks)
        { "llama-tied-scaled", "copy", 4, 4, 12, "q8_0" },
        { "qwen3moe-bf16", "random", 4, 4, 12, "q8_0" },
        { "llama-sharded-bf16", "random", 4, 4, 12, "q4_0" },
    };

    private static GenerationResult Run(InferenceEngine engine, string prompt, bool speculative, TreeShape? shape = null, int max = 40,
        IReadOnlyList<string>? stops = null, SamplingParameters? sampling = null, IReadOnlyList<int>? stopIds = null, int? lookup = null)
    {
        engine.ResetCache();
        var request = new GenerationRequest(engine.Tokenizer.Encode(prompt), sampling ?? SamplingParameters.Greedy, max, stops ?? [], stopIds)
        {
            Speculative = speculative,
            Tree = shape,
            PromptLookupTokens = lookup,
        };
        return engine.Generate(request, null, CancellationToken.None);
    }

    internal static string Drafter(string target, string kind) => kind == "copy"
        ? DrafterZoo.Copy(TransformerModelTests.ModelFor(target), target + "-copy")
        : DrafterZoo.Random(TransformerModelTests.ModelFor(target), target + "-random");

    [Theory]
    [MemberData(nameof(Cases))]
    public void Greedy_SpeculativeEqualsPlain(string target, string drafter, int depth, int topK, int total, string dtype)
    {
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor(target), Drafter(target, drafter), 512,
            dtype == "bfloat16" ? TorchSharp.torch.ScalarType.BFloat16 : TorchSharp.torch.ScalarType.Float32,
            dtype == "q8_0" ? WeightQuantization.Q8_0 : dtype == "q4_0" ? WeightQuantization.Q4_0 : WeightQuantization.None);
        var shape = new TreeShape(depth, topK, total, 0);
        foreach (string prompt in new[] { "Once upon a time", "The quick brown fox", "1, 2, 3," })
        {
            GenerationResult plain = Run(engine, prompt, speculative: false);
            GenerationResult spec = Run(engine, prompt, speculative: true, shape);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(plain.Text, spec.Text);
            Assert.Equal(plain.Finish, spec.Finish);
            Assert.NotNull(spec.Speculative);
            Assert.Null(plain.Speculative);
            Assert.Equal(spec.TokenIds.Count, 1 + spec.Speculative!.AcceptedTokens + (spec.TargetForwardPasses - 1 - spec.Speculative.Cycles));

            // With prompt lookup (chains copied from the sequence, verified in the same forward): still the plain tokens.
            // (15 of these 23 cases verify lookup chains; the successor targets never repeat a token, so they have none.)
            GenerationResult lookup = Run(engine, prompt, speculative: true, shape, lookup: 3);
            Assert.Equal(plain.TokenIds, lookup.TokenIds);
            Assert.Equal(plain.Finish, lookup.Finish);
        }
    }

    [Theory]
    [InlineData("qwen2-bf16", 1, 1, 2)]              // verifications of up to four rows: one pass of the screen
    [InlineData("llama-successor-bf16", 3, 1, 4)]
    [InlineData("llama-successor-bf16", 3, 4, 8)]    // up to eight: two passes
    [InlineData("llama-successor-bf16", 3, 4, 12)]   // larger trees take the full head; plain steps the screen
    [InlineData("llama-successor-f16", 3, 4, 8)]     // an f16 head: exact logits of f16 rows
    public void ScreenedHead_GivesTheFullHeadsTokens_PlainAndVerified(string target, int depth, int topK, int total)
    {
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor(target), Drafter(target, "copy"));
        Assert.Equal(ScreenedHead.Enabled, engine.Model.Screen is not null);
        (engine.AdaptiveDepth, engine.PlainFallback) = (false, false);   // every step a cycle of this shape
        var shape = new TreeShape(depth, topK, total, 0);
        foreach (string prompt in new[] { "Once upon a time", "1, 2, 3," })
        {
            engine.ScreenedArgMax = false;
            GenerationResult plain = Run(engine, prompt, speculative: false);
            GenerationResult spec = Run(engine, prompt, speculative: true, shape);
            engine.ScreenedArgMax = true;
            long before = engine.Model.Screen?.Decisions ?? 0;
            GenerationResult screenedPlain = Run(engine, prompt, speculative: false);
            long decided = (engine.Model.Screen?.Decisions ?? 1) - before;
            GenerationResult screenedSpec = Run(engine, prompt, speculative: true, shape);
            long verified = (engine.Model.Screen?.Decisions ?? 1) - before - decided;
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(plain.TokenIds, screenedPlain.TokenIds);
            Assert.Equal(plain.TokenIds, screenedSpec.TokenIds);
            Assert.True(decided > 0, "the screen decided no plain step");
            Assert.True(screenedSpec.Speculative!.Cycles > 0);
            Assert.Equal(total <= InferenceEngine.ScreenedVerifyRows, verified > 0);   // small trees verified through the screen
        }
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(2, 3)]
    [InlineData(3, 4)]
    public void TopOneChains_AreTuned_AndLossless(int depth, int nodes)
    {
        // A top-1 chain is smaller than every size the tuner tries (the smallest is 4 nodes): it is its own only size
        // (this threw "Sequence contains no elements" at load and in coral bench), and it verifies exactly.
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor("llama-successor"), Drafter("llama-successor", "copy"));
        var (shape, verify, _) = engine.TuneTree(depth, 1, 0);
        Assert.Equal(new TreeShape(depth, 1, nodes, 0), shape);
        Assert.Contains(nodes, verify.Keys);
        GenerationResult plain = Run(engine, "Once upon a time", false);
        GenerationResult spec = Run(engine, "Once upon a time", true, shape);
        Assert.Equal(plain.TokenIds, spec.TokenIds);
    }

    [Fact]
    public void TheTuner_WeighsTopOneChains_AgainstTrees()
    {
        // Chains of depth 2–4 (3–5 nodes) are timed alongside the tree sizes, and the choice is one of the candidates.
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor("llama-successor"), Drafter("llama-successor", "copy"));
        var (shape, verify, _) = engine.TuneTree(5, 8, 0);
        Assert.Equal([3, 4, 5, 8, 12, 16, 24, 32, 48, 64], verify.Keys.Order());
        Assert.True(shape.TopK == 1 ? shape.TotalTokens == shape.Depth + 1 && shape.Depth is >= 2 and <= 4 : shape == shape with { Depth = 5, TopK = 8 },
            $"{shape}");
        Assert.Equal(8, engine.TuneTree(1, 8, 0).VerifyMs.Keys.Max());   // depth 1: no chain to try, trees up to 1 + 8 nodes
    }

    [Theory]
    [InlineData(15, 7)]       // the demo pair: a round of every size in ≈ 15 ms — medians of 7, as always
    [InlineData(285, 7)]
    [InlineData(500, 4)]
    [InlineData(3300, 3)]     // Llama-3.2-1B's shape on two vCPUs: 3 rounds, not 7 (≈ 13 s less at load)
    [InlineData(60000, 3)]    // never fewer than 3: a median needs them
    public void TheTunersRounds_FitItsBudget(double warmUpMs, int rounds) => Assert.Equal(rounds, InferenceEngine.TuneRounds(warmUpMs));

    [Fact]
    public void TheTunersContenders_AtALargeTarget_AreTheSizesThatCanStillWin()
    {
        // Warm-up verify times measured at Llama-3.2-1B's shape on two vCPUs (ms), an 8-row draft step of 22.7 ms and a
        // one-row step of 12.7 ms; trees at depth 5 and the tuner's priors, chains of depth 2–4 (3–5 nodes).
        var warm = new Dictionary<int, double>
        {
            [3] = 119.9, [4] = 127.0, [5] = 150.2, [8] = 175.4, [12] = 212.6, [16] = 253.0, [24] = 333.9, [32] = 418.2, [48] = 640.3, [64] = 746.1,
        };
        var trees = new Dictionary<int, double> { [4] = 0.70, [8] = 0.85, [12] = 0.93, [16] = 1.0, [24] = 1.08, [32] = 1.14, [48] = 1.22, [64] = 1.28 };
        var roles = trees.Select(kv => (kv.Key, kv.Value, 5 * 22.7))
            .Concat(new[] { (3, 0.70, 2 * 12.7), (4, 0.75, 3 * 12.7), (5, 0.75, 4 * 12.7) }).ToList();
        Assert.Equal([3, 4, 5], InferenceEngine.Contenders(warm, roles).Order());

        // Where a tree's verification is as cheap as a chain's (the demo pair: a 16-node tree in 1.4 ms), trees stay.
        var flat = warm.Keys.ToDictionary(t => t, t => 1.2 + (0.02 * t));
        Assert.Superset(new HashSet<int> { 8, 12, 16 }, InferenceEngine.Contenders(flat, trees.Select(kv => (kv.Key, kv.Value, 5 * 0.12))
            .Concat(new[] { (3, 0.70, 0.24), (4, 0.75, 0.36), (5, 0.75, 0.48) })));
    }

    [Fact]
    public void CopyDrafter_OnATiedTarget_IsAcceptedOften()
    {
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor("llama-tied-scaled"), Drafter("llama-tied-scaled", "copy"));
        GenerationResult spec = Run(engine, "Once upon a time", speculative: true, TreeShape.Default with { RouterTopK = 0 }, max: 60);
        Assert.True(spec.Speculative!.MeanAcceptedLength > 1.5, $"τ = {spec.Speculative.MeanAcceptedLength}");
        Assert.True(spec.TargetForwardPasses < spec.TokenIds.Count);

        // The histogram of accepted drafted tokens per cycle accounts for every cycle; with no stop inside a cycle
        // (the run ends by length) its weighted sum plus one bonus per cycle is every token the cycles emitted.
        IReadOnlyList<int> histogram = spec.Speculative.AcceptedDrafted;
        Assert.Equal(TreeShape.Default.Depth + 1, histogram.Count);
        Assert.Equal(spec.Speculative.Cycles, histogram.Sum());
        Assert.True(spec.Speculative.AcceptedTokens <= spec.Speculative.Cycles + histogram.Select((n, j) => n * j).Sum());
        Assert.True(spec.Speculative.AcceptedTokens > spec.Speculative.Cycles + histogram.Select((n, j) => n * j).Sum() - TreeShape.Default.Depth - 1);
    }

    [Fact]
    public void StopsAndCaps_InsideTheTree_MatchPlain()
    {
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor("llama-tied-scaled"), Drafter("llama-tied-scaled", "copy"));
        var shape = TreeShape.Default with { RouterTopK = 0 };
        GenerationResult reference = Run(engine, "Once upon a time", speculative: false, max: 30);
        for (int max = 1; max <= 12; max++)
        {
            Assert.Equal(Run(engine, "Once upon a time", false, max: max).TokenIds, Run(engine, "Once upon a time", true, shape, max: max).TokenIds);
        }

        string text = reference.Text;
        for (int at = 1; at + 3 <= text.Length; at += Math.Max(1, text.Length / 7))
        {
            string stop = text.Substring(at, 3);
            GenerationResult plain = Run(engine, "Once upon a time", false, max: 30, stops: [stop]);
            GenerationResult spec = Run(engine, "Once upon a time", true, shape, max: 30, stops: [stop]);
            Assert.Equal(plain.Text, spec.Text);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(GenerationFinish.Stop, spec.Finish);
        }

        foreach (int j in new[] { 2, 5, 9 })
        {
            int[] eos = [reference.TokenIds[j]];
            GenerationResult plain = Run(engine, "Once upon a time", false, max: 30, stopIds: eos);
            GenerationResult spec = Run(engine, "Once upon a time", true, shape, max: 30, stopIds: eos);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(GenerationFinish.Stop, spec.Finish);
        }
    }

    [Fact]
    public void KvCompaction_EqualsRecomputation()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = DrafterZoo.Engine(target, Drafter("llama-tied-scaled", "copy"));
        GenerationResult spec = Run(engine, "Once upon a time", true, TreeShape.Default with { RouterTopK = 0 }, max: 40);
        Assert.True(spec.Speculative!.AcceptedTokens > spec.Speculative.Cycles, "some draft tokens must be accepted for this test to mean anything");
        long[] tokens = engine.CachedTokens.Select(t => (long)t).ToArray();
        Assert.Equal(engine.Cache.Length, tokens.Length);
        using var fresh = engine.Model.CreateCache(tokens.Length + 1);
        using (TorchSharp.torch.inference_mode())
        using (TorchSharp.torch.NewDisposeScope())
        {
            engine.Model.Forward(tokens, fresh);
        }

        for (int l = 0; l < engine.Model.Config.NumLayers; l++)
        {
            float[] a = TorchTestHelpers.ToArray(engine.Cache.KeysOf(l, tokens.Length));
            float[] b = TorchTestHelpers.ToArray(fresh.KeysOf(l, tokens.Length));
            Assert.True(TorchTestHelpers.MaxAbsDiff(a, b) < 1e-4f, $"layer {l} keys");
            a = TorchTestHelpers.ToArray(engine.Cache.Values[l].narrow(2, 0, tokens.Length));
            b = TorchTestHelpers.ToArray(fresh.Values[l].narrow(2, 0, tokens.Length));
            Assert.True(TorchTestHelpers.MaxAbsDiff(a, b) < 1e-4f, $"layer {l} values");
        }
    }

    [Fact]
    public void DrafterCache_AfterPlainSteps_EqualsRecomputation()
    {
        // A fresh engine's adaptive depth always takes plain steps (the probes), and with a random drafter mostly plain
        // steps after that; their pairs must land in the drafter's cache in order, and the pending pairs are fed at the
        // end: slot t holds (target feature t, token t + 1) for the whole sequence, as if the drafter had been fed the
        // finished sequence at once. The target counts up through the vocabulary, so every next token differs and a
        // feature paired with the wrong token shows.
        string target = TransformerModelTests.ModelFor("llama-successor");
        using var engine = DrafterZoo.Engine(target, Drafter("llama-successor", "random"));
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time");
        GenerationResult spec = Run(engine, "Once upon a time", true, TreeShape.Default with { RouterTopK = 0 }, max: 40);
        Assert.True(spec.Speculative!.PlainSteps >= 1);
        Assert.True(spec.Speculative.Cycles >= 1);
        Assert.True(spec.TokenIds.Distinct().Count() > spec.TokenIds.Count / 2, $"the target repeats itself: {string.Join(",", spec.TokenIds)}");
        AssertDrafterCacheEqualsRecomputation(engine, [.. prompt.Select(t => (long)t), .. spec.TokenIds.Select(t => (long)t)]);
    }

    /// <summary>Slot t of the drafter's cache holds (target feature t, token t + 1) for the whole sequence, as if the
    /// drafter had been fed the finished sequence at once.</summary>
    internal static void AssertDrafterCacheEqualsRecomputation(InferenceEngine engine, long[] sequence)
    {
        int pairs = Math.Min(engine.Drafter!.Cache.Length, sequence.Length - 1);
        Assert.True(pairs >= sequence.Length - 2, $"the drafter holds {engine.Drafter.Cache.Length} pairs of a {sequence.Length}-token sequence");
        using var targetCache = engine.Model.CreateCache(sequence.Length + 1, batchInvariant: true);
        using var draftCache = engine.Drafter.Model.CreateCache(sequence.Length + 1);
        using (TorchSharp.torch.inference_mode())
        using (TorchSharp.torch.NewDisposeScope())
        {
            Tensor features = engine.Model.Forward(sequence[..pairs], targetCache);
            engine.Drafter.Model.Forward(sequence[1..(pairs + 1)], features, draftCache);
            KvCache mineCache = engine.Drafter.Cache;
            foreach ((Tensor mine, Tensor fresh) in new[] { (mineCache.KeysOf(0, pairs), draftCache.KeysOf(0, pairs)), (mineCache.Values[0].narrow(2, 0, pairs), draftCache.Values[0].narrow(2, 0, pairs)) })
            {
                float[] a = TorchTestHelpers.ToArray(mine), b = TorchTestHelpers.ToArray(fresh);
                Assert.True(TorchTestHelpers.MaxAbsDiff(a, b) < 1e-3f, "drafter K/V");
            }
        }
    }

    [Theory]
    [InlineData("llama-tied-scaled")]
    [InlineData("llama-tied-scaled-bf16")]   // bf16 values: the head, the router's groups and the drafter's FC run packed
    public void Router_NeverChangesVerifiedOutput(string arch)
    {
        string target = TransformerModelTests.ModelFor(arch);
        string drafter = DrafterZoo.Copy(target, "router-" + arch, new DraftInitOptions { RouterGroups = 8, RouterTopK = 2, ShuffleGroups = true, Seed = 5 });
        using var engine = DrafterZoo.Engine(target, drafter);
        Assert.NotNull(engine.Drafter!.Model.Router);
        Assert.Equal(8, engine.Drafter.Model.Router!.Groups);
        // Packed groups (a bf16-valued head: a bf16 checkpoint, or the bf16 head of speculative f32 engines) on a VNNI
        // CPU: one-row drafting steps rank by the groups' int8 copies (and by the target's screen through the full head).
        LmHeadRouter router = engine.Drafter.Model.Router;
        Assert.Equal(router.UsesPackedGroups && ScreenedHead.Enabled, router.HasInt8Groups);
        foreach (bool approximate in new[] { true, false })
        {
            engine.Drafter.Model.ApproximateLogits = approximate;
            foreach (int routerTopK in new[] { 1, 2, 8, 0 })
            {
                GenerationResult plain = Run(engine, "Once upon a time", false);
                GenerationResult spec = Run(engine, "Once upon a time", true, TreeShape.Default with { RouterTopK = routerTopK });
                GenerationResult chain = Run(engine, "Once upon a time", true, new TreeShape(4, 1, 5, routerTopK));   // one-row steps only
                Assert.Equal(plain.TokenIds, spec.TokenIds);
                Assert.Equal(plain.TokenIds, chain.TokenIds);
            }
        }
    }

    [Fact]
    public void OneRowDraftSteps_RankByTheInt8Copies_WhenOn_AndWiderOnesStayExact()
    {
        // A bf16 target on the packed kernels has a screen; its drafter ranks one-row steps by the screen's values
        // (full head) or the groups' int8 copies (routed): log-probabilities close to, and not equal to, the exact ones.
        string target = TransformerModelTests.ModelFor("llama-tied-scaled-bf16");
        string drafter = DrafterZoo.Copy(target, "draft-int8", new DraftInitOptions { RouterGroups = 4, RouterTopK = 2, Seed = 8 });
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 256, draftFolder: drafter);
        TreeDrafter d = engine.Drafter!;
        if (engine.Model.Screen is null || !d.Model.Router!.HasInt8Groups)
        {
            Assert.False(ScreenedHead.Enabled && PackedMatrix.Enabled, "a bf16 target on a VNNI CPU must have its screens");
            return;
        }

        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(9);
        Tensor one = torch.randn(1, engine.Model.Config.HiddenSize) * 3, two = torch.randn(2, engine.Model.Config.HiddenSize) * 3;
        foreach (int routerTopK in new[] { 0, 2 })
        {
            d.Model.ApproximateLogits = false;
            var (exactTokens, exactLp) = d.TopKPerRow(one, 4, routerTopK);
            var (_, exactWide) = d.TopKPerRow(two, 4, routerTopK);
            d.Model.ApproximateLogits = true;
            var (tokens, lp) = d.TopKPerRow(one, 4, routerTopK);
            var (_, wide) = d.TopKPerRow(two, 4, routerTopK);
            d.Model.ApproximateLogits = false;
            Assert.Equal(exactTokens[0][0], tokens[0][0]);   // the same best token (a clear maximum at this scale)
            float diff = TorchTestHelpers.MaxAbsDiff(exactLp[0], lp[0]);
            Assert.True(diff > 0 && diff < 0.1f, $"router top-k {routerTopK}: log-probabilities differ by {diff}");
            Assert.Equal(exactWide, wide);   // two rows: exact either way
        }
    }

    [Fact]
    public void Router_Int8Groups_ApproximateTheExactLogits_WithTheSameColumns()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled-bf16");
        string drafter = DrafterZoo.Copy(target, "router-int8", new DraftInitOptions { RouterGroups = 10, RouterTopK = 3, ShuffleGroups = true, Seed = 6 });
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 256, draftFolder: drafter);
        LmHeadRouter router = engine.Drafter!.Model.Router!;
        Assert.Equal(PackedMatrix.Enabled && ScreenedHead.Enabled, router.HasInt8Groups);
        if (!router.HasInt8Groups)
        {
            return;
        }

        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(7);
        foreach (Tensor h in Enumerable.Range(0, 3).Select(_ => torch.randn(5, engine.Model.Config.HiddenSize)))
        {
            foreach (int k in new[] { 1, 3, 10 })
            {
                var (exact, exactIds) = router.Logits(h, k);
                var (approx, approxIds) = router.Logits(h, k, approximate: true);
                Assert.Equal(exactIds, approxIds);
                Assert.True(exact.isneginf().eq(approx.isneginf()).all().item<bool>(), $"top-{k}: padding columns");
                Tensor finite = exact.isfinite();
                float error = (exact.masked_select(finite) - approx.masked_select(finite)).abs().max().item<float>();
                float scale = exact.masked_select(finite).abs().max().item<float>();
                Assert.True(error > 0, $"top-{k}: the int8 copy was not used");
                Assert.True(error < 0.05f * scale, $"top-{k}: error {error} against logits up to {scale}");
            }
        }
    }

    [Theory]
    [InlineData("llama-tied-scaled")]
    [InlineData("llama-tied-scaled-bf16")]
    public void RoutedTopK_OverEveryGroup_EqualsTheFullHead_AndNeverDraftsPadding(string arch)
    {
        // An f32 head, so that the full head and the router's f32 group copy compute the same logits up to f32 rounding
        // (bf16 values: both packed, the same bits). Top-k runs in C# on CPU (TreeDrafter.TopKOnHost).
        string target = TransformerModelTests.ModelFor(arch);
        string drafter = DrafterZoo.Copy(target, "router-topk-" + arch, new DraftInitOptions { RouterGroups = 10, RouterTopK = 2, ShuffleGroups = true, Seed = 3 });
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512, draftFolder: drafter);
        TreeDrafter d = engine.Drafter!;
        LmHeadRouter router = d.Model.Router!;
        int vocab = engine.Model.Config.VocabSize;
        Assert.Contains(-1L, router.Permutation);   // 1,008 tokens do not fill 10 equal groups: padding columns exist
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(2);
        Tensor hidden = torch.randn(5, engine.Model.Config.HiddenSize) * 4;
        var (full, fullLp) = d.TopKPerRow(hidden, 8, 0);
        var (routed, routedLp) = d.TopKPerRow(hidden, 8, router.Groups);
        for (int r = 0; r < 5; r++)
        {
            // The same candidates with the same log-probabilities, best first; tied logits may come in another order.
            Assert.Equal(8, routed[r].Length);
            Assert.True(TorchTestHelpers.MaxAbsDiff(fullLp[r], routedLp[r]) < 1e-4f, $"row {r}");
            Assert.True(fullLp[r].Zip(fullLp[r].Skip(1)).All(p => p.First >= p.Second), "best first");
            var byToken = full[r].Zip(fullLp[r]).ToDictionary(p => p.First, p => p.Second);
            for (int j = 0; j < 8; j++)
            {
                float expected = byToken.TryGetValue(routed[r][j], out float lp) ? lp : fullLp[r][^1];   // absent: tied at the cut
                Assert.True(Math.Abs(expected - routedLp[r][j]) < 1e-4f, $"row {r}, token {routed[r][j]}");
            }
        }

        // Every column of every group: each real token exactly once, no padding column, normalised over the vocabulary.
        var (all, allLp) = d.TopKPerRow(hidden, router.Groups * router.GroupSize, router.Groups);
        var (one, oneLp) = d.TopKPerRow(hidden, router.GroupSize, 1);
        for (int r = 0; r < 5; r++)
        {
            Assert.Equal(vocab, all[r].Length);
            Assert.Equal(vocab, all[r].Distinct().Count());
            Assert.All(all[r], t => Assert.InRange(t, 0, vocab - 1));
            Assert.True(Math.Abs(allLp[r].Sum(MathF.Exp) - 1f) < 1e-3f, $"row {r}: normalised over the vocabulary");

            // One group: its real tokens, normalised over that group alone (so each at least the full head's value).
            var everyToken = all[r].Zip(allLp[r]).ToDictionary(p => p.First, p => p.Second);
            Assert.InRange(one[r].Length, router.GroupSize - 2, router.GroupSize);
            Assert.True(Math.Abs(oneLp[r].Sum(MathF.Exp) - 1f) < 1e-3f, $"row {r}: normalised over the group");
            Assert.All(one[r].Zip(oneLp[r]), p => Assert.True(p.Second >= everyToken[p.First] - 1e-4f));
        }
    }

    [Theory]
    [InlineData("float32", 1e-4f, "llama-tied-scaled")]
    [InlineData("bfloat16", 0.1f, "llama-tied-scaled")]   // the slices multiply bf16-rounded inputs
    [InlineData("float32", 1e-4f, "llama-tied-scaled-bf16")]   // the copy is packed
    [InlineData("bfloat16", 0.02f, "llama-tied-scaled-f16")]   // packed in f16: the target's own f16 head (no bf16 copy); the slices multiply f16-rounded inputs
    public void Router_F32GroupCopy_EqualsTheHeadSlices(string headType, float tolerance, string arch)
    {
        // The CPU form (an f32 [G, d, S] copy, −∞ bias at padding) against the head-slice form used for heads too large to
        // copy (F.linear over the permuted rows, masked_fill at padding): same columns, same token ids, same logits.
        string target = TransformerModelTests.ModelFor(arch);
        string drafter = DrafterZoo.Copy(target, "router-forms-" + arch, new DraftInitOptions { RouterGroups = 10, RouterTopK = 3, ShuffleGroups = true, Seed = 4 });
        using var engine = InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 256, draftFolder: drafter,
            headType: headType == "bfloat16" ? ScalarType.BFloat16 : ScalarType.Float32);
        var config = ModelConfig.ReadJsonObject(Path.Combine(drafter, "config.json"));
        using LmHeadRouter copy = LmHeadRouter.TryLoad(drafter, config, engine.Model)!;
        using LmHeadRouter slices = LmHeadRouter.TryLoad(drafter, config, engine.Model, f32Limit: 0, packGroups: false)!;
        // A head whose values are all bf16 (a bf16 checkpoint, or a bf16 LM head) or an f16 one packs the group copy.
        Assert.Equal((arch.EndsWith("16", StringComparison.Ordinal) || headType == "bfloat16") && PackedMatrix.Enabled, copy.UsesPackedGroups);
        Assert.Equal(!copy.UsesPackedGroups ? null : arch.EndsWith("-f16", StringComparison.Ordinal) ? ScalarType.Float16 : ScalarType.BFloat16, copy.PackedFormat);
        Assert.False(slices.UsesPackedGroups);
        // Packing does not depend on the f32 copy's limit: a head beyond it (Llama-3's 128k × 2,048) packs its groups too.
        using (LmHeadRouter beyondLimit = LmHeadRouter.TryLoad(drafter, config, engine.Model, f32Limit: 0)!)
        {
            Assert.Equal(copy.UsesPackedGroups, beyondLimit.UsesPackedGroups);
            Assert.Equal(copy.HasInt8Groups, beyondLimit.HasInt8Groups);
        }
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        // Several inputs, so that the routers' token-id lists (kept per set of groups) serve more than one set.
        foreach (Tensor h in Enumerable.Range(0, 4).Select(_ => torch.randn(6, engine.Model.Config.HiddenSize)))
        {
            float[] full = TorchTestHelpers.ToArray(engine.Model.Logits(h.narrow(0, 0, 1)));
            foreach (int k in new[] { 1, 3, 10 })
            {
                var (a, idsA) = copy.Logits(h, k);
                var (b, idsB) = slices.Logits(h, k);
                Assert.Equal(idsA, idsB);
                Assert.True(a.isneginf().eq(b.isneginf()).all().item<bool>(), $"top-{k}: padding columns");
                float[] firstRow = TorchTestHelpers.ToArray(a.narrow(0, 0, 1));
                Assert.Equal(idsA.Select(i => i < 0), firstRow.Select(float.IsNegativeInfinity));
                Tensor finite = a.isfinite();
                Assert.True((a.masked_select(finite) - b.masked_select(finite)).abs().max().item<float>() < tolerance, $"top-{k}: logits");
                // Each column is its token's logit under the full head: the ids name the columns.
                Assert.All(idsA.Select((id, c) => (id, c)).Where(p => p.id >= 0),
                    p => Assert.True(Math.Abs(firstRow[p.c] - full[p.id]) < tolerance, $"top-{k}: column {p.c} is not token {p.id}"));
            }
        }
    }

    [Theory]
    [InlineData("float32")]
    [InlineData("bfloat16")]
    public void AdaptiveDepth_WithPlainSteps_StaysLossless(string dtype)
    {
        // A random drafter under the adaptive depth: the controller takes plain steps (always one, to measure them) mixed
        // with cycles, and the drafter catches up on the plain steps' features; greedy output is still the plain one.
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = DrafterZoo.Engine(target, Drafter("llama-tied-scaled", "random"), dtype: dtype == "float32" ? ScalarType.Float32 : ScalarType.BFloat16);
        engine.AdaptiveDepth = true;
        int plainSteps = 0;
        foreach (string prompt in new[] { "Once upon a time", "The quick brown fox" })
        {
            GenerationResult plain = Run(engine, prompt, speculative: false, max: 60);
            GenerationResult spec = Run(engine, prompt, speculative: true, TreeShape.Default with { RouterTopK = 0, TotalTokens = 16 }, max: 60);
            Assert.Equal(plain.TokenIds, spec.TokenIds);
            Assert.Equal(spec.TokenIds.Count, 1 + spec.Speculative!.AcceptedTokens + spec.Speculative.PlainSteps);
            Assert.Equal(1 + spec.Speculative.Cycles + spec.Speculative.PlainSteps, spec.TargetForwardPasses);
            plainSteps += spec.Speculative.PlainSteps;
        }

        // The controller lives in the engine: its second step ever is a plain one (later ones depend on the timings).
        Assert.True(plainSteps >= 1);
    }

    [Fact]
    public void PrefixReuse_WithADrafter_StaysLossless()
    {
        using var engine = DrafterZoo.Engine(TransformerModelTests.ModelFor("llama-tied-scaled"), Drafter("llama-tied-scaled", "copy"));
        var shape = TreeShape.Default with { RouterTopK = 0 };
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time there was");
        var request = new GenerationRequest(prompt, SamplingParameters.Greedy, 20, []) { Tree = shape };
        engine.ResetCache();
        GenerationResult first = engine.Generate(request, null, default);
        // A follow-up that extends the previous exchange reuses its prefix in both caches.
        var followUp = request with { PromptIds = [.. prompt, .. first.TokenIds, .. engine.Tokenizer.Encode(" and then", false)] };
        GenerationResult reused = engine.Generate(followUp, null, default);
        Assert.True(reused.CachedPromptTokens > prompt.Count);
        engine.ResetCache();
        GenerationResult cold = engine.Generate(followUp, null, default);
        Assert.Equal(cold.TokenIds, reused.TokenIds);
        engine.ResetCache();
        Assert.Equal(cold.TokenIds, engine.Generate(followUp with { Speculative = false }, null, default).TokenIds);
    }
}

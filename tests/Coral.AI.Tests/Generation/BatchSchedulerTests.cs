using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Continuous batching (<see cref="BatchScheduler"/>, <see cref="TransformerModel.ForwardBatch"/>): sequences that share
/// a forward compute exactly what they compute alone, so concurrent requests get exactly their own tokens.
/// </summary>
public class BatchSchedulerTests
{
    /// <summary>Three sequences in one forward — prompts of different lengths, one prompt split over two forwards, then
    /// one-token steps — give every row the bits of the same sequence run alone through <see cref="TransformerModel.Forward"/>.</summary>
    [Theory]
    [InlineData("llama-sharded-bf16")]   // packed dense
    [InlineData("mistral-bf16")]         // sliding window 8: later steps see only part of their cache
    [InlineData("gemma3-bf16")]          // sliding and global layers, local RoPE, q/k norms
    [InlineData("qwen3moe-bf16")]        // experts see rows of several sequences
    [InlineData("llama")]                // f32 weights: libtorch GEMMs on the kernel path
    public void ForwardBatch_EqualsEachSequenceAlone(string name)
    {
        using var inference = torch.inference_mode();
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor(name), torch.CPU, ScalarType.Float32, 64);
        Assert.True(model.UsesCpuKernels);
        var random = new Random(3);
        long[] Tokens(int n) => Enumerable.Range(0, n).Select(_ => (long)random.Next(model.Config.VocabSize)).ToArray();
        // Each sequence's chunks, forward by forward (empty: not in that forward).
        long[][][] plan =
        [
            [Tokens(5), Tokens(9), Tokens(2)],
            [Tokens(1), Tokens(1), Tokens(4)],
            [Tokens(1), [], Tokens(1)],
            [Tokens(1), Tokens(1), Tokens(1)],
            [Tokens(1), Tokens(1), Tokens(1)],
        ];
        for (int i = 0; i < 8; i++)
        {
            plan = [.. plan, [Tokens(1), Tokens(1), Tokens(1)]];
        }

        KvCache[] batched = [.. Enumerable.Range(0, 3).Select(_ => model.CreateCache(64, batchInvariant: true))];
        KvCache[] alone = [.. Enumerable.Range(0, 3).Select(_ => model.CreateCache(64, batchInvariant: true))];
        try
        {
            foreach (long[][] step in plan)
            {
                using var scope = torch.NewDisposeScope();
                var segments = Enumerable.Range(0, 3).Where(i => step[i].Length > 0).Select(i => (step[i], batched[i])).ToList();
                Tensor together = model.ForwardBatch(segments);
                int row = 0;
                for (int i = 0; i < 3; i++)
                {
                    if (step[i].Length == 0)
                    {
                        continue;
                    }

                    Tensor own = model.Forward(step[i], alone[i]);
                    float[] expected = own.contiguous().data<float>().ToArray();
                    float[] actual = together.narrow(0, row, step[i].Length).contiguous().data<float>().ToArray();
                    Assert.True(expected.SequenceEqual(actual), $"sequence {i} at cache length {alone[i].Length}");
                    Assert.Equal(alone[i].Length, batched[i].Length);
                    row += step[i].Length;
                }
            }
        }
        finally
        {
            foreach (KvCache c in batched.Concat(alone))
            {
                c.Dispose();
            }
        }
    }

    /// <summary>Five concurrent requests over three slots (two wait for a slot): greedy, sampled with seeds, top-k with a
    /// repetition penalty, a stop sequence — each gets the tokens and text it gets alone through the engine's plain
    /// decoding, and the scheduler really put several in one forward.</summary>
    [Fact]
    public async Task ConcurrentRequests_GetTheTokensTheyGetAlone()
    {
        using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 128);
        Assert.True(engine.Model.UsesPackedWeights);
        GenerationRequest[] requests = Requests(engine);
        var expected = requests.Select(r => engine.Generate(r, null, CancellationToken.None)).ToArray();
        Assert.Contains(expected, e => e.TokenIds.Count >= 10);

        engine.EnableBatching(3);
        var streamed = requests.Select(_ => new System.Text.StringBuilder()).ToArray();
        var results = await Task.WhenAll(requests.Select((r, i) => engine.Batch!.GenerateAsync(r, (_, text) => streamed[i].Append(text), CancellationToken.None)));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i].TokenIds, results[i].TokenIds);
            Assert.Equal(expected[i].Text, results[i].Text);
            Assert.Equal(expected[i].Finish, results[i].Finish);
            Assert.Equal(results[i].Text, streamed[i].ToString());
            Assert.Equal(requests[i].PromptIds.Count, results[i].PromptTokens);
        }

        Assert.True(engine.Batch!.PeakBatch >= 2, $"peak batch {engine.Batch.PeakBatch}");
        Assert.True(engine.Batch.PeakBatch <= 3);
    }

    /// <summary>Greedy requests with prompt lookup in the batch (every proposal verified): the tokens of plain decoding
    /// alone, with proposals verified and accepted along the way (a random model repeats itself); sampled requests beside
    /// them draw no proposals and keep their seeded tokens.</summary>
    [Fact]
    public async Task PromptLookupInTheBatch_KeepsEveryRequestsTokens()
    {
        using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 256);
        GenerationRequest[] requests = [.. Requests(engine).Select(r => r with { MaxNewTokens = 48 })];
        var expected = requests.Select(r => engine.Generate(r with { Speculative = false }, null, CancellationToken.None)).ToArray();
        engine.PromptLookupTokens = 3;
        engine.EnableBatching(3);
        engine.Batch!.LookupGate.Always = true;
        var results = await Task.WhenAll(requests.Select(r => engine.Batch.GenerateAsync(r, null, CancellationToken.None)));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i].TokenIds, results[i].TokenIds);
            Assert.Equal(requests[i].Sampling.IsGreedy, results[i].Speculative is not null);
        }

        var greedy = results.Where(r => r.Speculative is not null).Select(r => r.Speculative!).ToList();
        Assert.True(greedy.Sum(g => g.LookupCycles) > 0);
        Assert.True(greedy.Sum(g => g.LookupAcceptedTokens) > 0, "no proposal token was accepted");
        var greedyResults = results.Where(r => r.Speculative is not null).ToList();
        Assert.True(greedyResults.Sum(r => r.TargetForwardPasses) < greedyResults.Sum(r => r.TokenIds.Count), "lookup saved no forward");
        Assert.True(greedyResults.Sum(r => r.TokenIds.Count) <= greedyResults.Sum(r => r.TargetForwardPasses + r.Speculative!.LookupAcceptedTokens));
    }

    /// <summary>The gate's cost model: a fit of forward time against rows recovers the fixed and per-row costs; proposals
    /// pay where rows are cheap beside the fixed part and not where every row costs its arithmetic, with one skipped
    /// proposal in 16 verified anyway; before the fit, everything is verified.</summary>
    [Fact]
    public void BatchLookupGate_VerifiesWhereExtraRowsAreCheap()
    {
        var memoryBound = new BatchLookupGate();
        Assert.True(memoryBound.Use(3, 3, 4));   // no fit yet
        for (int i = 0; i < 40; i++)
        {
            int rows = 4 + (i % 9);
            memoryBound.Time(rows, 100 + (2.0 * rows));
        }

        var (fixedMs, perRow) = memoryBound.Cost!.Value;
        Assert.Equal(100, fixedMs, 6);
        Assert.Equal(2, perRow, 6);
        Assert.True(memoryBound.Use(1, 3, 4));   // 1 token for 6 ms against 4 tokens for 108 ms

        var computeBound = new BatchLookupGate();
        for (int i = 0; i < 40; i++)
        {
            int rows = 4 + (i % 9);
            computeBound.Time(rows, 0.1 + rows);
        }

        computeBound.Observe(1, 0);   // matches of one token have been accepted less: 0.9 tokens for 3 rows
        var verified = Enumerable.Range(0, 32).Count(_ => computeBound.Use(1, 3, 4));
        Assert.Equal(2, verified);   // only the exploring ones
        computeBound.Observe(3, 3);
        Assert.True(computeBound.Use(3, 1, 4));   // a 3-gram match, accepted fully: 1 token for one row's cost
    }

    /// <summary>Off the CPU kernels (libtorch's forward) the scheduler runs the segments one after another: concurrent
    /// requests still get exactly their alone tokens.</summary>
    [Fact]
    public async Task OffTheKernels_ConcurrentRequestsStillGetTheirAloneTokens()
    {
        using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor("qwen2"), torch.CPU, ScalarType.Float32, 128, cpuKernels: false);
        Assert.False(engine.Model.UsesCpuKernels);
        GenerationRequest[] requests = Requests(engine);
        var expected = requests.Select(r => engine.Generate(r, null, CancellationToken.None)).ToArray();
        engine.EnableBatching(3);
        var results = await Task.WhenAll(requests.Select(r => engine.Batch!.GenerateAsync(r, null, CancellationToken.None)));
        Assert.Equal(expected.Select(e => e.TokenIds), results.Select(r => r.TokenIds));
        Assert.True(engine.Batch!.PeakBatch >= 2);
    }

    /// <summary>A request cancelled mid-answer ends cancelled at the next step; the one beside it goes on to its own tokens.</summary>
    [Fact]
    public async Task CancellingOneRequest_LeavesTheOtherExact()
    {
        using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 128);
        GenerationRequest[] requests = Requests(engine);
        GenerationRequest survivor = requests[0] with { MaxNewTokens = 40 }, victim = requests[1] with { MaxNewTokens = 40 };
        GenerationResult expected = engine.Generate(survivor, null, CancellationToken.None);
        engine.EnableBatching(2);
        using var cts = new CancellationTokenSource();
        int seen = 0;
        Task<GenerationResult> cancelled = engine.Batch!.GenerateAsync(victim, (_, _) =>
        {
            if (++seen == 3)
            {
                cts.Cancel();
            }
        }, cts.Token);
        Task<GenerationResult> kept = engine.Batch.GenerateAsync(survivor, null, CancellationToken.None);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        Assert.Equal(expected.TokenIds, (await kept).TokenIds);
        Assert.InRange(seen, 3, 4);
    }

    /// <summary>A follow-up whose prompt extends an earlier conversation reuses the slot that holds it (its prefix is not
    /// computed again) and still gets the tokens it gets alone; an over-long prompt is refused before it queues.</summary>
    [Fact]
    public async Task FollowUp_ReusesItsSlotsPrefix()
    {
        using var engine = InferenceEngine.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 128);
        GenerationRequest first = Requests(engine)[0];
        engine.EnableBatching(2);
        GenerationResult answer = await engine.Batch!.GenerateAsync(first, null, CancellationToken.None);
        GenerationRequest other = Requests(engine)[2];
        _ = await engine.Batch.GenerateAsync(other, null, CancellationToken.None);   // occupies the other slot
        GenerationRequest followUp = first with { PromptIds = [.. first.PromptIds, .. answer.TokenIds, 11, 12, 13] };
        GenerationResult result = await engine.Batch.GenerateAsync(followUp, null, CancellationToken.None);
        Assert.True(result.CachedPromptTokens >= first.PromptIds.Count + answer.TokenIds.Count - 1, $"cached {result.CachedPromptTokens}");

        using var fresh = InferenceEngine.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 128);
        Assert.Equal(fresh.Generate(followUp, null, CancellationToken.None).TokenIds, result.TokenIds);
        PromptTooLongException? refused = null;
        try
        {
            _ = engine.Batch.GenerateAsync(first with { PromptIds = [.. Enumerable.Repeat(5, 128)] }, null, CancellationToken.None);
        }
        catch (PromptTooLongException ex)
        {
            refused = ex;   // thrown by the call itself, before anything queues
        }

        Assert.NotNull(refused);
    }

    /// <summary>Through the chat client with <c>ParallelRequests</c> 2: four concurrent streamed chats give the texts the
    /// serialised client gives; out-of-range values are refused naming the option.</summary>
    [Fact]
    public async Task ChatClient_WithParallelRequests_AnswersAsAlone()
    {
        string model = TransformerModelTests.ModelFor("qwen2-bf16");
        string[] questions = ["Hello there", "What is a harbor?", "Tell me a story about a cat.", "Why?"];
        async Task<string[]> Answers(int parallel)
        {
            using var client = new CoralChatClient(new CoralChatClientOptions
            {
                ModelPath = model, ContextLength = 256, ParallelRequests = parallel,
            });
            var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 24 };
            if (parallel == 1)
            {
                var serial = new List<string>();
                foreach (string q in questions)
                {
                    serial.Add((await client.GetResponseAsync(q, options)).Text);
                }

                return [.. serial];
            }

            return await Task.WhenAll(questions.Select(async q =>
            {
                var text = new System.Text.StringBuilder();
                await foreach (ChatResponseUpdate u in client.GetStreamingResponseAsync(q, options))
                {
                    text.Append(u.Text);
                }

                return text.ToString();
            }));
        }

        string[] alone = await Answers(1);
        Assert.Contains(alone, a => a.Length > 0);
        Assert.Equal(alone, await Answers(2));
        foreach (int bad in new[] { 0, 65 })
        {
            var error = Assert.ThrowsAny<Exception>(() => new CoralChatClient(new CoralChatClientOptions { ModelPath = model, ParallelRequests = bad }));
            Assert.Contains("ParallelRequests", error.Message);
        }
    }

    private static GenerationRequest[] Requests(InferenceEngine engine)
    {
        var random = new Random(11);
        int[] Prompt(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, engine.Model.Config.VocabSize)).ToArray();
        return
        [
            new GenerationRequest(Prompt(7), SamplingParameters.Greedy, 16, []),
            new GenerationRequest(Prompt(19), new SamplingParameters { Temperature = 0.9f, TopP = 0.9f, Seed = 5 }, 24, []),
            new GenerationRequest(Prompt(3), new SamplingParameters { Temperature = 0.7f, TopK = 20, RepetitionPenalty = 1.3f, Seed = 9 }, 12, []),
            new GenerationRequest(Prompt(30), SamplingParameters.Greedy with { RepetitionPenalty = 1.2f }, 20, []),
            new GenerationRequest(Prompt(12), new SamplingParameters { Temperature = 1f, Seed = 2 }, 18, ["e"]),
        ];
    }
}

/// <summary><c>coral bench --parallel N</c> and <c>--parallel</c> on the command line.</summary>
public class ParallelBenchTests
{
    /// <summary>Three prompts arriving at once over two slots: the report has the three modes (four with a drafter: one
    /// request at a time through the scheduler too), a batch of two, and batched answers identical to plain ones (sampled
    /// at T=1 too, with a seed per prompt); a bad value names the flag.</summary>
    [Theory]
    [InlineData("0", false)]
    [InlineData("1", false)]
    [InlineData("0", true)]
    public async Task BenchParallel_ReportsTheModes_AndBatchedAnswersArePlain(string temperature, bool drafter)
    {
        string target = TransformerModelTests.ModelFor("llama-successor-bf16");
        string[] draft = drafter ? ["--draft", DrafterZoo.Random(target, "bench-parallel")] : [];
        string prompts = Path.Combine(ModelZoo.TempFolder("bench-parallel-" + temperature), "prompts.jsonl");
        File.WriteAllLines(prompts, ["{\"prompt\": \"abcdefghijklmnop abc\", \"kind\": \"copy\"}", "{\"prompt\": \"klmnopqrstuvw klm\"}", "{\"prompt\": \"zyx\"}"]);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = await Coral.Cli.CliApp.RunAsync(["bench", "--model", target, .. draft, "--prompts", prompts, "--max-new-tokens", "12", "--rounds", "2", "--warmup", "1",
            "--parallel", "2", "--temperature", temperature, "--json"], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        var root = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal(2, root.GetProperty("parallel").GetInt32());
        Assert.Equal(2, root.GetProperty("peak_batch").GetInt32());
        Assert.True(root.GetProperty("batched_identical_to_plain").GetBoolean());
        var modes = root.GetProperty("modes");
        foreach (string mode in drafter ? ["serial_plain", "serial_default", "batched_serial", "batched"] : new[] { "serial_plain", "serial_default", "batched" })
        {
            Assert.True(modes.GetProperty(mode).GetProperty("tokens_per_second").GetDouble() > 0, mode);
        }

        Assert.True(modes.GetProperty("serial_plain").GetProperty("batched_speedup").GetDouble() > 0);
        Assert.Equal(drafter, modes.TryGetProperty("batched_serial", out _));
        Assert.Equal(1, await Coral.Cli.CliApp.RunAsync(["bench", "--model", target, "--prompts", prompts, "--parallel", "0"], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--parallel must be in [1, 64]", stderr.ToString());
    }
}

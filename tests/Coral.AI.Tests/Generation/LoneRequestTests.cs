using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Continuous batching with a drafter: a request alone in the scheduler decodes through the engine's speculative loop in
/// the engine's slot, yields to arrivals and to embeddings waiting for the model, goes on in the batch, and resumes the
/// loop when it is alone again — with exactly the tokens of plain decoding throughout.
/// </summary>
public class LoneRequestTests
{
    private static (InferenceEngine Engine, GenerationRequest Long, GenerationRequest Short) Setup(string name)
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        InferenceEngine engine = DrafterZoo.Engine(target, DrafterZoo.Copy(target, "lone-" + name), context: 256);
        engine.AdaptiveDepth = false;   // every step a cycle: the drafter's part is certain
        var random = new Random(5);
        int[] Prompt(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, engine.Model.Config.VocabSize)).ToArray();
        return (engine, new GenerationRequest(Prompt(9), SamplingParameters.Greedy, 60, []), new GenerationRequest(Prompt(14), SamplingParameters.Greedy, 8, []));
    }

    private static GenerationResult Plain(InferenceEngine engine, GenerationRequest request)
    {
        engine.ResetCache();
        return engine.Generate(request with { Speculative = false }, null, CancellationToken.None);
    }

    /// <summary>Alone, a request drafts (tree cycles, in one run of the engine's loop); when another arrives mid-answer it
    /// yields, both decode in one batch, and once the other is done the first resumes the loop: both answers are the plain
    /// ones.</summary>
    [Fact]
    public async Task LoneRequest_Drafts_YieldsToAnArrival_AndResumes()
    {
        var (engine, first, second) = Setup("arrival");
        using var disposeEngine = engine;
        GenerationResult plainFirst = Plain(engine, first), plainSecond = Plain(engine, second);
        Assert.True(plainFirst.TokenIds.Count >= 40, $"the first answer must be long enough to be interrupted ({plainFirst.TokenIds.Count})");
        engine.ResetCache();
        engine.EnableBatching(2);
        BatchScheduler batch = engine.Batch!;

        GenerationResult alone = await batch.GenerateAsync(first, null, CancellationToken.None);
        Assert.Equal(plainFirst.TokenIds, alone.TokenIds);
        Assert.True(alone.Speculative is { UsedDrafter: true, Cycles: > 0 }, "the lone request did not draft");
        Assert.True(alone.TargetForwardPasses < alone.TokenIds.Count, $"{alone.TargetForwardPasses} forwards for {alone.TokenIds.Count} tokens");
        Assert.Equal(1, batch.AloneRuns);
        Assert.Equal(1, batch.PeakBatch);

        batch.ForgetCachedTokens();
        Task<GenerationResult>? arrival = null;
        int seen = 0;
        GenerationResult interrupted = await batch.GenerateAsync(first, (_, _) =>
        {
            if (++seen == 6)
            {
                arrival = batch.GenerateAsync(second, null, CancellationToken.None);
            }
        }, CancellationToken.None);
        Assert.NotNull(arrival);
        Assert.Equal(plainFirst.TokenIds, interrupted.TokenIds);
        Assert.Equal(plainFirst.Text, interrupted.Text);
        Assert.Equal(plainSecond.TokenIds, (await arrival!).TokenIds);
        Assert.Equal(2, batch.PeakBatch);
        Assert.True(batch.AloneRuns >= 3, $"alone runs {batch.AloneRuns}: the first did not resume the loop after the second");
        Assert.True(interrupted.Speculative is { UsedDrafter: true, Cycles: > 0 });
    }

    /// <summary>An embedding (anything waiting in <see cref="InferenceEngine.EnterAsync"/>) gets the model between two
    /// cycles of a lone request, which then goes on to its plain answer.</summary>
    [Fact]
    public async Task LoneRequest_YieldsToAWaitingEmbedding()
    {
        var (engine, first, _) = Setup("embedding");
        using var disposeEngine = engine;
        GenerationResult plain = Plain(engine, first);
        engine.ResetCache();
        engine.EnableBatching(2);
        int seen = 0, seenWhenEntered = -1;
        Task? waiter = null;
        GenerationResult result = await engine.Batch!.GenerateAsync(first, (_, _) =>
        {
            if (++seen == 4)
            {
                waiter = Task.Run(async () =>
                {
                    await engine.EnterAsync(CancellationToken.None);
                    seenWhenEntered = Volatile.Read(ref seen);
                    engine.Gate.Release();
                });
            }
        }, CancellationToken.None);
        await waiter!;
        Assert.Equal(plain.TokenIds, result.TokenIds);
        Assert.InRange(seenWhenEntered, 4, result.TokenIds.Count - 1);
        Assert.True(engine.Batch.AloneRuns >= 2);
    }

    /// <summary>A sampled request with a seed stays in the batch even alone (its tokens must not depend on the load: those
    /// of plain sampling); one without a seed drafts; a cancelled lone request ends cancelled and the next is exact.</summary>
    [Fact]
    public async Task SeededSampling_StaysPlain_UnseededDrafts_AndCancellingALoneRequestKeepsTheCache()
    {
        var (engine, first, second) = Setup("sampled");
        using var disposeEngine = engine;
        GenerationRequest seeded = first with { Sampling = new SamplingParameters { Temperature = 0.8f, Seed = 4 }, MaxNewTokens = 24 };
        GenerationResult plainSeeded = Plain(engine, seeded), plainSecond = Plain(engine, second);
        engine.ResetCache();
        engine.EnableBatching(2);
        BatchScheduler batch = engine.Batch!;
        Assert.Equal(plainSeeded.TokenIds, (await batch.GenerateAsync(seeded, null, CancellationToken.None)).TokenIds);
        Assert.Equal(0, batch.AloneRuns);

        GenerationResult unseeded = await batch.GenerateAsync(seeded with { Sampling = seeded.Sampling with { Seed = null } }, null, CancellationToken.None);
        Assert.Equal(1, batch.AloneRuns);
        Assert.True(unseeded.Speculative is { UsedDrafter: true, Cycles: > 0 });

        using var cts = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => batch.GenerateAsync(first, (_, _) =>
        {
            if (++seen == 5)
            {
                cts.Cancel();
            }
        }, cts.Token));
        Assert.InRange(seen, 5, 5 + TreeShape.Default.Depth + 1);   // at most the rest of one cycle
        Assert.Equal(plainSecond.TokenIds, (await batch.GenerateAsync(second, null, CancellationToken.None)).TokenIds);
    }

    /// <summary>A new prompt yields between its chunks: the engine's loop stops with the prompt so far in the cache and
    /// the drafter fed every pair of it (the batch would prefill the rest), and the loop started again computes nothing
    /// twice and gives the plain answer.</summary>
    [Fact]
    public void NewPrompt_YieldsBetweenChunks_AndTheDrafterKeepsItsPairs()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        string drafter = DrafterZoo.Copy(target, "lone-prompt");
        TransformerModel model = TransformerModel.Load(target, torch.CPU, ScalarType.Float32, 256,
            TorchDevices.ResolveHeadType(ScalarType.Float32, torch.CPU, speculative: true));
        using var engine = new InferenceEngine(model, HfTokenizer.Load(target), 256, "lone", prefillChunk: 16, draft: DraftModel.Load(drafter, model, 256 + 128));
        engine.AdaptiveDepth = false;
        var random = new Random(8);
        var request = new GenerationRequest(Enumerable.Range(0, 53).Select(_ => random.Next(3, model.Config.VocabSize)).ToArray(), SamplingParameters.Greedy, 30, []);
        GenerationResult plain = engine.Generate(request with { Speculative = false }, null, CancellationToken.None);

        engine.ResetCache();
        var d = new RequestDecoding(request, engine, null);
        int asked = 0;
        engine.Run(d, () => ++asked == 2, CancellationToken.None);   // yields before the third chunk
        Assert.Null(d.Last);
        Assert.Empty(d.Emitter.Ids);
        Assert.Equal(32, engine.CachedTokens.Count);
        Assert.Equal(request.PromptIds.Take(32), engine.CachedTokens);
        Assert.Equal(32, engine.Drafter!.Cache.Length);   // pairs 0..31: their next tokens are the prompt's
        engine.Run(d, null, CancellationToken.None);
        GenerationResult result = d.Result();
        Assert.Equal(plain.TokenIds, result.TokenIds);
        Assert.True(result.Speculative is { UsedDrafter: true, Cycles: > 0 });
    }

    /// <summary>Through the scheduler: a request with a long prompt alone, another arriving while it prefills or decodes —
    /// wherever the first yields, both answers are the plain ones.</summary>
    [Fact]
    public async Task ArrivalDuringALongPrompt_KeepsBothAnswersPlain()
    {
        var (engine, first, second) = Setup("long-prompt");
        using var disposeEngine = engine;
        var random = new Random(9);
        GenerationRequest longPrompt = first with { PromptIds = [.. Enumerable.Range(0, 180).Select(_ => random.Next(3, engine.Model.Config.VocabSize))], MaxNewTokens = 30 };
        GenerationResult plainLong = Plain(engine, longPrompt), plainSecond = Plain(engine, second);
        engine.ResetCache();
        engine.EnableBatching(2);
        for (int delayMs = 0; delayMs <= 20; delayMs += 10)
        {
            engine.Batch!.ForgetCachedTokens();
            Task<GenerationResult> a = engine.Batch.GenerateAsync(longPrompt, null, CancellationToken.None);
            await Task.Delay(delayMs);
            Task<GenerationResult> b = engine.Batch.GenerateAsync(second, null, CancellationToken.None);
            Assert.Equal(plainLong.TokenIds, (await a).TokenIds);
            Assert.Equal(plainSecond.TokenIds, (await b).TokenIds);
        }
    }
}

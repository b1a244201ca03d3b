using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Speculative sampling reproduces the target distribution (chi-square at a fixed significance), and a deliberately
/// biased acceptance rule fails the same test, so the test can fail.
/// </summary>
public class StochasticAcceptanceTests
{
    // 0.999 quantiles of chi-square for the degrees of freedom used below.
    private static double ChiSquareCritical(int df) => df switch
    {
        <= 0 => double.PositiveInfinity,
        _ => df + 3.09 * Math.Sqrt(2.0 * df) + 2.0 * 3.09 * 3.09 / 3.0,   // Wilson–Hilferty-style upper bound, p ≈ 0.001
    };

    /// <summary>Chi-square of observed counts against probabilities, categories with expected count under 5 pooled.</summary>
    private static (double Chi, int Df) ChiSquare(int[] counts, double[] p)
    {
        int n = counts.Sum();
        double chi = 0, pooledExpected = 0, pooledObserved = 0;
        int categories = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double e = n * p[i];
            if (e < 5)
            {
                pooledExpected += e;
                pooledObserved += counts[i];
                continue;
            }

            chi += (counts[i] - e) * (counts[i] - e) / e;
            categories++;
        }

        if (pooledExpected >= 5)
        {
            chi += (pooledObserved - pooledExpected) * (pooledObserved - pooledExpected) / pooledExpected;
            categories++;
        }
        else
        {
            chi += pooledObserved > 0 && pooledExpected == 0 ? double.PositiveInfinity : 0;
        }

        return (chi, categories - 1);
    }

    private static float[] Distribution(int seed, int vocab)
    {
        var rng = new Random(seed);
        var logits = Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 4)).ToArray();
        var probs = new float[vocab];
        new LogitsSampler(new SamplingParameters { Temperature = 1f }, vocab).Distribution(logits, probs);
        return probs;
    }

    /// <summary>One node's step: the emitted token under the lossless rule, or under a biased rule (no renormalisation,
    /// bonus drawn from the untouched P).</summary>
    private static int Step(float[] p, int[] children, Random rng, bool biased)
    {
        float[] probs = (float[])p.Clone();
        if (biased)
        {
            foreach (int x in children)
            {
                if (rng.NextDouble() < p[x])
                {
                    return x;
                }
            }

            return Draw(p, rng);
        }

        int c = TreeAcceptance.AcceptChild(probs, children, rng.NextDouble);
        return c >= 0 ? children[c] : Draw(probs, rng);
    }

    private static int Draw(float[] p, Random rng)
    {
        double u = rng.NextDouble(), acc = 0;
        for (int i = 0; i < p.Length; i++)
        {
            acc += p[i];
            if (u < acc)
            {
                return i;
            }
        }

        return p.Length - 1;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MultiCandidateAcceptance_SamplesTheTargetDistribution_AndABiasedRuleFails(bool biased)
    {
        const int vocab = 12, n = 40000;
        float[] p = Distribution(1, vocab);
        int[] children = [3, 7, 0, 11];          // deterministic draft candidates, tried in this order
        var rng = new Random(2024);
        var counts = new int[vocab];
        for (int i = 0; i < n; i++)
        {
            counts[Step(p, children, rng, biased)]++;
        }

        var (chi, df) = ChiSquare(counts, p.Select(x => (double)x).ToArray());
        if (biased)
        {
            Assert.True(chi > ChiSquareCritical(df), $"the biased rule passed: chi² {chi:F1}, df {df}");
        }
        else
        {
            Assert.True(chi < ChiSquareCritical(df), $"chi² {chi:F1}, df {df}");
        }
    }

    [Fact]
    public void EndToEnd_SecondTokenFollowsTheTargetConditional()
    {
        // Tied target + copy drafter: the first speculative cycle really accepts and rejects; T = 2.5 sampling (a flat enough conditional).
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        using var engine = DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-tied-scaled", "copy"));
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time");
        var pairs = new List<(int First, int Second)>();
        for (int seed = 0; seed < 1200; seed++)
        {
            var request = new GenerationRequest(prompt, new SamplingParameters { Temperature = 2.5f, Seed = seed }, 2, []) { Tree = TreeShape.Default with { RouterTopK = 0 } };
            var r = engine.Generate(request, null, default);
            if (r.TokenIds.Count == 2)
            {
                pairs.Add((r.TokenIds[0], r.TokenIds[1]));
            }
        }

        AssertSecondTokensFollowTheConditional(engine, prompt, 2.5f, pairs);
    }

    /// <summary>The second tokens of the runs that share the most common first token, against the exact conditional
    /// p(second | prompt, first) from a plain forward (chi-square at p ≈ 0.001). Returns that first token.</summary>
    private static int AssertSecondTokensFollowTheConditional(InferenceEngine engine, List<int> prompt, float temperature, IReadOnlyList<(int First, int Second)> pairs)
    {
        int first = pairs.GroupBy(p => p.First).OrderByDescending(g => g.Count()).First().Key;
        int[] seconds = pairs.Where(p => p.First == first).Select(p => p.Second).ToArray();
        Assert.True(seconds.Length > 300, $"need enough samples with the same first token (got {seconds.Length})");
        engine.ResetCache();
        float[] p;
        using (torch.inference_mode())
        using (torch.NewDisposeScope())
        {
            using var cache = engine.Model.CreateCache(64);
            Tensor hidden = engine.Model.Forward([.. prompt.Select(x => (long)x), first], cache);
            float[] logits = TorchTestHelpers.ToArray(engine.Model.Logits(hidden.narrow(0, hidden.shape[0] - 1, 1)));
            p = new float[logits.Length];
            var sampler = new LogitsSampler(new SamplingParameters { Temperature = temperature }, logits.Length);
            sampler.Accept(first);
            sampler.Distribution(logits, p);
        }

        var counts = new int[p.Length];
        foreach (int s in seconds)
        {
            counts[s]++;
        }

        var (chi, df) = ChiSquare(counts, p.Select(x => (double)x).ToArray());
        string top = string.Join(",", p.Select((x, i) => (x, i)).OrderByDescending(t => t.x).Take(4).Select(t => $"{t.i}:{t.x:F3}"));
        Assert.True(df >= 1, $"the conditional must have several likely tokens: first {first}, top {top}, n {seconds.Length}");
        Assert.True(chi < ChiSquareCritical(df), $"chi² {chi:F1}, df {df}; first {first}, top {top}");
        return first;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EndToEnd_PromptLookupSampling_SecondTokenFollowsTheTargetConditional(bool withDrafter)
    {
        // The successor target with a copied run in its prompt: from the first token on, a lookup proposes the run's
        // continuation, which at T = 20 (the successor head is sharp: only that hot does its next token leave room for others) is accepted with the target's probability and otherwise replaced by a draw
        // from the residual. The second token must follow the exact conditional, whichever path produced it.
        string target = TransformerModelTests.ModelFor("llama-successor-bf16");
        using var engine = withDrafter
            ? DrafterZoo.Engine(target, SpeculativeDecodingTests.Drafter("llama-successor-bf16", "random"))
            : InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 512);
        engine.PromptLookupTokens = 3;
        engine.DrafterRecheckEvery = 0;   // with the drafter: every request runs the speculative loop
        engine.LookupGate = new LookupGate(probes: int.MaxValue);   // every proposal verified, whatever it yields
        List<int> prompt = [.. Enumerable.Range(10, 21), 10, 11, 12];
        const float temperature = 20f;
        var pairs = new List<(int First, int Second, bool Lookup)>();
        for (int seed = 0; seed < 1500; seed++)
        {
            engine.ResetCache();
            var r = engine.Generate(new GenerationRequest(prompt, new SamplingParameters { Temperature = temperature, Seed = seed }, 2, []), null, default);
            if (r.TokenIds.Count == 2)
            {
                pairs.Add((r.TokenIds[0], r.TokenIds[1], r.Speculative?.LookupCycles > 0));
            }
        }

        int first = AssertSecondTokensFollowTheConditional(engine, prompt, temperature, pairs.Select(p => (p.First, p.Second)).ToList());
        // After that first token the sequence has something to copy: its second token came from a verified proposal.
        Assert.All(pairs.Where(p => p.First == first), p => Assert.True(p.Lookup));
    }
}

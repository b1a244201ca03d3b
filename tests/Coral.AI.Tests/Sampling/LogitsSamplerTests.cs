namespace Coral.AI.Tests;

public class LogitsSamplerTests
{
    private static readonly float[] Logits = [1.0f, 3.0f, 0.5f, 2.5f, -1f, 0f, 2.9f, -3f];

    [Fact]
    public void Greedy_PicksArgMax()
    {
        var s = new LogitsSampler(SamplingParameters.Greedy, Logits.Length);
        Assert.Equal(1, s.Sample(Logits));
    }

    [Fact]
    public void SameSeed_SameDraws_DifferentSeed_DifferentDraws()
    {
        int[] Draw(long seed)
        {
            var s = new LogitsSampler(new SamplingParameters { Temperature = 1f, Seed = seed }, Logits.Length);
            return Enumerable.Range(0, 50).Select(_ => s.Sample(Logits)).ToArray();
        }

        Assert.Equal(Draw(42), Draw(42));
        Assert.NotEqual(Draw(42), Draw(43));
    }

    [Fact]
    public void TopK1_AlwaysArgMax()
    {
        var s = new LogitsSampler(new SamplingParameters { Temperature = 5f, TopK = 1, Seed = 1 }, Logits.Length);
        Assert.All(Enumerable.Range(0, 100), _ => Assert.Equal(1, s.Sample(Logits)));
    }

    [Fact]
    public void TopK_And_TopP_And_MinP_RestrictTheSupport()
    {
        var probs = new float[Logits.Length];
        new LogitsSampler(new SamplingParameters { Temperature = 1f, TopK = 3 }, Logits.Length).Distribution(Logits, probs);
        Assert.Equal(new[] { 1, 3, 6 }, Enumerable.Range(0, probs.Length).Where(i => probs[i] > 0).ToArray());

        // softmax mass: 3.0 -> .36, 2.9 -> .33, 2.5 -> .22: top-p 0.6 keeps exactly the first two.
        new LogitsSampler(new SamplingParameters { Temperature = 1f, TopP = 0.6f }, Logits.Length).Distribution(Logits, probs);
        Assert.Equal(new[] { 1, 6 }, Enumerable.Range(0, probs.Length).Where(i => probs[i] > 0).ToArray());
        Assert.Equal(1.0, probs.Sum(), 5);

        // min-p 0.5 keeps tokens with p >= 0.5 * pmax: logits within ln 2 of the max.
        new LogitsSampler(new SamplingParameters { Temperature = 1f, MinP = 0.5f }, Logits.Length).Distribution(Logits, probs);
        Assert.Equal(new[] { 1, 3, 6 }, Enumerable.Range(0, probs.Length).Where(i => probs[i] > 0).ToArray());
    }

    [Fact]
    public void Samples_FollowTheTemperatureSoftmax_ChiSquare()
    {
        const int n = 20000;
        const float t = 0.8f;
        var s = new LogitsSampler(new SamplingParameters { Temperature = t, Seed = 7 }, Logits.Length);
        var counts = new int[Logits.Length];
        for (int i = 0; i < n; i++)
        {
            counts[s.Sample(Logits)]++;
        }

        double z = Logits.Sum(l => Math.Exp(l / t));
        double chi = 0;
        for (int i = 0; i < Logits.Length; i++)
        {
            double expected = n * Math.Exp(Logits[i] / t) / z;
            chi += (counts[i] - expected) * (counts[i] - expected) / expected;
        }

        // 7 degrees of freedom: the 0.999 quantile is 24.32.
        Assert.True(chi < 24.32, $"chi-square {chi:F1}");
    }

    [Fact]
    public void Penalties_FollowOpenAiSemantics()
    {
        var s = new LogitsSampler(new SamplingParameters { Temperature = 0f, FrequencyPenalty = 0.3f, PresencePenalty = 0.1f }, Logits.Length);
        Assert.Equal(1, s.Sample(Logits));
        s.Accept(1);
        // 3.0 - 0.3 - 0.1 = 2.6 < 2.9: token 6 now wins.
        Assert.Equal(6, s.Sample(Logits));
        s.Accept(6);
        s.Accept(1);
        // token 1: 3.0 - 0.6 - 0.1 = 2.3; token 6: 2.9 - 0.4 = 2.5; token 3: 2.5 -> tie broken by index (3 first).
        Assert.Equal(3, s.Sample(Logits));
    }

    [Theory]
    [InlineData(40, 1f)]       // the one-pass selection (k ≤ 256)
    [InlineData(1000, 1f)]     // the sorted path
    [InlineData(null, 0.9f)]   // the nucleus
    [InlineData(7, 0.5f)]
    public void TopKAndTopP_KeepExactlyTheNaiveSupport_WithTiesToTheLowerIndex(int? topK, float topP)
    {
        // 50k normal logits rounded to 1/4: few tokens per level at the top, exact ties at every cut, which a token entering
        // the best-k after its equals must lose. The support must be what sorting every token by (probability descending,
        // index ascending) and cutting gives.
        var random = new Random(5);
        float[] logits = Enumerable.Range(0, 50_000)
            .Select(_ => MathF.Round(2f * MathF.Sqrt(-2f * MathF.Log(1f - random.NextSingle())) * MathF.Cos(2f * MathF.PI * random.NextSingle()) * 4) / 4)
            .ToArray();
        var sampling = new SamplingParameters { Temperature = 0.7f, TopK = topK, TopP = topP };
        var probs = new float[logits.Length];
        new LogitsSampler(sampling, logits.Length).Distribution(logits, probs);

        double[] p = logits.Select(l => Math.Exp((l - logits.Max()) / 0.7)).ToArray();
        int[] order = Enumerable.Range(0, p.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        var support = order.Take(topK ?? order.Length).ToList();
        if (topP < 1f)
        {
            double total = p.Sum(), cum = 0;
            int keep = support.TakeWhile(i => (cum += p[i] / total) < topP).Count() + 1;
            support = support.Take(keep).ToList();
        }

        Assert.Equal(support.Order(), Enumerable.Range(0, probs.Length).Where(i => probs[i] > 0));
        Assert.Equal(1.0, probs.Sum(), 4);
    }
}

/// <summary>Logits a broken model could produce (NaN, infinities) do not hang or crash the sampler.</summary>
public class LogitsSamplerBadLogitsTests
{
    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public async Task NonFiniteLogits_EndWithinASecond(float bad)
    {
        var logits = new float[64];
        for (int i = 0; i < logits.Length; i++)
        {
            logits[i] = i % 3 == 0 ? bad : i * 0.01f;
        }

        foreach (SamplingParameters p in new[]
        {
            SamplingParameters.Greedy, new SamplingParameters { Temperature = 0.8f, TopP = 0.9f, Seed = 1 },
            new SamplingParameters { Temperature = 1f, TopK = 5, MinP = 0.1f, Seed = 2 }, new SamplingParameters { Temperature = 1f, TopP = 0.5f, Seed = 3, RepetitionPenalty = 1.3f },
        })
        {
            var sampler = new LogitsSampler(p, logits.Length, [1, 2, 3]);
            int token = await Task.Run(() => sampler.Sample(logits)).WaitAsync(TimeSpan.FromSeconds(5));
            Assert.InRange(token, 0, logits.Length - 1);
        }

        var allNaN = Enumerable.Repeat(float.NaN, 16).ToArray();
        var nucleus = new LogitsSampler(new SamplingParameters { Temperature = 0.7f, TopP = 0.9f, Seed = 4 }, allNaN.Length);
        int any = await Task.Run(() => nucleus.Sample(allNaN)).WaitAsync(TimeSpan.FromSeconds(5));
        Assert.InRange(any, 0, allNaN.Length - 1);
    }
}

namespace Coral.AI.Tests;

public class DepthControllerTests
{
    [Fact]
    public void ADrafterThatIsNeverRight_IsCutToOneLevel()
    {
        var c = new DepthController(5);
        for (int i = 0; i < 100; i++)
        {
            c.Observe(c.NextDepth(), acceptedDrafted: 0, draftMs: 1.0 * c.NextDepth(), verifyMs: 5);
        }

        Assert.Equal(1, c.Depth);
        Assert.True(c.Reach[1] < 0.01);
    }

    [Fact]
    public void ADrafterThatIsAlwaysRight_KeepsTheFullDepth()
    {
        var c = new DepthController(5);
        for (int i = 0; i < 100; i++)
        {
            int d = c.NextDepth();
            c.Observe(d, acceptedDrafted: d, draftMs: 1.0 * d, verifyMs: 5);
        }

        Assert.Equal(5, c.Depth);
    }

    [Fact]
    public void TheDepth_MaximisesExpectedTokensPerMillisecond()
    {
        // Always exactly 2 accepted: levels 3+ never pay. Cheap draft steps (0.1 ms vs 5 ms verify): depth 2 wins.
        var c = new DepthController(5);
        for (int i = 0; i < 200; i++)
        {
            int d = c.NextDepth();
            c.Observe(d, acceptedDrafted: Math.Min(d, 2), draftMs: 0.1 * d, verifyMs: 5);
        }

        Assert.Equal(2, c.Depth);
        // Expensive draft steps (5 ms each, as costly as verification): one level is the best trade.
        var costly = new DepthController(5);
        for (int i = 0; i < 200; i++)
        {
            int d = costly.NextDepth();
            costly.Observe(d, acceptedDrafted: d >= 1 ? 1 : 0, draftMs: 5.0 * d, verifyMs: 5);
        }

        Assert.Equal(1, costly.Depth);
    }

    [Fact]
    public void ACutDepth_ComesBackWhenTheDrafterImproves()
    {
        var c = new DepthController(4);
        for (int i = 0; i < 100; i++)
        {
            c.Observe(c.NextDepth(), 0, c.NextDepth() * 0.5, 5);
        }

        Assert.Equal(1, c.Depth);
        var depths = new List<int>();
        for (int i = 0; i < 400; i++)
        {
            int d = c.NextDepth();
            depths.Add(d);
            c.Observe(d, d, d * 0.5, 5);
        }

        Assert.Equal(4, c.Depth);
        Assert.Contains(2, depths);   // it got there through exploration cycles, one level at a time
    }

    /// <summary>Runs <paramref name="steps"/> steps with a fallback controller: plain steps take <paramref name="plainMs"/>(i),
    /// a cycle of depth d accepts <paramref name="accepted"/>(d) drafted tokens, drafts 1 ms a level, verifies in 5 ms and
    /// spends 0.5 ms on the rest. Returns the depth of every step (0 = plain).</summary>
    private static List<int> Drive(DepthController c, int steps, Func<int, double> plainMs, Func<int, int> accepted) =>
        Drive(c, steps, plainMs, (_, d) => c.Observe(d, accepted(d), 1.0 * d, 5, 0.5));

    /// <summary>Runs the controller for <paramref name="steps"/> decisions: plain steps observed at plainMs(step), cycles
    /// by <paramref name="cycle"/>(step, depth); returns the depths chosen.</summary>
    private static List<int> Drive(DepthController c, int steps, Func<int, double> plainMs, Action<int, int> cycle)
    {
        var depths = new List<int>();
        for (int i = 0; i < steps; i++)
        {
            int d = c.NextDepth();
            depths.Add(d);
            if (d == 0)
            {
                c.ObservePlain(plainMs(i));
            }
            else
            {
                cycle(i, d);
            }
        }

        return depths;
    }

    [Fact]
    public void PlainFallback_TakesPlainSteps_WhenNoTreePays_AndKeepsProbing()
    {
        // Never right, verification (5 ms) dearer than a plain step (3 ms): plain steps win; a depth-1 cycle is re-tried
        // after 16 plain steps, then after 32, 64, up to 128 while each try confirms plain steps.
        var c = new DepthController(5, plainFallback: true);
        List<int> depths = Drive(c, 700, _ => 3, _ => 0);
        Assert.Equal(0, c.Depth);
        Assert.All(depths.Skip(1).Take(DepthController.PlainProbes), d => Assert.Equal(0, d));   // the plain-cost probes
        int[] tries = Enumerable.Range(0, depths.Count).Where(i => depths[i] == 1).ToArray();
        int[] gaps = tries.Zip(tries.Skip(1), (a, b) => b - a).ToArray();
        Assert.Equal(gaps.Order(), gaps);                             // the waits only grow
        Assert.True(gaps[0] <= 2 * DepthController.ExploreEvery, string.Join(",", gaps));   // after the first try (16 steps in)
        Assert.Equal(DepthController.MaxPlainRun, gaps[^1]);
        Assert.True(gaps.All(g => g <= DepthController.MaxPlainRun), string.Join(",", gaps));

        // The text turns copyable after 300 steps (every drafted token accepted): the next try accepts, tries come every
        // 16 steps again and speculation takes over.
        var turning = new DepthController(5, plainFallback: true);
        List<int> late = Drive(turning, 1200, _ => 3, (i, d) => turning.Observe(d, i < 300 ? 0 : d, 1.0 * d, 5, 0.5));

        Assert.True(turning.Depth > 1, $"depth {turning.Depth}; reach {string.Join(",", turning.Reach.Select(r => r.ToString("F2")))}; tries {string.Join(",", Enumerable.Range(0, late.Count).Where(i => late[i] > 0).Select(i => $"{i}:{late[i]}"))}");
        Assert.True(late.Skip(1100).Count(d => d > 0) > 80, "speculates at the end");

        // Always right: five tokens and a bonus per 10.5 ms beat one token per 3 ms; the plain probes do not stick.
        var good = new DepthController(5, plainFallback: true);
        Drive(good, 200, _ => 3, d => d);
        Assert.Equal(5, good.Depth);

        // First plain measurements that came out slow (five at 50 ms: JIT, a hiccup) do not decide the run: while
        // speculating, every other exploration is a plain step, and their 3 ms bring the median down until plain steps win.
        var hiccup = new DepthController(5, plainFallback: true);
        List<int> seen = Drive(hiccup, 600, i => i < 5 ? 50 : 3, _ => 0);
        Assert.Equal(0, hiccup.Depth);
        Assert.True(seen.Take(100).Count(d => d > 0) > 50, "speculates at first");
        Assert.True(seen.Skip(500).Count(d => d == 0) > 80, "plain steps at the end");

        // One slow probe among three is outvoted at once: the median is 3 ms, and plain steps win as soon as the cycles
        // are timed (the first cycle, whose costs are not counted, the three probes, then three timed cycles).
        var once = new DepthController(5, plainFallback: true);
        List<int> early = Drive(once, 40, i => i == 1 ? 50 : 3, _ => 0);
        Assert.Equal(0, once.Depth);
        Assert.Equal([5, 0, 0, 0], early.Take(4));
        Assert.Equal(3, early.Skip(4).Take(3).Count(d => d > 0));
        Assert.True(early.Skip(7).Take(10).All(d => d == 0), string.Join(",", early));

        // A first cycle that pays for compilation (60 ms for a cycle of 10.5) does not send a drafter that is always
        // right to plain steps: its costs are not counted, and the next cycles' are.
        var compiled = new DepthController(5, plainFallback: true);
        bool first = true;
        List<int> afterJit = Drive(compiled, 60, _ => 3, (_, d) =>
        {
            compiled.Observe(d, d, first ? 30.0 * d : 1.0 * d, first ? 30 : 5, 0.5);
            first = false;
        });

        Assert.Equal(5, compiled.Depth);
        Assert.True(afterJit.Skip(4).Take(20).Count(d => d == 0) <= 2, string.Join(",", afterJit));
        Assert.True(afterJit.Skip(4).Take(8).All(d => d == 5), string.Join(",", afterJit));   // the first cycle's costs do not price depth 5 out

        // Without the fallback, depth 0 is never proposed.
        var plain = new DepthController(5);
        Assert.DoesNotContain(0, Enumerable.Range(0, 50).Select(_ => { int d = plain.NextDepth(); plain.Observe(d, 0, d, 5); return d; }));
    }

    [Fact]
    public void VerificationThatGrowsWithDepth_IsPricedPerDepth()
    {
        // Every drafted token accepted, draft steps cheap (0.1 ms), but each level verifies a row more and a row costs
        // 1.5 ms (a CPU): v(d) = 1 + 1.5·d, so one level is the best trade — (1 + 1) / 2.6 against 3 / 4.2 for two.
        // Starting at the full depth only v(5) is timed; with the load-time prior the other depths are priced from it.
        static double Verify(int d) => 1 + (1.5 * d);
        var priced = new DepthController(5, verifyPrior: d => 10 * Verify(d));   // any unit: only ratios count
        var flat = new DepthController(5);
        foreach (DepthController c in new[] { priced, flat })
        {
            for (int i = 0; i < 200; i++)
            {
                int d = c.NextDepth();
                c.Observe(d, acceptedDrafted: d, draftMs: 0.1 * d, verifyMs: Verify(d));
            }
        }

        Assert.Equal(1, priced.Depth);
        Assert.Equal(5, flat.Depth);   // one verification cost for every depth: the deepest looks best (the old model)
    }

    [Fact]
    public void TheVerifyPrior_IsPiecewiseLinear_AndExtendedAlongItsEnds()
    {
        var points = new Dictionary<int, double> { [3] = 2.0, [4] = 2.5, [8] = 4.5 };
        Assert.Equal(2.0, InferenceEngine.Interpolate(points, 3), 9);
        Assert.Equal(3.5, InferenceEngine.Interpolate(points, 6), 9);
        Assert.Equal(1.5, InferenceEngine.Interpolate(points, 2), 9);    // below the first size, along its first segment
        Assert.Equal(1.0, InferenceEngine.Interpolate(points, 0), 9);    // ... but never under half the first point
        Assert.Equal(8.5, InferenceEngine.Interpolate(points, 16), 9);   // past the last, along the last segment
        Assert.Equal(7.0, InferenceEngine.Interpolate(new Dictionary<int, double> { [16] = 7.0 }, 4), 9);

        // A cycle of depth d verifies what the shape holds at that depth.
        Assert.Equal(new[] { 2, 3, 4 }, new[] { 1, 2, 3 }.Select(new TreeShape(3, 1, 4, -1).NodesAt));
        Assert.Equal(new[] { 9, 16, 16 }, new[] { 1, 2, 5 }.Select(new TreeShape(5, 8, 16, -1).NodesAt));
    }
}

namespace Coral.AI.Tests;

public class DrafterSitOutTests
{
    /// <summary>Requests until the next re-check: how many <see cref="DrafterSitOut.Skip"/> says to sit out before one
    /// runs the drafter (at most <paramref name="limit"/>).</summary>
    private static int SkipsBeforeRecheck(DrafterSitOut s, int kind, int limit = 1000)
    {
        int skips = 0;
        while (skips < limit && s.Skip(kind))
        {
            skips++;
        }

        return skips;
    }

    [Fact]
    public void ARecheckThatLosesAgain_DoublesTheWait_UpToTheLimit_AndAWinResetsIt()
    {
        var s = new DrafterSitOut();
        Assert.False(s.Skip(0));   // a drafter that never lost always runs
        s.Observe(0, loses: true);
        Assert.Equal(7, SkipsBeforeRecheck(s, 0));    // the 8th request re-checks
        s.Observe(0, loses: true);
        Assert.Equal(15, SkipsBeforeRecheck(s, 0));   // lost again: 16
        s.Observe(0, loses: true);
        Assert.Equal(31, SkipsBeforeRecheck(s, 0));
        s.Observe(0, loses: true);
        Assert.Equal(63, SkipsBeforeRecheck(s, 0));
        s.Observe(0, loses: true);
        Assert.Equal(63, SkipsBeforeRecheck(s, 0));   // capped at RecheckLimit

        // The other kind keeps its own account.
        Assert.False(s.Skip(1));

        // A re-check that wins brings the drafter back, and a later loss starts from the first interval again.
        s.Observe(0, loses: false);
        Assert.Equal(0, SkipsBeforeRecheck(s, 0));
        Assert.Equal(0, SkipsBeforeRecheck(s, 0));
        s.Observe(0, loses: true);
        Assert.Equal(7, SkipsBeforeRecheck(s, 0));
    }

    [Fact]
    public void AFirstLoss_WaitsTheFirstInterval_AndZeroNeverSitsOut()
    {
        var s = new DrafterSitOut { RecheckEvery = 4, RecheckLimit = 2 };   // a limit below the first interval: the first
        s.Observe(1, loses: true);
        Assert.Equal(3, SkipsBeforeRecheck(s, 1));
        s.Observe(1, loses: true);
        Assert.Equal(3, SkipsBeforeRecheck(s, 1));

        s.RecheckEvery = 0;
        Assert.Equal(0, SkipsBeforeRecheck(s, 1));
    }
}

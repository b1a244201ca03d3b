namespace Coral.AI.Tests;

public class CpuParallelTests
{
    [Fact]
    public void Run_RunsEveryPartOnce_ForConcurrentCallers()
    {
        // Two callers at once: one gets the helper thread, the other runs its parts itself; neither's parts mix.
        var works = Enumerable.Range(0, 2).Select(_ => new CountingWork(8)).ToArray();
        Parallel.For(0, 2, i =>
        {
            for (int round = 0; round < 2000; round++)
            {
                CpuParallel.Run(works[i], 8);
                works[i].CheckAndReset(round);
            }
        });
    }

    [Fact]
    public void APartsException_ReachesTheCaller_AfterEveryOtherPartRan_AndTheHelperStaysUsable()
    {
        var work = new CountingWork(16) { Throwing = 5 };
        for (int round = 0; round < 50; round++)
        {
            var e = Assert.Throws<InvalidOperationException>(() => CpuParallel.Run(work, 16));
            Assert.Equal("part 5", e.Message);
            work.CheckAndReset(round);
        }

        work.Throwing = -1;
        CpuParallel.Run(work, 16);
        work.CheckAndReset(50);
    }

    [Fact]
    public void MoreHelpersThanCores_AndAChangeOfThreads_RunEveryPartOnce()
    {
        // Four threads on this two-core machine (the helpers are descheduled mid-round), then three: each change replaces
        // the team; results must not depend on who ran what.
        int before = CpuParallel.Threads;
        try
        {
            foreach (int threads in new[] { 4, 3 })
            {
                CpuParallel.Threads = threads;
                var work = new CountingWork(13);
                for (int round = 0; round < 500; round++)
                {
                    CpuParallel.Run(work, 13);
                    work.CheckAndReset(round);
                }

                work.Throwing = 12;
                Assert.Throws<InvalidOperationException>(() => CpuParallel.Run(work, 13));
                work.CheckAndReset(-1);
            }
        }
        finally
        {
            CpuParallel.Threads = before;
        }
    }

    [Fact]
    public void ARoundReturns_OnlyWhenItsOwnPartsAreDone_UnderOversubscription()
    {
        // Rounds of alternating sizes back to back, eight threads on two cores: a helper descheduled while leaving one round
        // must neither claim nor count a part of the next (when it could, a round returned with a part still running).
        int before = CpuParallel.Threads;
        try
        {
            CpuParallel.Threads = 8;
            for (int round = 0; round < 100_000; round++)
            {
                var work = new FinishingWork(round % 2 == 0 ? 2 : 9);
                CpuParallel.Run(work, work.Finished.Length);
                Assert.True(work.Finished.All(f => f == 1), $"round {round}: a part was still running when Run returned");
            }
        }
        finally
        {
            CpuParallel.Threads = before;
        }
    }

    private sealed class FinishingWork(int parts) : ICpuWork
    {
        public int[] Finished { get; } = new int[parts];

        public void Run(int part)
        {
            if (part % 3 == 2)
            {
                Thread.SpinWait(20);
            }

            Volatile.Write(ref Finished[part], 1);
        }
    }

    private sealed class CountingWork(int parts) : ICpuWork
    {
        private readonly int[] _runs = new int[parts];

        public int Throwing { get; set; } = -1;

        public void Run(int part)
        {
            Interlocked.Increment(ref _runs[part]);
            if (part == Throwing)
            {
                throw new InvalidOperationException($"part {part}");
            }
        }

        public void CheckAndReset(int round)
        {
            Assert.True(_runs.All(r => r == 1), $"round {round}: parts ran {string.Join(",", _runs)} times");
            Array.Clear(_runs);
        }
    }
}

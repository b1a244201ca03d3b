using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Coral.AI;

/// <summary>Work that <see cref="CpuParallel"/> splits into independent parts.</summary>
internal interface ICpuWork
{
    /// <summary>Runs part <paramref name="part"/> (of the count given to <see cref="CpuParallel.Run"/>).</summary>
    void Run(int part);
}

/// <summary>
/// Splits the CPU kernels' GEMMs between the calling thread and one helper thread. A decode step is ≈ 50 GEMMs of tens
/// of microseconds each, too short for a thread-pool hand-off (≈ 5–20 µs) and, at one row, bound by memory bandwidth
/// that one core cannot saturate; the helper spins while steps arrive (a hand-off then costs well under a microsecond)
/// and sleeps after <see cref="IdleSpin"/> without work.
/// </summary>
/// <remarks>
/// Parts are claimed first come, first served, so a part never waits for a helper that is still waking up or busy: the
/// caller runs whatever the helper has not claimed. A part's result must not depend on which thread runs it (the
/// kernels compute every output element the same way whatever the split). Concurrent callers do not queue: a second
/// caller while the helper is taken runs all its parts itself.
/// </remarks>
internal static class CpuParallel
{
    /// <summary>How long the helper spins without work before it sleeps.</summary>
    public static readonly TimeSpan IdleSpin = TimeSpan.FromMilliseconds(2);

    private static readonly Lazy<Helper> s_helper = new(() => new Helper());

    /// <summary>Gets or sets whether a helper thread is used (by default when there is more than one processor and
    /// <c>CORAL_CPU_THREADS</c> is not 1; benchmarks switch it to compare).</summary>
    public static bool Enabled { get; set; } =
        Environment.ProcessorCount > 1 && Environment.GetEnvironmentVariable("CORAL_CPU_THREADS") is not "1";

    /// <summary>Runs parts 0 … <paramref name="parts"/> − 1 of <paramref name="work"/>, returning when all are done; an
    /// exception thrown by a part (on either thread) is rethrown here once every part has finished.</summary>
    public static void Run(ICpuWork work, int parts)
    {
        if (parts <= 1 || !Enabled || !s_helper.Value.TryRun(work, parts))
        {
            Exception? error = null;
            for (int p = 0; p < parts; p++)
            {
                try
                {
                    work.Run(p);
                }
                catch (Exception e)
                {
                    error ??= e;
                }
            }

            if (error is not null)
            {
                ExceptionDispatchInfo.Throw(error);
            }
        }
    }

    private sealed class Helper
    {
        private readonly ManualResetEventSlim _wake = new(false);
        private ICpuWork? _work;
        private Exception? _error;   // the first exception a part threw this round (rethrown to the caller)
        private int _parts, _next, _done, _owned, _sleeping, _epoch;

        public Helper()
        {
            new Thread(Loop) { IsBackground = true, Name = "Coral CPU kernels" }.Start();
        }

        public bool TryRun(ICpuWork work, int parts)
        {
            if (Interlocked.CompareExchange(ref _owned, 1, 0) != 0)
            {
                return false;
            }

            // Publish the work, then the counters, then the epoch the helper watches. A helper still leaving the previous
            // round may claim a part of this one through _next: it then runs this round's work, which is correct.
            _work = work;
            _parts = parts;
            Volatile.Write(ref _done, 0);
            Volatile.Write(ref _next, 0);
            Interlocked.Increment(ref _epoch);
            if (Volatile.Read(ref _sleeping) == 1)
            {
                _wake.Set();
            }

            Drain();
            var spin = new SpinWait();
            while (Volatile.Read(ref _done) < parts)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }

            _work = null;
            Exception? error = Interlocked.Exchange(ref _error, null);
            Volatile.Write(ref _owned, 0);
            if (error is not null)
            {
                ExceptionDispatchInfo.Throw(error);
            }

            return true;
        }

        private void Drain()
        {
            int p;
            while ((p = Interlocked.Increment(ref _next) - 1) < Volatile.Read(ref _parts))
            {
                try
                {
                    Volatile.Read(ref _work)?.Run(p);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref _error, e, null);
                }

                Interlocked.Increment(ref _done);
            }
        }

        private void Loop()
        {
            int seen = Volatile.Read(ref _epoch);
            long idleTicks = (long)(IdleSpin.TotalSeconds * Stopwatch.Frequency);
            while (true)
            {
                long since = Stopwatch.GetTimestamp();
                while (Volatile.Read(ref _epoch) == seen)
                {
                    Thread.SpinWait(20);
                    if (Stopwatch.GetTimestamp() - since > idleTicks)
                    {
                        Interlocked.Exchange(ref _sleeping, 1);   // a full fence: the caller bumps the epoch, then reads this
                        if (Volatile.Read(ref _epoch) == seen)
                        {
                            _wake.Wait();
                        }

                        _wake.Reset();
                        Volatile.Write(ref _sleeping, 0);
                        since = Stopwatch.GetTimestamp();
                    }
                }

                seen = Volatile.Read(ref _epoch);
                Drain();
            }
        }
    }
}

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
/// Splits the CPU kernels' GEMMs and attention between the calling thread and <see cref="Threads"/> − 1 helper threads.
/// A decode step is ≈ 50 GEMMs of tens of microseconds each, too short for a thread-pool hand-off (≈ 5–20 µs) and, at
/// one row, bound by memory bandwidth that one core cannot saturate; the helpers spin while steps arrive (a hand-off then
/// costs well under a microsecond) and sleep after <see cref="IdleSpin"/> without work.
/// </summary>
/// <remarks>
/// Parts are claimed first come, first served, so a part never waits for a helper that is still waking up or busy: the
/// caller runs whatever the helpers have not claimed. A part's result must not depend on which thread runs it (the
/// kernels compute every output element the same way whatever the split). Concurrent callers do not queue: a second
/// caller while the helpers are taken runs all its parts itself.
/// </remarks>
internal static class CpuParallel
{
    /// <summary>How long a helper spins without work before it sleeps.</summary>
    public static readonly TimeSpan IdleSpin = TimeSpan.FromMilliseconds(2);

    private static readonly object s_gate = new();
    private static Team? s_team;
    private static int s_threads = DefaultThreads();

    /// <summary>Gets or sets whether helper threads are used (by default when <see cref="Threads"/> is above 1;
    /// benchmarks switch it to compare).</summary>
    public static bool Enabled { get; set; } = s_threads > 1;

    /// <summary>
    /// Gets or sets the threads that run a split (the caller and its helpers): <c>CORAL_CPU_THREADS</c> when set, else the
    /// processors, at most 8 (a one-token step is bound by memory bandwidth, which a few cores saturate). Setting it
    /// replaces the helpers at the next split.
    /// </summary>
    public static int Threads
    {
        get => s_threads;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            lock (s_gate)
            {
                s_threads = value;
                Enabled = value > 1;
            }
        }
    }

    /// <summary>Runs parts 0 … <paramref name="parts"/> − 1 of <paramref name="work"/>, returning when all are done; an
    /// exception thrown by a part (on any thread) is rethrown here once every part has finished.</summary>
    public static void Run(ICpuWork work, int parts)
    {
        Team? team = parts > 1 && Enabled ? Current() : null;
        if (team is null || !team.TryRun(work, parts))
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

    private static int DefaultThreads() =>
        int.TryParse(Environment.GetEnvironmentVariable("CORAL_CPU_THREADS"), out int n) && n >= 1 ? n : Math.Clamp(Environment.ProcessorCount, 1, 8);

    private static Team? Current()
    {
        Team? team = Volatile.Read(ref s_team);
        if (team is not null && team.Helpers == s_threads - 1)
        {
            return team;
        }

        lock (s_gate)
        {
            if (s_team is null || s_team.Helpers != s_threads - 1)
            {
                s_team?.Retire();
                s_team = s_threads > 1 ? new Team(s_threads - 1) : null;
            }

            return s_team;
        }
    }

    /// <summary>One split: its work, its parts, and the counters the threads claim and finish parts with. Each split
    /// gets its own, so a helper still leaving an earlier one can never claim or count a part of a later one.</summary>
    private sealed class Round(ICpuWork work, int parts)
    {
        public readonly ICpuWork Work = work;
        public readonly int Parts = parts;
        public int Next;
        public int Done;
        public Exception? Error;   // the first exception a part threw (rethrown to the caller)

        public void Drain()
        {
            int p;
            while ((p = Interlocked.Increment(ref Next) - 1) < Parts)
            {
                try
                {
                    Work.Run(p);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref Error, e, null);
                }

                Interlocked.Increment(ref Done);
            }
        }
    }

    /// <summary>The helper threads and the round they are offered.</summary>
    private sealed class Team
    {
        private readonly ManualResetEventSlim _wake = new(false);
        private Round? _round;
        private int _owned, _sleeping, _epoch;
        private volatile bool _retired;

        public Team(int helpers)
        {
            Helpers = helpers;
            for (int i = 0; i < helpers; i++)
            {
                new Thread(Loop) { IsBackground = true, Name = $"Coral CPU kernels {i + 1}" }.Start();
            }
        }

        public int Helpers { get; }

        /// <summary>Lets the helpers end (after a change of <see cref="Threads"/>); a round in flight completes.</summary>
        public void Retire()
        {
            _retired = true;
            _wake.Set();
        }

        public bool TryRun(ICpuWork work, int parts)
        {
            if (_retired || Interlocked.CompareExchange(ref _owned, 1, 0) != 0)
            {
                return false;
            }

            var round = new Round(work, parts);
            Volatile.Write(ref _round, round);
            Interlocked.Increment(ref _epoch);   // a full fence: the round is visible before the epoch, and before _sleeping is read
            if (Volatile.Read(ref _sleeping) > 0)
            {
                _wake.Set();
            }

            round.Drain();
            var spin = new SpinWait();
            while (Volatile.Read(ref round.Done) < parts)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }

            Volatile.Write(ref _round, null);
            Volatile.Write(ref _owned, 0);
            if (round.Error is { } error)
            {
                ExceptionDispatchInfo.Throw(error);
            }

            return true;
        }

        private void Loop()
        {
            int seen = Volatile.Read(ref _epoch);
            long idleTicks = (long)(IdleSpin.TotalSeconds * Stopwatch.Frequency);
            while (!_retired)
            {
                long since = Stopwatch.GetTimestamp();
                while (Volatile.Read(ref _epoch) == seen && !_retired)
                {
                    Thread.SpinWait(20);
                    if (Stopwatch.GetTimestamp() - since > idleTicks)
                    {
                        Interlocked.Increment(ref _sleeping);   // a full fence: the caller bumps the epoch, then reads this
                        if (Volatile.Read(ref _epoch) == seen && !_retired)
                        {
                            _wake.Wait();
                        }

                        // The last sleeper to wake resets the event; a helper that slept past a round catches the next.
                        if (Interlocked.Decrement(ref _sleeping) == 0)
                        {
                            _wake.Reset();
                        }

                        since = Stopwatch.GetTimestamp();
                    }
                }

                seen = Volatile.Read(ref _epoch);
                Volatile.Read(ref _round)?.Drain();
            }
        }
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// Continuous batching: up to <see cref="Slots"/> requests decode together, each in its own KV-cache slot, and every
/// iteration runs one forward over all of them (<see cref="TransformerModel.ForwardBatch"/>) — a one-token step for each
/// decoding request plus prompt chunks of newly admitted ones — then samples each request's next token with its own
/// sampler, constraint and stop rules. A request joins at the next iteration and leaves when it ends, so a short answer
/// never waits for a long one. Decoding is plain (no draft tree): on the packed CPU kernels a row computes the same bits
/// in a batch as alone, so every request gets exactly the tokens it gets alone (greedy, or sampled with its seed).
/// A slot keeps its last sequence, and a new request takes the free slot that shares the longest prefix with its prompt.
/// </summary>
internal sealed class BatchScheduler : IDisposable
{
    private readonly InferenceEngine _engine;
    private readonly Slot[] _slots;
    private readonly ConcurrentQueue<Sequence> _waiting = new();
    private readonly SemaphoreSlim _signal = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Sequence> _active = [];
    private readonly Thread _thread;
    private float[] _logits = [];
    private int _disposed;
    private long _releases;

    public BatchScheduler(InferenceEngine engine, int slots)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(slots, 1);
        _engine = engine;
        _slots = new Slot[slots];
        for (int i = 0; i < slots; i++)
        {
            _slots[i] = new Slot(engine.Model.CreateCache(engine.ContextLength, batchInvariant: true));
        }

        CoralTelemetry.TrackCache(this, _slots.Sum(s => s.Cache.Bytes));
        _thread = new Thread(Run) { IsBackground = true, Name = "coral-batch" };
        _thread.Start();
    }

    /// <summary>Gets the number of requests that decode together.</summary>
    public int Slots => _slots.Length;

    /// <summary>Gets the most requests one forward has served so far.</summary>
    public int PeakBatch { get; private set; }

    /// <summary>Queues <paramref name="request"/>; the task completes with its result when it ends. <paramref name="onText"/>
    /// runs on the scheduler's thread.</summary>
    public Task<GenerationResult> GenerateAsync(GenerationRequest request, Action<int, string>? onText, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (request.PromptIds.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", nameof(request));
        }

        if (request.PromptIds.Count >= _engine.ContextLength)
        {
            throw new PromptTooLongException(request.PromptIds.Count, _engine.ContextLength);
        }

        var sequence = new Sequence(request, onText, cancellationToken);
        _waiting.Enqueue(sequence);
        _signal.Release();
        return sequence.Completion.Task;
    }

    /// <summary>Forgets what the slots hold (benchmarks start every round from empty caches); only while no request is
    /// queued or running.</summary>
    public void ForgetCachedTokens()
    {
        if (_active.Count > 0 || !_waiting.IsEmpty)
        {
            throw new InvalidOperationException("Requests are still queued or running.");
        }

        foreach (Slot slot in _slots)
        {
            slot.Tokens.Clear();
            slot.Cache.Length = 0;
        }
    }

    private void Run()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                if (_active.Count == 0 && _waiting.IsEmpty)
                {
                    _signal.Wait(_stop.Token);
                    continue;
                }

                Admit();
                if (_active.Count == 0)
                {
                    continue;
                }

                // The engine's gate: one forward at a time on the model's workspace (embeddings share it).
                _engine.Gate.Wait(_stop.Token);
                try
                {
                    Iterate();
                }
                finally
                {
                    _engine.Gate.Release();
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }

        var disposed = new ObjectDisposedException(nameof(BatchScheduler), "The model host was disposed.");
        _active.ForEach(s => s.Completion.TrySetException(disposed));
        while (_waiting.TryDequeue(out Sequence? s))
        {
            s.Completion.TrySetException(disposed);
        }
    }

    /// <summary>Moves waiting requests into free slots, each into the one whose cached tokens share the longest prefix
    /// with its prompt (that prefix is not computed again), else the least recently used one.</summary>
    private void Admit()
    {
        while (_active.Count < _slots.Length && _waiting.TryDequeue(out Sequence? s))
        {
            if (s.CancellationToken.IsCancellationRequested)
            {
                s.Completion.TrySetCanceled(s.CancellationToken);
                continue;
            }

            IReadOnlyList<int> prompt = s.Request.PromptIds;
            Slot? best = null;
            int bestCommon = -1;
            foreach (Slot slot in _slots)
            {
                if (slot.Busy)
                {
                    continue;
                }

                int common = 0, limit = Math.Min(slot.Tokens.Count, prompt.Count - 1);
                while (common < limit && slot.Tokens[common] == prompt[common])
                {
                    common++;
                }

                if (common > bestCommon || (common == bestCommon && slot.Released < best!.Released))   // ties: the least recently used
                {
                    (best, bestCommon) = (slot, common);
                }
            }

            best!.Busy = true;
            best.Cache.Length = bestCommon;
            best.Tokens.RemoveRange(bestCommon, best.Tokens.Count - bestCommon);
            s.Start(best, bestCommon, _engine);
            _active.Add(s);
        }
    }

    /// <summary>One forward over every active request, then each one's next token.</summary>
    private void Iterate()
    {
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        var segments = new List<(long[] Ids, KvCache Cache)>();
        var members = new List<Sequence>();
        int decoding = _active.Count(s => !s.Prefilling), budget = Math.Max(_engine.PrefillChunk, decoding + 1), used = 0;
        foreach (Sequence s in _active.OrderBy(s => s.Prefilling).ToList())
        {
            if (s.CancellationToken.IsCancellationRequested)
            {
                End(s, fault: null);
                continue;
            }

            if (!s.Prefilling && s.Slot!.Cache.Length + 1 >= _engine.ContextLength)
            {
                s.Emitter!.EndForContext();
                End(s, fault: null);
                continue;
            }

            int n = s.Prefilling ? Math.Min(s.Request.PromptIds.Count - s.Position, budget - used) : 1;
            if (n <= 0)
            {
                continue;   // its prompt waits for the next iteration's budget
            }

            long[] ids = s.Prefilling
                ? s.Request.PromptIds.Skip(s.Position).Take(n).Select(x => (long)x).ToArray()
                : [s.Last];
            segments.Add((ids, s.Slot!.Cache));
            members.Add(s);
            used += n;
        }

        if (segments.Count == 0)
        {
            return;
        }

        PeakBatch = Math.Max(PeakBatch, segments.Count);
        Tensor hidden;
        try
        {
            hidden = _engine.Model.ForwardBatch(segments);
        }
        catch (Exception ex)
        {
            // The caches of the sequences in this forward are in an unknown state: forget them.
            foreach (Sequence s in members)
            {
                s.Slot!.Cache.Length = 0;
                s.Slot.Tokens.Clear();
                End(s, ex);
            }

            return;
        }

        // Which rows give a next token: a decoding request's row, and the last prompt row of one that finished its prompt.
        var ready = new List<(Sequence Sequence, int Row)>();
        for (int i = 0, row = 0; i < members.Count; row += segments[i].Ids.Length, i++)
        {
            Sequence s = members[i];
            s.Slot!.Tokens.AddRange(segments[i].Ids.Select(x => (int)x));
            s.Forwards++;
            if (s.Prefilling)
            {
                s.Position += segments[i].Ids.Length;
                if (s.Position < s.Request.PromptIds.Count)
                {
                    continue;
                }

                s.Prefilling = false;
                s.PrefillTime = s.Clock.Elapsed;
            }

            ready.Add((s, row + segments[i].Ids.Length - 1));
        }

        NextTokens(hidden, ready);
    }

    /// <summary>Picks each ready request's next token and emits it: greedy requests through the screened LM head where it
    /// decides (all their rows at once), the others from logits computed for all their rows in one pass over the head.</summary>
    private void NextTokens(Tensor hidden, List<(Sequence Sequence, int Row)> ready)
    {
        int vocab = _engine.Model.Config.VocabSize;
        var tokens = new Dictionary<Sequence, int>();
        var screened = ready.Where(r => r.Sequence.Constraint is null && r.Sequence.Sampler!.Parameters.IsArgMax && _engine.ScreenedArgMax).ToList();
        for (int i = 0; i < screened.Count; i += InferenceEngine.ScreenedVerifyRows)
        {
            var group = screened.Skip(i).Take(InferenceEngine.ScreenedVerifyRows).ToList();
            var found = new int[group.Count];
            using Tensor rows = Rows(hidden, group);
            if (_engine.Model.TryArgMax(rows, found))
            {
                for (int j = 0; j < group.Count; j++)
                {
                    tokens[group[j].Sequence] = found[j];
                }
            }
        }

        var rest = ready.Where(r => !tokens.ContainsKey(r.Sequence)).ToList();
        if (rest.Count > 0)
        {
            if (_logits.Length < rest.Count * vocab)
            {
                _logits = new float[rest.Count * vocab];
            }

            using Tensor rows = Rows(hidden, rest);
            _engine.Model.Logits(rows, _logits);
            for (int j = 0; j < rest.Count; j++)
            {
                Array.Copy(_logits, (long)j * vocab, rest[j].Sequence.Row, 0, vocab);
            }
        }

        foreach (var (s, _) in ready)
        {
            try
            {
                int token;
                if (tokens.TryGetValue(s, out int greedy))
                {
                    s.Sampler!.Accept(greedy);
                    token = greedy;
                }
                else
                {
                    OutputConstraint.State? constraint = s.Constraint;
                    token = _engine.Next(s.Sampler!, ref constraint, s.Row, s.Probs);
                    s.Constraint = constraint;
                }

                if (s.Emitter!.Emit(token) && !InferenceEngine.EndIfComplete(s.Constraint, s.Emitter))
                {
                    s.Last = token;
                }
                else
                {
                    End(s, fault: null);
                }
            }
            catch (Exception ex)
            {
                End(s, ex);   // its own sampler, constraint or callback failed; the others go on
            }
        }
    }

    private static Tensor Rows(Tensor hidden, List<(Sequence Sequence, int Row)> picked)
    {
        using Tensor index = torch.tensor(picked.Select(p => (long)p.Row).ToArray());
        return hidden.index_select(0, index);
    }

    /// <summary>Completes a request (cancelled, failed or finished) and frees its slot, which keeps its tokens.</summary>
    private void End(Sequence s, Exception? fault)
    {
        _active.Remove(s);
        s.Slot!.Busy = false;
        s.Slot.Released = ++_releases;
        if (fault is not null)
        {
            s.Completion.TrySetException(fault);
        }
        else if (s.CancellationToken.IsCancellationRequested)
        {
            s.Completion.TrySetCanceled(s.CancellationToken);
        }
        else
        {
            TokenEmitter e = s.Emitter!;
            TimeSpan total = s.Clock.Elapsed;
            s.Completion.TrySetResult(new GenerationResult(e.Ids, e.Text, s.Request.PromptIds.Count, s.Cached, e.Finish, s.PrefillTime,
                total - s.PrefillTime, e.TimeToFirstToken, s.Forwards, null));
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stop.Cancel();
        _thread.Join();
        CoralTelemetry.UntrackCache(this);
        foreach (Slot slot in _slots)
        {
            slot.Cache.Dispose();
        }

        _signal.Dispose();
        _stop.Dispose();
    }

    /// <summary>A KV cache and the tokens it holds.</summary>
    private sealed class Slot(KvCache cache)
    {
        public KvCache Cache { get; } = cache;

        public List<int> Tokens { get; } = [];

        public bool Busy { get; set; }

        /// <summary>When its last request ended (a count of ends; 0: never used).</summary>
        public long Released { get; set; }
    }

    /// <summary>One request's decoding state.</summary>
    private sealed class Sequence(GenerationRequest request, Action<int, string>? onText, CancellationToken cancellationToken)
    {
        public GenerationRequest Request { get; } = request;

        public CancellationToken CancellationToken { get; } = cancellationToken;

        public TaskCompletionSource<GenerationResult> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Stopwatch Clock { get; } = new();

        public Slot? Slot { get; private set; }

        public LogitsSampler? Sampler { get; private set; }

        public TokenEmitter? Emitter { get; private set; }

        public OutputConstraint.State? Constraint { get; set; }

        public float[] Row { get; private set; } = [];

        public float[] Probs { get; private set; } = [];

        public bool Prefilling { get; set; }

        /// <summary>Prompt tokens in the cache.</summary>
        public int Position { get; set; }

        public int Cached { get; private set; }

        public int Forwards { get; set; }

        public long Last { get; set; }

        public TimeSpan PrefillTime { get; set; }

        public void Start(Slot slot, int cached, InferenceEngine engine)
        {
            Clock.Start();
            (Slot, Cached, Position, Prefilling) = (slot, cached, cached, true);
            int vocab = engine.Model.Config.VocabSize;
            Sampler = new LogitsSampler(Request.Sampling, vocab, Request.PromptIds);
            Emitter = new TokenEmitter(Request, engine.Tokenizer, engine.EosTokenIds, onText, Clock);
            Constraint = Request.Constraint?.Start();
            Row = new float[vocab];
            Probs = new float[vocab];
        }
    }
}

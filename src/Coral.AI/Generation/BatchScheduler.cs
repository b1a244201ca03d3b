using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// Continuous batching: up to <see cref="Slots"/> requests decode together, each in its own KV-cache slot, and every
/// iteration runs one forward over all of them (<see cref="TransformerModel.ForwardBatch"/>) — a one-token step for each
/// decoding request plus prompt chunks of newly admitted ones — then samples each request's next token with its own
/// sampler, constraint and stop rules. A request joins at the next iteration and leaves when it ends, so a short answer
/// never waits for a long one. Decoding takes no draft tree: plain steps, and for greedy requests prompt-lookup chains
/// where <see cref="BatchLookupGate"/> expects them to pay. On the packed CPU kernels a row computes the same bits in a
/// batch as alone, so every request gets exactly the tokens it gets alone (greedy, or sampled with its seed). A slot
/// keeps its last sequence, and a new request takes the free slot that shares the longest prefix with its prompt.
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
    private readonly BatchLookupGate _lookup = new();
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
            // On the kernel path a one-row forward is padded like a tree's (a row's bits then do not depend on the batch
            // even for weights libtorch multiplies); off it the segments run one after another, each as the engine's own
            // cache would run it alone.
            _slots[i] = new Slot(engine.Model.CreateCache(engine.ContextLength, batchInvariant: engine.Model.UsesCpuKernels || engine.Cache.BatchInvariant));
        }

        CoralTelemetry.TrackCache(this, _slots.Sum(s => s.Cache.Bytes));
        _thread = new Thread(Run) { IsBackground = true, Name = "coral-batch" };
        _thread.Start();
    }

    /// <summary>Gets the number of requests that decode together.</summary>
    public int Slots => _slots.Length;

    /// <summary>Gets the gate that decides which prompt-lookup proposals ride along in a forward.</summary>
    internal BatchLookupGate LookupGate => _lookup;

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

    /// <summary>One forward over every active request — a prompt chunk for each prefilling one, the last token (and a
    /// prompt-lookup proposal after it, where the gate expects it to pay) for each decoding one — then each one's tokens.</summary>
    private void Iterate()
    {
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        var segments = new List<(long[] Ids, KvCache Cache)>();
        var members = new List<Sequence>();
        int decoding = _active.Count(s => !s.Prefilling), budget = Math.Max(_engine.PrefillChunk, decoding + 1), used = 0;
        bool prefillRows = false;
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

            long[] ids;
            if (s.Prefilling)
            {
                int n = Math.Min(s.Request.PromptIds.Count - s.Position, budget - used);
                if (n <= 0)
                {
                    continue;   // its prompt waits for the next iteration's budget
                }

                ids = s.Request.PromptIds.Skip(s.Position).Take(n).Select(x => (long)x).ToArray();
                prefillRows = true;
            }
            else
            {
                int count = Propose(s, decoding);
                ids = new long[1 + count];
                ids[0] = s.Last;
                for (int j = 0; j < count; j++)
                {
                    ids[1 + j] = s.Proposal[j];
                }
            }

            segments.Add((ids, s.Slot!.Cache));
            members.Add(s);
            used += ids.Length;
        }

        if (segments.Count == 0)
        {
            return;
        }

        PeakBatch = Math.Max(PeakBatch, segments.Count);
        long begin = Stopwatch.GetTimestamp();
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

        // The rows that give tokens: every row of a decoding request (its last token and any proposal), the last prompt
        // row of one that finished its prompt.
        var rows = new List<(Sequence Sequence, int Row, int Count)>();
        for (int i = 0, row = 0; i < members.Count; row += segments[i].Ids.Length, i++)
        {
            Sequence s = members[i];
            int n = segments[i].Ids.Length;
            s.Slot!.Tokens.AddRange(segments[i].Ids.Select(x => (int)x));
            s.Forwards++;
            if (!s.Prefilling)
            {
                rows.Add((s, row, n));
                continue;
            }

            s.Position += n;
            if (s.Position == s.Request.PromptIds.Count)
            {
                s.Prefilling = false;
                s.PrefillTime = s.Clock.Elapsed;
                rows.Add((s, row + n - 1, 1));
            }
        }

        var greedy = new Dictionary<Sequence, int[]>();
        var logits = new Dictionary<Sequence, int>();
        Heads(hidden, rows, greedy, logits);
        if (!prefillRows)
        {
            _lookup.Time(used, Stopwatch.GetElapsedTime(begin).TotalMilliseconds);
        }

        int vocab = _engine.Model.Config.VocabSize;
        foreach (var (s, _, count) in rows)
        {
            try
            {
                Accept(s, count, greedy.GetValueOrDefault(s), logits.TryGetValue(s, out int at) ? _logits.AsMemory(at * vocab, count * vocab) : default);
            }
            catch (Exception ex)
            {
                End(s, ex);   // its own sampler, constraint or callback failed; the others go on
            }
        }
    }

    /// <summary>A prompt-lookup proposal for a decoding greedy request, when the gate expects its rows to pay in a batch of
    /// <paramref name="decoding"/> one-token rows; returns its length (in <see cref="Sequence.Proposal"/>), 0 for none.</summary>
    private int Propose(Sequence s, int decoding)
    {
        if (s.Proposal.Length == 0 || s.Slot!.Cache.Length + s.Proposal.Length + 1 >= _engine.ContextLength)
        {
            return 0;
        }

        var (ngram, count) = PromptLookup.Find(CollectionsMarshal.AsSpan(s.Slot.Tokens), (int)s.Last, s.Proposal);
        if (count == 0 || !_lookup.Use(ngram, count, decoding))
        {
            return 0;
        }

        s.Ngram = ngram;
        return count;
    }

    /// <summary>The LM head for the rows that give tokens: greedy requests without penalties through the screened head
    /// (up to <see cref="InferenceEngine.ScreenedVerifyRows"/> rows a call), the others' logits in one pass into
    /// <see cref="_logits"/> (<paramref name="logits"/>: each request's first row there).</summary>
    private void Heads(Tensor hidden, List<(Sequence Sequence, int Row, int Count)> rows, Dictionary<Sequence, int[]> greedy, Dictionary<Sequence, int> logits)
    {
        var screened = rows.Where(r => r.Sequence.Constraint is null && r.Sequence.Sampler!.Parameters.IsArgMax && _engine.ScreenedArgMax).ToList();
        for (int i = 0; i < screened.Count;)
        {
            // Whole requests per call, at most ScreenedVerifyRows rows (one request with a longer chain takes a call alone).
            int take = 0, n = 0;
            while (i + take < screened.Count && (take == 0 || n + screened[i + take].Count <= InferenceEngine.ScreenedVerifyRows))
            {
                n += screened[i + take].Count;
                take++;
            }

            var group = screened.GetRange(i, take);
            i += take;
            var found = new int[n];
            using Tensor picked = Rows(hidden, group);
            if (n <= InferenceEngine.ScreenedVerifyRows && _engine.Model.TryArgMax(picked, found))
            {
                for (int j = 0, at = 0; j < group.Count; at += group[j].Count, j++)
                {
                    greedy[group[j].Sequence] = found[at..(at + group[j].Count)];
                }
            }
        }

        var rest = rows.Where(r => !greedy.ContainsKey(r.Sequence)).ToList();
        if (rest.Count == 0)
        {
            return;
        }

        int vocab = _engine.Model.Config.VocabSize, total = rest.Sum(r => r.Count);
        if (_logits.Length < total * vocab)
        {
            _logits = new float[total * vocab];
        }

        using Tensor all = Rows(hidden, rest);
        _engine.Model.Logits(all, _logits);
        for (int j = 0, at = 0; j < rest.Count; at += rest[j].Count, j++)
        {
            logits[rest[j].Sequence] = at;
        }
    }

    /// <summary>
    /// Takes a decoding request's tokens from its <paramref name="count"/> rows (the last token, then its proposal): row
    /// j's token is emitted, and when it equals proposal token j + 1 the walk goes on to row j + 1 — greedy verification,
    /// so the output is the plain one. The cache keeps the last token and the accepted proposal tokens.
    /// </summary>
    private void Accept(Sequence s, int count, int[]? greedy, ReadOnlyMemory<float> logits)
    {
        int vocab = _engine.Model.Config.VocabSize;
        if (s.Constraint is not null)
        {
            logits.Span[..vocab].CopyTo(s.Row);
            OutputConstraint.State? constraint = s.Constraint;
            int next = _engine.Next(s.Sampler!, ref constraint, s.Row, s.Probs);
            s.Constraint = constraint;
            Emit(s, next);
            return;
        }

        KvCache cache = s.Slot!.Cache;
        int start = cache.Length - count;   // the last token's slot
        for (int j = 0; j < count; j++)
        {
            int token = greedy is not null ? greedy[j] : s.Sampler!.Sample(logits.Span.Slice(j * vocab, vocab));
            s.Sampler!.Accept(token);
            bool more = j + 1 < count && token == s.Proposal[j];
            if (count > 1)
            {
                s.LookupAccepted += more ? 1 : 0;
            }

            if (!more)
            {
                // Rows after j held rejected proposal tokens: the cache keeps the last token and the accepted ones.
                cache.Length = start + j + 1;
                s.Slot.Tokens.RemoveRange(cache.Length, s.Slot.Tokens.Count - cache.Length);
                if (count > 1)
                {
                    s.LookupCycles++;
                    s.LookupProposed += count - 1;
                    _lookup.Observe(s.Ngram, j);
                }

                Emit(s, token);
                return;
            }

            if (!s.Emitter!.Emit(token))
            {
                cache.Length = start + j + 1;
                s.Slot.Tokens.RemoveRange(cache.Length, s.Slot.Tokens.Count - cache.Length);
                End(s, fault: null);
                return;
            }
        }
    }

    /// <summary>Emits a request's next token (not yet in its cache): it goes on from it, or ends.</summary>
    private void Emit(Sequence s, int token)
    {
        if (s.Emitter!.Emit(token) && !InferenceEngine.EndIfComplete(s.Constraint, s.Emitter))
        {
            s.Last = token;
        }
        else
        {
            End(s, fault: null);
        }
    }

    private static Tensor Rows(Tensor hidden, List<(Sequence Sequence, int Row, int Count)> picked)
    {
        using Tensor index = torch.tensor(picked.SelectMany(p => Enumerable.Range(p.Row, p.Count).Select(r => (long)r)).ToArray(), device: hidden.device);
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
            SpeculativeStats? stats = s.Proposal.Length == 0 ? null
                : new SpeculativeStats(s.LookupCycles, s.LookupAccepted + s.LookupCycles, s.LookupProposed, TimeSpan.Zero, TimeSpan.Zero, [])
                {
                    LookupCycles = s.LookupCycles, LookupAcceptedTokens = s.LookupAccepted, PlainSteps = s.Forwards - 1 - s.LookupCycles,
                };
            s.Completion.TrySetResult(new GenerationResult(e.Ids, e.Text, s.Request.PromptIds.Count, s.Cached, e.Finish, s.PrefillTime,
                total - s.PrefillTime, e.TimeToFirstToken, s.Forwards, stats));
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

        /// <summary>The prompt-lookup proposal buffer (empty: no lookup for this request) and the n-gram of its match.</summary>
        public int[] Proposal { get; private set; } = [];

        public int Ngram { get; set; }

        /// <summary>Forwards that verified a proposal; proposal tokens verified; of them accepted.</summary>
        public int LookupCycles { get; set; }

        public int LookupProposed { get; set; }

        public int LookupAccepted { get; set; }

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
            // Greedy requests only: their output is the plain one whatever the gate decides, so a request gets the same
            // tokens at any load (a sampled one would draw differently wherever a proposal was verified).
            bool lookup = Request.Speculative && Request.Constraint is null && Request.Sampling.IsGreedy && engine.Model.UsesPackedWeights;
            Proposal = new int[lookup ? Request.PromptLookupTokens ?? engine.PromptLookupTokens : 0];
        }
    }
}

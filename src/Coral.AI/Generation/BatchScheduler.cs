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
/// never waits for a long one. Batched decoding takes no draft tree: plain steps, and for greedy requests prompt-lookup
/// chains where <see cref="BatchLookupGate"/> expects them to pay. On the packed CPU kernels a row computes the same bits
/// in a batch as alone, so every request gets exactly the tokens it gets alone (greedy, or sampled with its seed). A slot
/// keeps its last sequence, and a new request takes the free slot that shares the longest prefix with its prompt.
/// </summary>
/// <remarks>
/// With a drafter, one slot is the engine's own cache, and a request alone in the scheduler (nothing else running or
/// queued) decodes there through the engine's speculative loop (<see cref="InferenceEngine.Run"/>: draft trees, the
/// adaptive depth), so more slots cost a single user nothing. It yields between two cycles when another request arrives
/// (or an embedding waits for the model) and goes on in the batch from its last token; alone again, it resumes the loop
/// (the drafter first takes the tokens it has not seen). Greedy output is the plain one either way; a sampled request
/// with a seed stays in the batch (its tokens then do not depend on the load).
/// </remarks>
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
        // On the kernel path a one-row forward is padded like a tree's (a row's bits then do not depend on the batch even
        // for weights libtorch multiplies); off it the segments run one after another, each as the engine's own cache
        // would run it alone. The engine's cache is of that kind with a drafter: it is the first slot.
        bool batchInvariant = engine.Model.UsesCpuKernels || engine.Cache.BatchInvariant;
        bool shared = engine.Drafter is not null && engine.Cache.BatchInvariant == batchInvariant;
        for (int i = 0; i < slots; i++)
        {
            _slots[i] = i == 0 && shared ? new Slot(engine.Cache, engine.TokensInCache, engine.Drafter)
                : new Slot(engine.Model.CreateCache(engine.ContextLength, batchInvariant), [], null);
        }

        CoralTelemetry.TrackCache(this, _slots.Where(s => !s.Shared).Sum(s => s.Cache.Bytes));
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
        _engine.CheckPrompt(request.PromptIds);
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
            slot.Keep(0);
        }
    }

    /// <summary>Gets how many times a lone request ran (or resumed) the engine's speculative loop.</summary>
    internal int AloneRuns { get; private set; }

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
                    if (_active is [{ Slot.Shared: true } lone] && _waiting.IsEmpty && _engine.GateWaiters == 0 && Resumable(lone))
                    {
                        RunAlone(lone);
                    }
                    else
                    {
                        Iterate();
                    }
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
            s.D = new RequestDecoding(s.Request, _engine, s.OnText);
            // A lone request that will draft takes the engine's slot (its tree cycles run there), whatever the others hold.
            bool lone = _active.Count == 0 && _waiting.IsEmpty && _slots[0] is { Shared: true, Busy: false } && MayDraft(s);
            Slot? best = null;
            int bestCommon = -1;
            foreach (Slot slot in _slots)
            {
                if (slot.Busy || (lone && !slot.Shared))
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
            best.Keep(bestCommon);
            s.Start(best, bestCommon, _engine);
            _active.Add(s);
        }
    }

    /// <summary>Whether <paramref name="s"/> may decode through the engine's drafter: not a sampled request with a seed
    /// (whose tokens must not depend on the load), and one the engine drafts for (decided once per request).</summary>
    private bool MayDraft(Sequence s) => !(s.Request.Sampling.Seed is not null && !s.Request.Sampling.IsGreedy) && _engine.Drafts(s.D!);

    /// <summary>Whether the lone request <paramref name="s"/> in the engine's slot goes (back) to the engine's loop: it
    /// may draft, and the tokens the drafter has not seen — run again for their features — are no more than the tokens it
    /// may still generate (a few after a yield; a whole sequence batched from its start may not pay).</summary>
    private bool Resumable(Sequence s)
    {
        if (s.CancellationToken.IsCancellationRequested || !MayDraft(s))
        {
            return false;
        }

        if (s.D!.Last is null)
        {
            return true;   // still in its prompt: the engine's prefill computes the features as it goes
        }

        int unseen = s.Slot!.Tokens.Count - _engine.Drafter!.Cache.Length;
        return unseen <= s.Request.MaxNewTokens - s.D.Emitter.Ids.Count;
    }

    /// <summary>Runs the lone request <paramref name="s"/> through the engine's speculative loop on the engine's slot until
    /// it ends, or until another request arrives, an embedding waits for the model or the scheduler stops; then it goes on
    /// in the batch from its last token.</summary>
    private void RunAlone(Sequence s)
    {
        AloneRuns++;
        PeakBatch = Math.Max(PeakBatch, 1);
        try
        {
            _engine.Run(s.D!, () => !_waiting.IsEmpty || _engine.GateWaiters > 0 || _stop.IsCancellationRequested, s.CancellationToken);
        }
        catch (Exception ex)
        {
            bool cancelled = ex is OperationCanceledException && s.CancellationToken.IsCancellationRequested;
            if (!cancelled)
            {
                s.Slot!.Keep(0);   // a failed forward leaves the cache in an unknown state
            }

            End(s, cancelled ? null : ex);
            return;
        }

        if (s.D!.Emitter.Finished)
        {
            End(s, fault: null);
        }
        else if (s.D.Last is null)
        {
            s.Position = s.Slot!.Tokens.Count;   // yielded within its prompt: the batch prefills the rest
        }
        else
        {
            (s.Prefilling, s.Position) = (false, s.Request.PromptIds.Count);
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
                s.D!.Emitter.EndForContext();
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
                ids[0] = s.D!.Last!.Value;
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
                s.Slot!.Keep(0);
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
            s.D!.Forwards++;
            if (!s.Prefilling)
            {
                s.DecodeSteps++;
                rows.Add((s, row, n));
                continue;
            }

            s.Position += n;
            if (s.Position == s.Request.PromptIds.Count)
            {
                s.Prefilling = false;
                s.D.PrefillTime = s.D.Clock.Elapsed;
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

        var (ngram, count) = PromptLookup.Find(CollectionsMarshal.AsSpan(s.Slot.Tokens), s.D!.Last!.Value, s.Proposal);
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
        var screened = rows.Where(r => r.Sequence.D!.Constraint is null && r.Sequence.D.Sampler.Parameters.IsArgMax && _engine.ScreenedArgMax).ToList();
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
        RequestDecoding d = s.D!;
        if (d.Constraint is not null)
        {
            logits.Span[..vocab].CopyTo(s.Row);
            int next = _engine.Next(d.Sampler, ref d.Constraint, s.Row, s.Probs);
            Emit(s, next);
            return;
        }

        KvCache cache = s.Slot!.Cache;
        int start = cache.Length - count;   // the last token's slot
        for (int j = 0; j < count; j++)
        {
            int token = greedy is not null ? greedy[j] : d.Sampler.Sample(logits.Span.Slice(j * vocab, vocab));
            d.Sampler.Accept(token);
            bool more = j + 1 < count && token == s.Proposal[j];
            if (count > 1)
            {
                s.LookupAccepted += more ? 1 : 0;
            }

            if (!more)
            {
                // Rows after j held rejected proposal tokens: the cache keeps the last token and the accepted ones.
                s.Slot.Keep(start + j + 1);
                if (count > 1)
                {
                    s.LookupCycles++;
                    s.LookupProposed += count - 1;
                    _lookup.Observe(s.Ngram, j);
                }

                Emit(s, token);
                return;
            }

            if (!d.Emitter.Emit(token))
            {
                s.Slot.Keep(start + j + 1);
                End(s, fault: null);
                return;
            }
        }
    }

    /// <summary>Emits a request's next token (not yet in its cache): it goes on from it, or ends.</summary>
    private void Emit(Sequence s, int token)
    {
        if (s.D!.Emitter.Emit(token) && !InferenceEngine.EndIfComplete(s.D.Constraint, s.D.Emitter))
        {
            s.D.Last = token;
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
            // The batch's part of the counters (lookup requests only) beside those of any run of the engine's loop.
            RequestDecoding d = s.D!;
            if (s.Proposal.Length > 0)
            {
                d.Stats = SpeculativeStats.Sum(d.Stats, new SpeculativeStats(s.LookupCycles, s.LookupAccepted + s.LookupCycles, s.LookupProposed,
                    TimeSpan.Zero, TimeSpan.Zero, [])
                {
                    LookupCycles = s.LookupCycles, LookupAcceptedTokens = s.LookupAccepted, PlainSteps = s.DecodeSteps - s.LookupCycles,
                });
            }

            s.Completion.TrySetResult(d.Result());
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
        foreach (Slot slot in _slots.Where(s => !s.Shared))
        {
            slot.Cache.Dispose();
        }

        _signal.Dispose();
        _stop.Dispose();
    }

    /// <summary>A KV cache and the tokens it holds; the engine's own (<see cref="Shared"/>) keeps its drafter in step.</summary>
    private sealed class Slot(KvCache cache, List<int> tokens, TreeDrafter? drafter)
    {
        public KvCache Cache { get; } = cache;

        public List<int> Tokens { get; } = tokens;

        /// <summary>Gets whether this is the engine's cache (its tokens list, its drafter).</summary>
        public bool Shared => drafter is not null;

        /// <summary>Keeps the first <paramref name="n"/> tokens (and the drafter's pairs among them).</summary>
        public void Keep(int n)
        {
            Cache.Length = n;
            Tokens.RemoveRange(n, Tokens.Count - n);
            drafter?.Truncate(n - 1);   // pair t holds token t + 1
        }

        public bool Busy { get; set; }

        /// <summary>When its last request ended (a count of ends; 0: never used).</summary>
        public long Released { get; set; }
    }

    /// <summary>One request's decoding state.</summary>
    private sealed class Sequence(GenerationRequest request, Action<int, string>? onText, CancellationToken cancellationToken)
    {
        public GenerationRequest Request { get; } = request;

        public Action<int, string>? OnText { get; } = onText;

        public CancellationToken CancellationToken { get; } = cancellationToken;

        public TaskCompletionSource<GenerationResult> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>The sampler, emitter, constraint and counters, shared with runs of the engine's loop (set at admission).</summary>
        public RequestDecoding? D { get; set; }

        public Slot? Slot { get; private set; }

        public float[] Row { get; private set; } = [];

        public float[] Probs { get; private set; } = [];

        public bool Prefilling { get; set; }

        /// <summary>Prompt tokens in the cache.</summary>
        public int Position { get; set; }

        /// <summary>Decode forwards in the batch.</summary>
        public int DecodeSteps { get; set; }

        /// <summary>The prompt-lookup proposal buffer (empty: no lookup for this request) and the n-gram of its match.</summary>
        public int[] Proposal { get; private set; } = [];

        public int Ngram { get; set; }

        /// <summary>Forwards that verified a proposal; proposal tokens verified; of them accepted.</summary>
        public int LookupCycles { get; set; }

        public int LookupProposed { get; set; }

        public int LookupAccepted { get; set; }

        public void Start(Slot slot, int cached, InferenceEngine engine)
        {
            (Slot, Position, Prefilling) = (slot, cached, true);
            D!.Cached = cached;
            int vocab = engine.Model.Config.VocabSize;
            Row = new float[vocab];
            Probs = new float[vocab];
            // Greedy requests only: their output is the plain one whatever the gate decides, so a request gets the same
            // tokens at any load (a sampled one would draw differently wherever a proposal was verified).
            bool lookup = Request.Speculative && Request.Constraint is null && Request.Sampling.IsGreedy && engine.Model.UsesPackedWeights;
            Proposal = new int[lookup ? Request.PromptLookupTokens ?? engine.PromptLookupTokens : 0];
        }
    }
}

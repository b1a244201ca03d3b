using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// A loaded model with its tokenizer, one preallocated KV cache and optionally a drafter, and the decode loop. Generation
/// runs synchronously on the caller's thread (TorchSharp dispose scopes are thread-static); callers serialise requests
/// through <see cref="Gate"/>. The cache keeps the last sequence so that a request sharing its prefix skips that prefill.
/// </summary>
/// <remarks>
/// One loop, two proposers: plain decoding samples one token per target forward; speculative decoding drafts an EAGLE-2
/// tree, verifies it in one target forward and accepts a path losslessly. Both hand tokens to the same
/// <see cref="TokenEmitter"/> and draw from the same <see cref="LogitsSampler"/>.
/// </remarks>
internal sealed class InferenceEngine : IDisposable
{
    private readonly List<int> _cachedTokens = [];
    private readonly float[] _row;
    private float[] _treeLogits = [];
    private float[] _probs;

    public InferenceEngine(TransformerModel model, HfTokenizer tokenizer, int contextLength, string modelId, int prefillChunk = 256, DraftModel? draft = null)
    {
        Model = model;
        Tokenizer = tokenizer;
        ModelId = modelId;
        PrefillChunk = prefillChunk;
        Cache = model.CreateCache(contextLength, batchInvariant: draft is not null);
        var eos = new List<int>(model.Config.EosTokenIds);
        eos.AddRange(tokenizer.Config.GenerationEosTokenIds);
        if (tokenizer.EosTokenId is int e)
        {
            eos.Add(e);
        }

        EosTokenIds = eos.Distinct().ToArray();
        _row = new float[model.Config.VocabSize];
        _probs = new float[model.Config.VocabSize];
        if (draft is not null)
        {
            Drafter = new TreeDrafter(draft, Cache.Capacity + 128);
        }

        CoralTelemetry.TrackCache(this, Cache.Bytes + (Drafter?.Cache.Bytes ?? 0));
    }

    public TransformerModel Model { get; }

    public HfTokenizer Tokenizer { get; }

    public KvCache Cache { get; }

    /// <summary>Gets the drafter, or null when the engine has no draft model.</summary>
    public TreeDrafter? Drafter { get; }

    private DepthController? _depthController;
    private TreeShape? _depthShape;                          // the shape and the prior _depthController was made with
    private IReadOnlyDictionary<int, double>? _depthCosts;
    private IReadOnlyDictionary<int, double>? _verifyCosts;  // TuneTree's verify ms by tree size

    /// <summary>Gets or sets the default draft tree (set at load, possibly auto-tuned).</summary>
    public TreeShape Tree { get; set; } = TreeShape.Default;

    /// <summary>When set (the default), each speculation cycle's draft depth follows the acceptance observed so far, up
    /// to the tree's depth (<see cref="DepthController"/>); the state persists across requests of this engine.</summary>
    public bool AdaptiveDepth { get; set; } = true;

    /// <summary>When set (the default), the adaptive depth may take plain steps instead of cycles when those measure
    /// faster (<see cref="DepthController"/>); off, every step is a cycle (for comparing drafters by τ and cost).</summary>
    public bool PlainFallback { get; set; } = true;

    /// <summary>When set (the default), greedy steps without penalties take their token from the model's screened LM
    /// head (<see cref="ScreenedHead"/>: the same token, half the head's bytes) where it has one; off, from full logits
    /// (for A/B measurements).</summary>
    public bool ScreenedArgMax { get; set; } = true;

    /// <summary>Gets or sets how many tokens a prompt-lookup proposal has (<see cref="PromptLookup"/>: the sequence's own
    /// continuation of its last n-gram, verified as a chain without a draft forward, where a gate expects it to pay);
    /// 0 = off. With a drafter in every speculative run; without one only on packed weights, whose verified rows equal
    /// one-token steps bit for bit. A request may set its own.</summary>
    public int PromptLookupTokens { get; set; }

    /// <summary>The gate of prompt-lookup proposals, kept across requests like the depth controller (settable for tests).</summary>
    internal LookupGate LookupGate { get; set; } = new();

    /// <summary>Gets or sets how often a drafter that measured slower than plain steps is tried again: after a request
    /// whose speculative loop ended on plain steps (the depth controller found no depth that beats them), the next
    /// requests of the same kind (greedy, or sampled) run without it — plain steps and prompt lookup, the drafter not
    /// kept in step — and every this-many-th one speculates again to re-measure; each re-check that loses again doubles
    /// the wait up to <see cref="DrafterRecheckLimit"/> (<see cref="DrafterSitOut"/>). 0 = always speculate. Only with
    /// the adaptive depth and its plain fallback (a fixed engine measures the drafter as configured).</summary>
    public int DrafterRecheckEvery
    {
        get => _sitOut.RecheckEvery;
        set => _sitOut.RecheckEvery = value;
    }

    /// <summary>Gets or sets the longest wait, in requests, between re-checks of a drafter that keeps losing (64).</summary>
    public int DrafterRecheckLimit
    {
        get => _sitOut.RecheckLimit;
        set => _sitOut.RecheckLimit = value;
    }

    private readonly DrafterSitOut _sitOut = new();

    // Plain steps of an engine without a drafter, the alternative its lookup gate weighs proposals against.
    private readonly RecentMedian _plainSteps = new(DepthController.PlainWindow);
    private double _plainStepMs = -1;

    /// <summary>The adaptive depth state (null until the first speculative request, or when adaptation is off).</summary>
    internal DepthController? DepthState => _depthController;

    public string ModelId { get; }

    public int PrefillChunk { get; }

    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>Gets the token ids whose K/V the cache holds, in slot order.</summary>
    public IReadOnlyList<int> CachedTokens => _cachedTokens;

    /// <summary>Gets the usable context (prompt + output) in tokens.</summary>
    public int ContextLength => Cache.Capacity;

    /// <summary>Gets the continuous-batching scheduler when <see cref="EnableBatching"/> set one up: requests then decode
    /// together in its slots (plain steps) instead of one at a time through <see cref="Generate"/>.</summary>
    public BatchScheduler? Batch { get; private set; }

    /// <summary>Sets up continuous batching over <paramref name="slots"/> KV caches of the engine's context length.</summary>
    public void EnableBatching(int slots)
    {
        if (Batch is not null)
        {
            throw new InvalidOperationException("Batching is already enabled.");
        }

        Batch = new BatchScheduler(this, slots);
    }

    /// <summary>Gets the lock that serialises requests over the single cache.</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);

    private int _gateWaiters;

    /// <summary>Gets how many callers wait in <see cref="EnterAsync"/> (a lone request the batch scheduler handed to the
    /// engine's loop yields to them).</summary>
    internal int GateWaiters => Volatile.Read(ref _gateWaiters);

    /// <summary>Waits for <see cref="Gate"/>, counted in the queue depth and in <see cref="GateWaiters"/>.</summary>
    internal async Task EnterAsync(CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _gateWaiters);
        try
        {
            await CoralTelemetry.EnterAsync(Gate, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _gateWaiters);
        }
    }

    /// <summary>The token ids whose K/V the cache holds (the batch scheduler's slot over the engine's cache shares it).</summary>
    internal List<int> TokensInCache => _cachedTokens;

    public static InferenceEngine Load(string folder, Device device, ScalarType dtype, int contextLength, string? modelId = null, string? draftFolder = null,
        ScalarType? headType = null, bool cpuKernels = true, bool packedWeights = true, WeightQuantization quantization = WeightQuantization.None,
        ScalarType kvCacheType = ScalarType.Float32)
    {
        string? ggufName = GgufImporter.ModelId(folder);
        folder = GgufImporter.Resolve(folder);
        HfTokenizer tokenizer = HfTokenizer.Load(folder);
        TransformerModel model = TransformerModel.Load(folder, device, dtype, contextLength, headType, cpuKernels, packedWeights, quantization);
        model.KvCacheType = kvCacheType;
        DraftModel? draft = null;
        try
        {
            if (tokenizer.VocabSize > model.Config.VocabSize)
            {
                throw new CoralModelException(Path.Combine(folder, "tokenizer.json"), "model.vocab",
                    $"the tokenizer has {tokenizer.VocabSize} ids but config.json vocab_size is {model.Config.VocabSize}.");
            }

            if (draftFolder is not null)
            {
                draft = DraftModel.Load(draftFolder, model, model.MaxPositions + 128);
            }

            return new InferenceEngine(model, tokenizer, contextLength, modelId ?? ggufName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder))), draft: draft);
        }
        catch
        {
            draft?.Dispose();
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Generates a continuation of <paramref name="request"/>'s prompt. <paramref name="onText"/> receives each token id
    /// and the text it completed (stop sequences already held back). Must run on one thread from start to end.
    /// </summary>
    public GenerationResult Generate(GenerationRequest request, Action<int, string>? onText, CancellationToken cancellationToken)
    {
        CheckPrompt(request.PromptIds);
        var decoding = new RequestDecoding(request, this, onText);
        Run(decoding, yieldWhen: null, cancellationToken);
        return decoding.Result();
    }

    /// <summary>Refuses an empty prompt, and one that leaves no room for an answer in the context.</summary>
    internal void CheckPrompt(IReadOnlyList<int> prompt)
    {
        if (prompt.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", "request");
        }

        if (prompt.Count >= ContextLength)
        {
            throw new PromptTooLongException(prompt.Count, ContextLength);
        }
    }

    /// <summary>Whether the engine's runs of <paramref name="d"/> draft: decided once per request — a drafter, a
    /// speculative unconstrained request, and a drafter not sitting this kind of request out (<see cref="SkipDrafter"/>).</summary>
    internal bool Drafts(RequestDecoding d) => d.Drafting ??= Drafter is not null && d.Request.Speculative && d.Request.Constraint is null
        && !SkipDrafter(Kind(d.Request));

    private static int Kind(GenerationRequest request) => request.Sampling.IsGreedy ? 0 : 1;

    /// <summary>
    /// Decodes <paramref name="d"/> on the engine's cache from where it stands — a new request from its prompt; a resumed
    /// one (<see cref="RequestDecoding.Last"/> set, the cache holding its sequence) from its last token, the tokens the
    /// drafter has not seen run again for their features — until it finishes, or until <paramref name="yieldWhen"/>
    /// answers true between two steps: then <see cref="RequestDecoding.Last"/> is its last token (emitted, not cached)
    /// and the cache and <see cref="CachedTokens"/> hold the rest — or, between two chunks of a new prompt, the prompt so
    /// far (<see cref="RequestDecoding.Last"/> still null). Must run on one thread from start to end.
    /// </summary>
    internal void Run(RequestDecoding d, Func<bool>? yieldWhen, CancellationToken cancellationToken)
    {
        using var inference = torch.inference_mode();
        GenerationRequest request = d.Request;
        bool speculative = Drafts(d);
        bool resumed = d.Last is not null;
        IReadOnlyList<int> prompt = resumed ? _cachedTokens.ToArray() : request.PromptIds;
        // A resumed sequence recomputes only what the drafter has not seen, without yielding (the batch cannot take a
        // partly recomputed sequence back); a new prompt may yield between its chunks and go on in the batch.
        var (cached, features, yieldedInPrompt) = Prefill(prompt, cancellationToken, collectFeatures: speculative, logits: !resumed,
            yieldWhen: resumed ? null : yieldWhen);
        if (d.Forwards++ == 0)
        {
            d.Cached = cached;   // the request's first forward: what it found in the cache
        }

        if (yieldedInPrompt)
        {
            return;
        }

        int token;
        if (d.Last is int last)
        {
            token = last;
        }
        else
        {
            d.PrefillTime = d.Clock.Elapsed;
            token = Next(d.Sampler, ref d.Constraint, _row, _probs);
            if (!d.Emitter.Emit(token) || EndIfComplete(d.Constraint, d.Emitter))
            {
                features?.Dispose();
                return;
            }
        }

        if (speculative)
        {
            long[] next = [.. prompt.Skip(prompt.Count - (int)features!.shape[0] + 1).Select(x => (long)x), token];
            (token, SpeculativeStats stats, bool yielded) = SpeculativeLoop(request.Tree ?? Tree, request.PromptLookupTokens ?? PromptLookupTokens,
                d.Sampler, d.Emitter, features, next, yieldWhen, cancellationToken);
            d.Forwards += stats.Cycles + stats.PlainSteps;
            d.Stats = SpeculativeStats.Sum(d.Stats, stats);
            if (yielded)
            {
                d.Last = token;
                return;
            }

            _sitOut.Observe(Kind(request), AdaptiveDepth && _depthController is { PlainFallback: true } controller
                && (controller.Depth == 0 || stats.DraftCyclesLosing));
        }
        else
        {
            features?.Dispose();
        }

        // Without the drafter (none, or one that measured slower than plain steps for this kind of request), prompt
        // lookup still speculates where a verified chain computes the same bits as one-token steps: an engine set up
        // for a drafter (batch-invariant cache, padding, bf16 head), or packed weights. Greedy output stays exactly
        // the plain one.
        int lookupTokens = !speculative && request.Speculative && request.Constraint is null && (Drafter is not null || Model.UsesPackedWeights)
            ? request.PromptLookupTokens ?? PromptLookupTokens : 0;
        if (PlainLoop(d, token, lookupTokens, yieldWhen, cancellationToken))
        {
            return;
        }

        if (d.Stats is null && !speculative && Drafter is not null && request.Speculative && request.Constraint is null)
        {
            // The drafter sat this request out (and prompt lookup is off): say so, with its plain steps.
            d.Stats = new SpeculativeStats(0, 0, 0, TimeSpan.Zero, TimeSpan.Zero, []) { PlainSteps = d.Forwards - 1, PlainTime = d.Clock.Elapsed - d.PrefillTime };
        }
    }

    /// <summary>Whether this request (of <paramref name="kind"/>: 0 greedy, 1 sampled) runs without the drafter because
    /// it last measured slower than plain steps (<see cref="DrafterSitOut"/>: re-checks after 8, 16, … requests).</summary>
    private bool SkipDrafter(int kind) => AdaptiveDepth && PlainFallback && _sitOut.Skip(kind);

    /// <summary>
    /// Plain decoding of <paramref name="d"/> from <paramref name="last"/> (emitted, not yet in the cache). With
    /// <paramref name="lookupTokens"/> &gt; 0 (no drafter in use, and verified rows exact), prompt-lookup proposals are
    /// verified as chains where the gate expects them to beat a plain step, and their counts join the request's. Returns
    /// true when <paramref name="yieldWhen"/> stopped it before the end (<see cref="RequestDecoding.Last"/> set).
    /// </summary>
    private bool PlainLoop(RequestDecoding d, int last, int lookupTokens, Func<bool>? yieldWhen, CancellationToken cancellationToken)
    {
        int plainSteps = 0;
        bool yielded = false;
        LookupRun? lookup = lookupTokens > 0 ? new LookupRun(lookupTokens, LookupGate) : null;
        var verifyClock = new Stopwatch();
        TimeSpan plainTime = TimeSpan.Zero;
        LogitsSampler sampler = d.Sampler;
        TokenEmitter emitter = d.Emitter;
        while (!emitter.Finished)
        {
            if (Cache.Length + 1 >= ContextLength)
            {
                emitter.EndForContext();
                break;
            }

            if (yieldWhen?.Invoke() == true)
            {
                yielded = true;
                break;
            }

            cancellationToken.ThrowIfCancellationRequested();
            long stepStart = Stopwatch.GetTimestamp();
            if (lookup is not null && TryLookupCycle(lookup, last, _plainStepMs > 0 ? 1 / _plainStepMs : 0, sampler, emitter, verifyClock,
                    keepFeatures: false, out List<int> emitted, out _))
            {
                d.Forwards++;
                last = emitted[^1];
                continue;
            }

            int? greedy = Step(last, argMax: d.Constraint is null && sampler.Parameters.IsArgMax);
            _cachedTokens.Add(last);
            d.Forwards++;
            last = greedy is int token ? Accept(sampler, token) : Next(sampler, ref d.Constraint, _row, _probs);
            if (emitter.Emit(last))
            {
                EndIfComplete(d.Constraint, emitter);
            }

            if (lookup is not null)
            {
                TimeSpan step = Stopwatch.GetElapsedTime(stepStart);
                _plainStepMs = _plainSteps.Add(step.TotalMilliseconds);
                plainTime += step;
                plainSteps++;
            }
        }

        if (lookup is not null)
        {
            d.Stats = SpeculativeStats.Sum(d.Stats, new SpeculativeStats(lookup.Cycles, lookup.Emitted, lookup.Proposed, TimeSpan.Zero, verifyClock.Elapsed, [])
            {
                PlainSteps = plainSteps, PlainTime = plainTime, LookupCycles = lookup.Cycles, LookupAcceptedTokens = lookup.Accepted,
                LookupTime = lookup.Time,
            });
        }

        if (yielded)
        {
            d.Last = last;
        }

        return yielded;
    }

    internal static bool EndIfComplete(OutputConstraint.State? constraint, TokenEmitter emitter)
    {
        if (constraint?.IsComplete == true)
        {
            emitter.EndComplete();
            return true;
        }

        return false;
    }

    private static int Accept(LogitsSampler sampler, int token)
    {
        sampler.Accept(token);
        return token;
    }

    /// <summary>Samples the next token from the row buffer: freely, or restricted to tokens that keep the constraint satisfiable.</summary>
    internal int Next(LogitsSampler sampler, ref OutputConstraint.State? constraint, float[] row, float[] probs)
    {
        if (constraint is null)
        {
            int free = sampler.Sample(row);
            sampler.Accept(free);
            return free;
        }

        OutputConstraint.State state = constraint;
        (int Token, OutputConstraint.State? Next) Try(int id)
        {
            if (EosTokenIds.Contains(id))
            {
                return state.CanEnd ? (id, state) : (-1, null);
            }

            if (Tokenizer.IsSpecial(id) && !Tokenizer.IsMarker(id))
            {
                return (-1, null);
            }

            ReadOnlySpan<byte> bytes = Tokenizer.TokenBytes(id);
            return bytes.IsEmpty ? (-1, null) : (id, state.TryAdvance(bytes)) is (var t, { } n) ? (t, n) : (-1, null);
        }

        // Candidates of the sampler's own distribution, most likely first; renormalised over the valid ones.
        sampler.Distribution(row, probs);
        var candidates = Enumerable.Range(0, probs.Length).Where(i => probs[i] > 0).OrderByDescending(i => probs[i]).Take(512).ToList();
        var valid = new List<(int Token, OutputConstraint.State Next, float P)>();
        foreach (int id in candidates)
        {
            var (t, n) = Try(id);
            if (n is not null)
            {
                valid.Add((t, n, probs[id]));
            }
        }

        if (valid.Count == 0)
        {
            // Nothing the sampler allows fits: take the most likely token (by raw logit) that does.
            int[] order = Enumerable.Range(0, row.Length).ToArray();
            float[] keys = row.Select(x => -x).ToArray();
            Array.Sort(keys, order);
            foreach (int id in order)
            {
                var (t, n) = Try(id);
                if (n is not null)
                {
                    valid.Add((t, n, 1f));
                    break;
                }
            }

            if (valid.Count == 0)
            {
                throw new InvalidOperationException("No token can continue the constrained output (the vocabulary cannot spell it).");
            }
        }

        int pick = 0;
        if (!sampler.Parameters.IsGreedy && valid.Count > 1)
        {
            double u = sampler.NextUniform() * valid.Sum(v => v.P), acc = 0;
            while (pick < valid.Count - 1 && (acc += valid[pick].P) <= u)
            {
                pick++;
            }
        }

        sampler.Accept(valid[pick].Token);
        constraint = valid[pick].Next;
        return valid[pick].Token;
    }

    /// <summary>
    /// Draft → verify → accept cycles until the emitter finishes, the cache cannot hold another tree, or
    /// <paramref name="yieldWhen"/> answers true before a cycle. Returns the last emitted token (not yet in the target
    /// cache) for the plain loop (or the batch) to continue from, the cycle statistics, and whether it yielded. The drafter
    /// takes every pending pair before it returns.
    /// </summary>
    private (int Last, SpeculativeStats Stats, bool Yielded) SpeculativeLoop(TreeShape shape, int lookupTokens, LogitsSampler sampler, TokenEmitter emitter,
        Tensor features, long[] nextTokens, Func<bool>? yieldWhen, CancellationToken cancellationToken)
    {
        shape.Validate();
        TreeDrafter drafter = Drafter!;
        DepthController? depthController = null;
        if (AdaptiveDepth)
        {
            if (_depthController is null || _depthShape != shape || _depthController.PlainFallback != PlainFallback
                || _depthCosts != _verifyCosts)
            {
                // The load-time timing of each tree size (TuneTree) is the prior for depths whose verification the
                // controller has not timed yet: a deeper cycle verifies more rows.
                IReadOnlyDictionary<int, double>? costs = _verifyCosts;
                _depthController = new DepthController(shape.Depth, PlainFallback,
                    costs is null ? null : d => Interpolate(costs, shape.NodesAt(d)));
                _depthShape = shape;
                _depthCosts = costs;
            }

            depthController = _depthController;
        }

        int cycles = 0, accepted = 0, drafted = 0, plainSteps = 0;
        LookupRun? lookup = lookupTokens > 0 ? new LookupRun(lookupTokens, LookupGate) : null;
        var plainTime = TimeSpan.Zero;
        var acceptedDrafted = new int[shape.Depth + 1];
        var draftClock = new Stopwatch();
        var loopClock = Stopwatch.StartNew();
        var verifyClock = new Stopwatch();
        int root = (int)nextTokens[^1];
        bool yielded = false;
        try
        {
            while (!emitter.Finished && Cache.Length + shape.TotalTokens < ContextLength)
            {
                if (yieldWhen?.Invoke() == true)
                {
                    yielded = true;
                    break;
                }

                cancellationToken.ThrowIfCancellationRequested();
                long cycleStart = Stopwatch.GetTimestamp();
                // Prompt lookup first, when the gate expects it to beat the controller's choice: the accepted tokens'
                // features join the pending pairs, which the drafter catches up on at its next cycle.
                if (lookup is not null && TryLookupCycle(lookup, root, depthController?.ExpectedRate ?? 0, sampler, emitter, verifyClock,
                        keepFeatures: true, out List<int> copied, out Tensor? pathFeatures))
                {
                    Tensor old = features;
                    features = torch.cat([old, pathFeatures!]).DetachFromDisposeScope();
                    old.Dispose();
                    pathFeatures!.Dispose();
                    nextTokens = [.. nextTokens, .. copied.Select(t => (long)t)];
                    root = copied[^1];
                    if (nextTokens.Length > PendingPairsLimit)
                    {
                        CatchUp(ref features, ref nextTokens);
                    }

                    continue;
                }

                int depth = depthController?.NextDepth() ?? shape.Depth;
                if (depth == 0)
                {
                    // The controller measured plain steps to be faster than any tree at the observed acceptance: one
                    // plain step, whose feature joins the pending pairs the drafter catches up on at the next cycle.
                    bool more = PlainStepInLoop(ref root, ref features, ref nextTokens, sampler, emitter);
                    plainSteps++;
                    plainTime += Stopwatch.GetElapsedTime(cycleStart);
                    depthController!.ObservePlain(Stopwatch.GetElapsedTime(cycleStart).TotalMilliseconds);
                    if (!more)
                    {
                        break;
                    }

                    continue;
                }

                if (nextTokens.Length > depth + 1)
                {
                    // Pairs left by plain steps (or the prompt): the drafter takes them before the cycle's clock starts,
                    // so that the controller compares cycles by what a cycle costs when speculation continues.
                    CatchUp(ref features, ref nextTokens);
                    cycleStart = Stopwatch.GetTimestamp();
                }

                int start = Cache.Length;
                var emitted = new List<int>();
                var path = new List<int> { 0 };
                double draftMs, verifyMs;
                TreeShape cycleShape = depthController is null ? shape : shape with { Depth = depth, TotalTokens = shape.NodesAt(depth) };
                using (var scope = torch.NewDisposeScope())
                {
                    long draftStart = Stopwatch.GetTimestamp();
                    draftClock.Start();
                    DraftTree tree;
                    using (features)
                    {
                        tree = drafter.Draft(features, nextTokens, cycleShape);
                    }

                    draftClock.Stop();
                    draftMs = Stopwatch.GetElapsedTime(draftStart).TotalMilliseconds;
                    Tensor hidden = VerifyTree(tree, start, sampler, emitted, path, verifyClock, out verifyMs);
                    using Tensor rows = torch.tensor(path.Select(p => (long)p).ToArray(), device: Model.Device);
                    features = hidden.index_select(0, rows).DetachFromDisposeScope();
                    drafted += tree.Count - 1;
                    acceptedDrafted[path.Count - 1]++;
                }

                cycles++;
                accepted += Commit(root, emitted, start, emitter);
                nextTokens = emitted.Select(t => (long)t).ToArray();
                root = emitted[^1];
                depthController?.Observe(cycleShape.Depth, path.Count - 1, draftMs, verifyMs,
                    Stopwatch.GetElapsedTime(cycleStart).TotalMilliseconds - draftMs - verifyMs);
            }

            using (var scope = torch.NewDisposeScope())
            {
                // The drafter takes the pending pairs (after plain steps, possibly many), so that a follow-up request
                // reuses this whole sequence (reuse is bounded by the drafter's cache); pairs past what the next prompt
                // shares are cut then.
                drafter.Feed(features, nextTokens);
            }

        }
        finally
        {
            features.Dispose();
        }

        return (root, new SpeculativeStats(cycles + (lookup?.Cycles ?? 0), accepted + (lookup?.Emitted ?? 0), drafted + (lookup?.Proposed ?? 0),
            draftClock.Elapsed, verifyClock.Elapsed, acceptedDrafted)
        {
            PlainSteps = plainSteps, PlainTime = plainTime, LookupCycles = lookup?.Cycles ?? 0, LookupAcceptedTokens = lookup?.Accepted ?? 0,
            UsedDrafter = true, LookupTime = lookup?.Time ?? TimeSpan.Zero, LoopTime = loopClock.Elapsed,
        }, yielded);
    }

    /// <summary>
    /// One prompt-lookup cycle from <paramref name="last"/> (emitted, not yet in the cache), when the sequence proposes a
    /// continuation of its last n-gram that fits the cache and the gate expects it to beat
    /// <paramref name="alternativeRate"/> tokens per ms: verifies it as a chain, then commits and emits the accepted
    /// tokens and the bonus (<paramref name="emitted"/>). With <paramref name="keepFeatures"/>, <paramref name="features"/>
    /// is the accepted path's target hidden states (root first; the caller disposes it). Returns false when no cycle ran.
    /// </summary>
    private bool TryLookupCycle(LookupRun run, int last, double alternativeRate, LogitsSampler sampler, TokenEmitter emitter,
        Stopwatch verifyClock, bool keepFeatures, out List<int> emitted, out Tensor? features)
    {
        emitted = [];
        features = null;
        long begin = Stopwatch.GetTimestamp();
        if (Cache.Length + run.Proposal.Length + 1 >= ContextLength)
        {
            return false;
        }

        var (ngram, count) = PromptLookup.Find(CollectionsMarshal.AsSpan(_cachedTokens), last, run.Proposal);
        if (count == 0 || !run.Gate.Use(ngram, alternativeRate))
        {
            return false;
        }

        int start = Cache.Length;
        var path = new List<int> { 0 };
        using (var scope = torch.NewDisposeScope())
        {
            Tensor hidden = VerifyTree(DraftTree.Chain([last, .. run.Proposal[..count]]), start, sampler, emitted, path, verifyClock, out _);
            if (keepFeatures)
            {
                // The path is a prefix of the chain: rows 0 .. path.Count − 1.
                features = hidden.narrow(0, 0, path.Count).DetachFromDisposeScope();
            }
        }

        run.Cycles++;
        run.Proposed += count;
        run.Accepted += path.Count - 1;
        run.Emitted += Commit(last, emitted, start, emitter);
        TimeSpan took = Stopwatch.GetElapsedTime(begin);
        run.Time += took;
        run.Gate.Observe(ngram, path.Count - 1, took.TotalMilliseconds);
        return true;
    }

    /// <summary>The prompt-lookup state of one decode loop: the proposal buffer, the engine's gate, and the counts.</summary>
    private sealed class LookupRun(int tokens, LookupGate gate)
    {
        public int[] Proposal { get; } = new int[tokens];

        public LookupGate Gate { get; } = gate;

        /// <summary>Lookup cycles run; proposal tokens verified; of them accepted; tokens emitted (accepted + bonus).</summary>
        public int Cycles, Proposed, Accepted, Emitted;

        public TimeSpan Time;
    }

    /// <summary>
    /// Verifies a draft tree in one target forward (its rows' K/V appended at <paramref name="start"/>) and walks it from
    /// the root: a child is accepted with the target's probability (greedy: when it is the argmax), else the bonus token
    /// is drawn and the walk ends. Fills <paramref name="emitted"/> (the accepted tokens and the bonus) and
    /// <paramref name="path"/> (the accepted nodes, root first), moves the accepted path's K/V to follow the root and
    /// returns the tree's hidden states (in the caller's dispose scope). <paramref name="verifyMs"/> is the forward with
    /// its logits, also added to <paramref name="verifyClock"/>.
    /// </summary>
    private Tensor VerifyTree(DraftTree tree, int start, LogitsSampler sampler, List<int> emitted, List<int> path, Stopwatch verifyClock, out double verifyMs)
    {
        int vocab = Model.Config.VocabSize;
        long verifyStart = Stopwatch.GetTimestamp();
        verifyClock.Start();
        Tensor hidden = Model.Forward(tree.Tokens.Select(t => (long)t).ToArray(), Cache, tree.Positions(start), tree.AncestorMask());
        int[]? greedy = ScreenedTokens(hidden, tree.Count, sampler);
        if (greedy is null)
        {
            Model.Logits(hidden, TreeLogits(tree.Count));
        }

        verifyClock.Stop();
        verifyMs = Stopwatch.GetElapsedTime(verifyStart).TotalMilliseconds;
        for (int node = 0; ;)
        {
            int[] children = tree.Children[node];
            int c;

            // Greedy (penalties included): P is one-hot at the argmax, so the rule is exact matching — from the screen, or
            // the argmax of the row's logits after penalties (a one-hot distribution and a draw from it, 50k values each,
            // cost ≈ 0.1 ms a walked row on the demo target for the same token).
            int? best = greedy is not null ? greedy[node] : sampler.Parameters.IsGreedy ? sampler.Sample(_treeLogits.AsSpan(node * vocab, vocab)) : null;
            if (best is int b)
            {
                c = Array.FindIndex(children, i => tree.Tokens[i] == b);
            }
            else
            {
                sampler.Distribution(_treeLogits.AsSpan(node * vocab, vocab), _probs);
                c = TreeAcceptance.AcceptChild(_probs, children.Select(i => tree.Tokens[i]).ToArray(), sampler.NextUniform);
            }

            if (c < 0)
            {
                int bonus = best ?? sampler.Draw(_probs);
                sampler.Accept(bonus);
                emitted.Add(bonus);
                break;
            }

            node = children[c];
            sampler.Accept(tree.Tokens[node]);
            emitted.Add(tree.Tokens[node]);
            path.Add(node);
        }

        // Keep the accepted path's K/V: slot start + path[j] moves to start + j.
        Cache.Length = start;
        if (path.Select((p, j) => p != j).Any(moved => moved))
        {
            Cache.CopySlots(path.Skip(1).Select(p => (long)(start + p)).ToArray(), start + 1);
        }

        Cache.Length = start + path.Count;
        return hidden;
    }

    /// <summary>Records a verified cycle's tokens as cached (the root and all accepted but the last) and emits them;
    /// after a stop nothing more is emitted and the cache keeps the root and the tokens before the last one emitted.
    /// Returns how many were emitted.</summary>
    private int Commit(int root, List<int> emitted, int start, TokenEmitter emitter)
    {
        _cachedTokens.Add(root);
        _cachedTokens.AddRange(emitted.Take(emitted.Count - 1));
        for (int j = 0; j < emitted.Count; j++)
        {
            if (!emitter.Emit(emitted[j]))
            {
                Cache.Length = start + 1 + j;
                _cachedTokens.RemoveRange(start + 1 + j, _cachedTokens.Count - (start + 1 + j));
                return j + 1;
            }
        }

        return emitted.Count;
    }

    /// <summary>
    /// One plain step inside the speculative loop: runs <paramref name="root"/> through the target, samples and emits the
    /// next token, and appends (root's feature, next token) to the pairs the drafter has not seen yet. Returns false when
    /// the emitter finished.
    /// </summary>
    private bool PlainStepInLoop(ref int root, ref Tensor features, ref long[] nextTokens, LogitsSampler sampler, TokenEmitter emitter)
    {
        int next;
        using (var scope = torch.NewDisposeScope())
        {
            Tensor hidden = Model.Forward([root], Cache);
            next = ArgMaxOrLogits(hidden, sampler.Parameters.IsArgMax) ?? sampler.Sample(_row);
            sampler.Accept(next);
            Tensor old = features;
            features = torch.cat([old, hidden]).DetachFromDisposeScope();
            old.Dispose();
            nextTokens = [.. nextTokens, next];
        }

        if (nextTokens.Length > PendingPairsLimit)
        {
            CatchUp(ref features, ref nextTokens);   // a long run of plain steps: the drafter takes the pairs in one chunk
        }

        _cachedTokens.Add(root);
        root = next;
        return emitter.Emit(next);
    }

    /// <summary>Feeds the drafter every pending (feature, next token) pair but the last, which stays pending (a draft
    /// starts from its output).</summary>
    private void CatchUp(ref Tensor features, ref long[] nextTokens)
    {
        int m = nextTokens.Length - 1;
        using (var scope = torch.NewDisposeScope())
        {
            Drafter!.Feed(features.narrow(0, 0, m), nextTokens[..m]);
            Tensor old = features;
            features = features.narrow(0, m, 1).clone().DetachFromDisposeScope();
            old.Dispose();
        }

        nextTokens = nextTokens[m..];
    }

    /// <summary>Plain steps within a speculative run hand their pairs to the drafter in chunks of at most this many.</summary>
    private const int PendingPairsLimit = 64;

    /// <summary>
    /// Brings the cache to hold the prompt, reusing the longest prefix shared with the cached sequence, and leaves the
    /// logits of the last prompt token in the row buffer (unless <paramref name="logits"/> is false: a resumed sequence
    /// already has its next token). With <paramref name="collectFeatures"/>, also returns the target
    /// features of the prompt positions whose (feature, next token) pairs the drafter has not seen. When
    /// <paramref name="yieldWhen"/> answers true before a chunk (never the first), it stops there with the cache holding
    /// the prompt so far (the drafter fed its pairs) and returns <c>Yielded</c>.
    /// </summary>
    private (int Reused, Tensor? Features, bool Yielded) Prefill(IReadOnlyList<int> prompt, CancellationToken cancellationToken, bool collectFeatures = false,
        bool logits = true, Func<bool>? yieldWhen = null)
    {
        int common = 0;
        int limit = Math.Min(Math.Min(_cachedTokens.Count, Cache.Length), prompt.Count - 1);
        while (common < limit && _cachedTokens[common] == prompt[common])
        {
            common++;
        }

        // Drafter pair t = (feature t, token t + 1) stays valid while token t + 1 is in the shared prefix.
        Drafter?.Truncate(common - 1);
        if (collectFeatures)
        {
            common = Drafter!.Cache.Length;
        }

        Cache.Length = common;
        _cachedTokens.RemoveRange(common, _cachedTokens.Count - common);
        var parts = new List<Tensor>();
        try
        {
            for (int start = common; start < prompt.Count; start += PrefillChunk)
            {
                if (start > common && yieldWhen?.Invoke() == true)
                {
                    if (collectFeatures)
                    {
                        using var scope = torch.NewDisposeScope();
                        Drafter!.Feed(torch.cat(parts, 0), prompt.Skip(common + 1).Take(start - common).Select(x => (long)x).ToArray());
                    }

                    return (common, null, true);
                }

                cancellationToken.ThrowIfCancellationRequested();
                int n = Math.Min(PrefillChunk, prompt.Count - start);
                long[] chunk = prompt.Skip(start).Take(n).Select(x => (long)x).ToArray();
                using (var scope = torch.NewDisposeScope())
                {
                    Tensor hidden = Model.Forward(chunk, Cache);
                    if (logits && start + n == prompt.Count)
                    {
                        Model.Logits(hidden.narrow(0, n - 1, 1), _row);
                    }

                    if (collectFeatures)
                    {
                        parts.Add(hidden.clone().DetachFromDisposeScope());
                    }
                }

                _cachedTokens.AddRange(chunk.Select(x => (int)x));
            }

            if (!collectFeatures)
            {
                return (common, null, false);
            }

            Tensor features = parts.Count == 1 ? parts[0].alias() : torch.cat(parts, 0);
            return (common, features, false);
        }
        catch
        {
            _cachedTokens.Clear();
            Cache.Length = 0;
            Drafter?.Truncate(0);
            throw;
        }
        finally
        {
            parts.ForEach(p => p.Dispose());
        }
    }

    /// <summary>One plain decode step for <paramref name="token"/>: with <paramref name="argMax"/>, returns the greedy
    /// token when the screened LM head finds it (no logits computed); otherwise leaves the logits in the row buffer and
    /// returns null.</summary>
    private int? Step(int token, bool argMax)
    {
        using var scope = torch.NewDisposeScope();
        return ArgMaxOrLogits(Model.Forward([token], Cache), argMax);
    }

    /// <summary>The most verified rows whose greedy tokens come from the screened head: two passes over the int8 copy.
    /// Timed in the generation loop (demo target, 5-row verifications of prompt lookup, medians): 0.83 ms for the two
    /// passes against 0.98 ms for the packed full head writing 5 × 50k logits (means 1.05 and 1.40), and the walk then
    /// needs no logits; beyond eight rows the two measured alike.</summary>
    internal const int ScreenedVerifyRows = 2 * ScreenedHead.PassRows;

    /// <summary>The greedy token of each of a small verified tree's rows through the screened head (a greedy request
    /// without penalties, at most <see cref="ScreenedVerifyRows"/> rows), else null.</summary>
    private int[]? ScreenedTokens(Tensor hidden, int rows, LogitsSampler sampler)
    {
        if (!ScreenedArgMax || !sampler.Parameters.IsArgMax || rows > ScreenedVerifyRows)
        {
            return null;
        }

        var tokens = new int[rows];
        return Model.TryArgMax(hidden, tokens) ? tokens : null;
    }

    /// <summary>The greedy token of one hidden row through the screened head (<paramref name="argMax"/> and a screen
    /// that decides), else null with the row's logits in the row buffer.</summary>
    private int? ArgMaxOrLogits(Tensor hidden, bool argMax)
    {
        if (argMax && ScreenedArgMax && Model.ArgMax(hidden) is int token)
        {
            return token;
        }

        Model.Logits(hidden, _row);
        return null;
    }

    /// <summary>Runs one decode step for the given token(s) and leaves the last row's logits in the row buffer.</summary>
    public ReadOnlySpan<float> Step(long[] tokens)
    {
        using var scope = torch.NewDisposeScope();
        Tensor hidden = Model.Forward(tokens, Cache);
        Model.Logits(hidden.narrow(0, tokens.Length - 1, 1), _row);
        return _row;
    }

    /// <summary>
    /// Picks the tree for this device: times the target's verify forward for several tree sizes and a draft step over the
    /// frontier, then maximises prior_τ(T) / (depth · draft step + verify(T)). The prior is a concave acceptance curve (τ
    /// grows slowly with tree size, EAGLE-2's observation); on a GPU, where verify cost is nearly flat, it picks large trees,
    /// on a small CPU small ones. Top-1 chains (depth D, one candidate per level, D + 1 nodes) compete too, priced with a
    /// one-row draft step: where every verified row and every frontier row costs arithmetic (a model that sits in the
    /// CPU's cache), they win — on the demo pair chains of depth 2–4 measured 1.2–1.4× with every step a cycle, against
    /// 0.74–0.8× for 16-node trees. Returns the chosen shape and the measured costs (ms).
    /// </summary>
    /// <param name="depth">The deepest tree to consider.</param>
    /// <param name="topK">The widest expansion to consider.</param>
    /// <param name="routerTopK">The router's group count per draft step (0: full head, -1: the router's own).</param>
    /// <param name="timeEverySize">Time every candidate size in every round (a benchmark's cost curve); by default a large
    /// target's sizes that cannot win keep their warm-up time, which on a GPU includes first-call kernel selection.</param>
    public (TreeShape Shape, IReadOnlyDictionary<int, double> VerifyMs, double DraftStepMs) TuneTree(int depth, int topK, int routerTopK, bool timeEverySize = false)
    {
        if (Drafter is null)
        {
            throw new InvalidOperationException("No drafter is loaded.");
        }

        // Relative τ: trees by node count (16 nodes = 1), and top-1 chains by depth, measured against the 16-node tree
        // on the demo pair (τ 1.78 / 1.92 / 1.90 at depth 2 / 3 / 4 against 2.55).
        var prior = new SortedDictionary<int, double> { [4] = 0.70, [8] = 0.85, [12] = 0.93, [16] = 1.0, [24] = 1.08, [32] = 1.14, [48] = 1.22, [64] = 1.28 };
        var chainPrior = new Dictionary<int, double> { [2] = 0.70, [3] = 0.75, [4] = 0.75 };
        int maxNodes = TreeShape.MaxNodes(depth, topK);
        if (maxNodes < prior.Keys.First())
        {
            prior[maxNodes] = 1;   // a shape smaller than every candidate (e.g. a top-1 chain): the only size there is
        }

        int[] chains = topK > 1 ? chainPrior.Keys.Where(d => d <= depth).ToArray() : [];
        int context = Math.Min(128, ContextLength / 2);
        var verify = new Dictionary<int, double>();
        double draftStep, chainStep = 0;
        using (torch.inference_mode())
        {
            ResetCache();
            long[] prefix = Enumerable.Range(0, context).Select(i => (long)(i % Model.Config.VocabSize)).ToArray();
            using (torch.NewDisposeScope())
            {
                Model.Forward(prefix, Cache);
            }

            draftStep = MeasureDraftStep(topK, routerTopK);
            if (chains.Length > 0)
            {
                chainStep = MeasureDraftStep(1, routerTopK);
            }

            // The sizes are timed interleaved (one forward of each size in turn, medians of up to 7 rounds): timed one
            // size after another, a slow phase of the machine once made 32 nodes look as cheap as 16 and cost a run 0.9x.
            int[] sizes = prior.Keys.Where(t => t <= maxNodes).Concat(chains.Select(d => d + 1)).Distinct()
                .Where(t => context + t < ContextLength).Order().ToArray();
            var times = sizes.ToDictionary(t => t, _ => new List<double>());
            var warm = new Dictionary<int, double>();
            int[] timed = sizes;
            int rounds = 7;
            for (int round = -1; round < rounds; round++)
            {
                long roundStart = Stopwatch.GetTimestamp();
                foreach (int t in timed)
                {
                    long[] ids = prefix.Take(t).ToArray();
                    long[] positions = Enumerable.Range(context, t).Select(i => (long)i).ToArray();
                    long begin = Stopwatch.GetTimestamp();
                    using (torch.NewDisposeScope())
                    {
                        Cache.Length = context;
                        Model.Logits(Model.Forward(ids, Cache, positions, torch.ones(t, t, ScalarType.Bool).tril()), TreeLogits(t));
                    }

                    double ms = Stopwatch.GetElapsedTime(begin).TotalMilliseconds;
                    if (round >= 0)
                    {
                        times[t].Add(ms);
                    }
                    else
                    {
                        warm[t] = ms;   // round −1 warms up
                    }
                }

                if (round == -1)
                {
                    double warmUp = Stopwatch.GetElapsedTime(roundStart).TotalMilliseconds;
                    if (warmUp > TuneBudgetMs && !timeEverySize)
                    {
                        // A large target: sizes that cannot win are not timed again; their warm-up time stands for them.
                        var roles = prior.Keys.Where(warm.ContainsKey).Select(t => (t, prior[t], depth * draftStep))
                            .Concat(chains.Where(d => warm.ContainsKey(d + 1)).Select(d => (d + 1, chainPrior[d], d * chainStep)));
                        HashSet<int> contenders = Contenders(warm, roles);
                        timed = sizes.Where(contenders.Contains).ToArray();
                        warmUp = timed.Sum(t => warm[t]);
                    }

                    rounds = TuneRounds(warmUp);
                }
            }

            foreach (int t in sizes)
            {
                verify[t] = times[t].Count > 0 ? times[t].Order().ElementAt(times[t].Count / 2) : warm[t];
            }

            ResetCache();
        }

        var candidates = prior.Keys.Where(verify.ContainsKey)
            .Select(t => (Shape: new TreeShape(depth, topK, t, routerTopK), Rate: prior[t] / (depth * draftStep + verify[t])))
            .Concat(chains.Where(d => verify.ContainsKey(d + 1))
                .Select(d => (Shape: new TreeShape(d, 1, d + 1, routerTopK), Rate: chainPrior[d] / (d * chainStep + verify[d + 1]))));
        TreeShape best = candidates.OrderByDescending(c => c.Rate).ThenBy(c => c.Shape.TotalTokens).First().Shape;
        _verifyCosts = verify;   // the prior of the next run's depth controller
        return (best, verify, draftStep);
    }

    /// <summary>How many timed rounds <see cref="TuneTree"/> runs after its warm-up round took <paramref name="warmUpMs"/>:
    /// 7 while they fit <see cref="TuneBudgetMs"/> (the demo pair's round takes ≈ 15 ms), down to 3 for a large target
    /// (Llama-3.2-1B's shape on two vCPUs: ≈ 3.3 s a round, 27 s of tuning at load with 7), whose forwards of 100 ms and
    /// more vary far less than a 1 ms one.</summary>
    internal static int TuneRounds(double warmUpMs) => (int)Math.Clamp(TuneBudgetMs / Math.Max(warmUpMs, 1e-3), 3, 7);

    /// <summary>The time the tuner's timed rounds aim to fit (ms).</summary>
    internal const double TuneBudgetMs = 2000;

    /// <summary>
    /// The tree sizes worth timing again after <see cref="TuneTree"/>'s warm-up round, from each candidate's role (its size,
    /// prior relative τ and drafting cost in ms) and the warm-up's verify times: a size stays while its rate at 0.8× its
    /// warm-up time reaches the best rate at 1.25× — a margin wider than the warm-up's error on a target whose forwards
    /// take 100 ms and more (the only case in which the tuner prunes: a warm-up round over <see cref="TuneBudgetMs"/>).
    /// At Llama-3.2-1B's shape on two vCPUs this keeps the chains of 3–5 nodes and drops every tree of 8–64 nodes.
    /// </summary>
    internal static HashSet<int> Contenders(IReadOnlyDictionary<int, double> warm, IEnumerable<(int Size, double Prior, double DraftMs)> roles)
    {
        var list = roles.ToList();
        double best = list.Max(r => r.Prior / (r.DraftMs + (1.25 * warm[r.Size])));
        return list.Where(r => r.Prior / (r.DraftMs + (0.8 * warm[r.Size])) >= best).Select(r => r.Size).ToHashSet();
    }

    /// <summary>The value at <paramref name="x"/> of the piecewise-linear curve through <paramref name="points"/>,
    /// extended beyond its ends along its end segments (never below half its nearest point).</summary>
    internal static double Interpolate(IReadOnlyDictionary<int, double> points, int x)
    {
        if (points.TryGetValue(x, out double exact))
        {
            return exact;
        }

        if (points.Count == 1)
        {
            return points.Values.First();
        }

        int[] keys = points.Keys.Order().ToArray();
        int i = Math.Clamp(Array.FindIndex(keys, k => k > x), 1, keys.Length - 1);   // the segment [keys[i − 1], keys[i]]
        int a = keys[i - 1], b = keys[i];
        double y = points[a] + ((points[b] - points[a]) * (x - a) / (b - a));
        return Math.Max(y, 0.5 * points[x < a ? a : b]);
    }

    /// <summary>Median time (ms) of one draft step over <paramref name="rows"/> tree nodes: drafter forward, head (routed
    /// or full), the top-<paramref name="rows"/> candidates of each row.</summary>
    public double MeasureDraftStep(int rows, int routerTopK)
    {
        TreeDrafter drafter = Drafter ?? throw new InvalidOperationException("No drafter is loaded.");
        long d = Model.Config.HiddenSize;
        long[] tokens = Enumerable.Range(0, rows).Select(i => (long)(i % Model.Config.VocabSize)).ToArray();
        using var inference = torch.inference_mode();
        double ms = MedianMs(() =>
        {
            using var scope = torch.NewDisposeScope();
            drafter.Truncate(0);
            Tensor h = drafter.Model.Forward(tokens, torch.zeros(rows, d, device: Model.Device), drafter.Cache);
            drafter.TopKPerRow(h, rows, routerTopK);
        }, 9);
        drafter.Truncate(0);
        return ms;
    }

    private static double MedianMs(Action action, int repeats = 5)
    {
        action();
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        Array.Sort(times);
        return times[repeats / 2];
    }

    /// <summary>Runs one forward (allocators, kernels, page-in of the weights) so the first request is not the slow one.</summary>
    public void WarmUp()
    {
        using (var inference = torch.inference_mode())
        {
            Step([EosTokenIds.Count > 0 ? EosTokenIds[0] : 0]);

            // A block of rows too: a first prefill otherwise runs the per-row code (attention's softmax helpers and the
            // like) unoptimised until tiering promotes it — 3–6× slower for its first hundreds of milliseconds (measured:
            // 583 vs 90 ms for the first 256-token chunk of the demo model).
            long[] block = Enumerable.Range(0, Math.Min(16, Math.Max(1, ContextLength / 4))).Select(t => (long)(t % Model.Config.VocabSize)).ToArray();
            for (int i = 0; i < 3; i++)
            {
                ResetCache();
                Step(block);
            }
        }

        ResetCache();
        if (Drafter is not null)
        {
            // A few speculative steps compile the drafting and verification code (the kernels are AggressiveOptimization:
            // compiled fully at their first call, tens of milliseconds that the first cycle of a request would otherwise
            // pay, and that the adaptive depth's cost estimates would start from).
            var request = new GenerationRequest(Tokenizer.Encode("The quick brown fox jumps over the lazy dog. The quick brown"),
                SamplingParameters.Greedy, 12, []);
            Generate(request, null, CancellationToken.None);
            ResetCache();
            _depthController = null;
        }
    }

    /// <summary>Forgets the cached sequence.</summary>
    public void ResetCache()
    {
        _cachedTokens.Clear();
        Cache.Length = 0;
        Drafter?.Truncate(0);
    }

    public void Dispose()
    {
        Batch?.Dispose();
        CoralTelemetry.UntrackCache(this);
        Drafter?.Model.Dispose();
        Drafter?.Dispose();
        Cache.Dispose();
        Model.Dispose();
        Gate.Dispose();
    }

    /// <summary>The buffer of a verified tree's logits, grown to <paramref name="rows"/> rows when needed.</summary>
    private float[] TreeLogits(int rows)
    {
        int length = rows * Model.Config.VocabSize;
        if (_treeLogits.Length < length)
        {
            _treeLogits = new float[length];
        }

        return _treeLogits;
    }
}

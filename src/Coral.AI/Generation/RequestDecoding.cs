using System.Diagnostics;

namespace Coral.AI;

/// <summary>
/// One request's decoding state from its admission to its result: the sampler, the emitter, the constraint's state and
/// the counters. It outlives a run of the engine's decode loop: continuous batching hands a lone request to
/// <see cref="InferenceEngine.Run"/> (drafter and tree) and takes it back into the batch when others arrive, and the
/// same sampler and emitter go on either way.
/// </summary>
internal sealed class RequestDecoding
{
    private OutputConstraint.State? _constraint;

    public RequestDecoding(GenerationRequest request, InferenceEngine engine, Action<int, string>? onText)
    {
        Request = request;
        Clock = Stopwatch.StartNew();
        Sampler = new LogitsSampler(request.Sampling, engine.Model.Config.VocabSize, request.PromptIds);
        Emitter = new TokenEmitter(request, engine.Tokenizer, engine.EosTokenIds, onText, Clock);
        _constraint = request.Constraint?.Start();
    }

    public GenerationRequest Request { get; }

    /// <summary>Runs from the request's admission.</summary>
    public Stopwatch Clock { get; }

    public LogitsSampler Sampler { get; }

    public TokenEmitter Emitter { get; }

    /// <summary>The constraint's state (null: free text); by reference for <see cref="InferenceEngine.Next"/>.</summary>
    public ref OutputConstraint.State? Constraint => ref _constraint;

    /// <summary>Gets or sets the last emitted token, not yet in the cache (null until the first token).</summary>
    public int? Last { get; set; }

    /// <summary>Gets or sets whether the engine's runs draft (decided once, at the first run: a drafter, a speculative
    /// unconstrained request, and a drafter not sitting this kind of request out).</summary>
    public bool? Drafting { get; set; }

    /// <summary>Gets or sets the prompt tokens whose K/V came from the cache.</summary>
    public int Cached { get; set; }

    public TimeSpan PrefillTime { get; set; }

    /// <summary>Gets or sets the target forwards run for the request (prefill chunks count as one per run).</summary>
    public int Forwards { get; set; }

    /// <summary>Gets or sets the speculative counters of every part so far (null: plain decoding only).</summary>
    public SpeculativeStats? Stats { get; set; }

    public GenerationResult Result() => new(Emitter.Ids, Emitter.Text, Request.PromptIds.Count, Cached, Emitter.Finish, PrefillTime,
        Clock.Elapsed - PrefillTime, Emitter.TimeToFirstToken, Forwards, Stats);
}

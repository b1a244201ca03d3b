using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// A loaded model with its tokenizer and one preallocated KV cache, and the decode loop. Generation runs synchronously
/// on the caller's thread (TorchSharp dispose scopes are thread-static); callers serialise requests through
/// <see cref="Gate"/>. The cache keeps the last sequence so that a request sharing its prefix skips that prefill.
/// </summary>
internal sealed class InferenceEngine : IDisposable
{
    private readonly List<int> _cachedTokens = [];
    private readonly float[] _row;

    public InferenceEngine(TransformerModel model, HfTokenizer tokenizer, int contextLength, string modelId, int prefillChunk = 256)
    {
        Model = model;
        Tokenizer = tokenizer;
        ModelId = modelId;
        PrefillChunk = prefillChunk;
        Cache = model.CreateCache(contextLength);
        var eos = new List<int>(model.Config.EosTokenIds);
        eos.AddRange(tokenizer.Config.GenerationEosTokenIds);
        if (tokenizer.EosTokenId is int e)
        {
            eos.Add(e);
        }

        EosTokenIds = eos.Distinct().ToArray();
        _row = new float[model.Config.VocabSize];
    }

    public TransformerModel Model { get; }

    public HfTokenizer Tokenizer { get; }

    public KvCache Cache { get; }

    public string ModelId { get; }

    public int PrefillChunk { get; }

    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>Gets the usable context (prompt + output) in tokens.</summary>
    public int ContextLength => Cache.Capacity;

    /// <summary>Gets the lock that serialises requests over the single cache.</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);

    public static InferenceEngine Load(string folder, Device device, ScalarType dtype, int contextLength, string? modelId = null)
    {
        HfTokenizer tokenizer = HfTokenizer.Load(folder);
        TransformerModel model = TransformerModel.Load(folder, device, dtype, contextLength);
        if (tokenizer.VocabSize > model.Config.VocabSize)
        {
            model.Dispose();
            throw new CoralModelException(Path.Combine(folder, "tokenizer.json"), "model.vocab",
                $"the tokenizer has {tokenizer.VocabSize} ids but config.json vocab_size is {model.Config.VocabSize}.");
        }

        return new InferenceEngine(model, tokenizer, contextLength, modelId ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder))));
    }

    /// <summary>
    /// Generates a continuation of <paramref name="request"/>'s prompt. <paramref name="onText"/> receives each token id
    /// and the text it completed (stop sequences already held back). Must run on one thread from start to end.
    /// </summary>
    public GenerationResult Generate(GenerationRequest request, Action<int, string>? onText, CancellationToken cancellationToken)
    {
        IReadOnlyList<int> prompt = request.PromptIds;
        if (prompt.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", nameof(request));
        }

        if (prompt.Count >= ContextLength)
        {
            throw new PromptTooLongException(prompt.Count, ContextLength);
        }

        using var inference = torch.inference_mode();
        var sampler = new LogitsSampler(request.Sampling, Model.Config.VocabSize, prompt);
        var detok = new StreamingDetokenizer(Tokenizer);
        var stops = new StopSequenceMatcher(request.StopSequences);
        var text = new StringBuilder();
        var ids = new List<int>();
        var clock = Stopwatch.StartNew();

        int cached = Prefill(prompt, cancellationToken);
        TimeSpan prefill = clock.Elapsed;
        TimeSpan firstToken = TimeSpan.Zero;
        int forwards = 1;
        GenerationFinish finish = GenerationFinish.Length;
        bool stopped = false;
        while (true)
        {
            int token = sampler.Sample(_row);
            sampler.Accept(token);
            ids.Add(token);
            if (ids.Count == 1)
            {
                firstToken = clock.Elapsed;
            }

            if (EosTokenIds.Contains(token) || request.StopTokenIds?.Contains(token) == true)
            {
                finish = GenerationFinish.Stop;
                break;
            }

            (string emit, stopped) = stops.Push(detok.Push(token));
            text.Append(emit);
            onText?.Invoke(token, emit);
            if (stopped)
            {
                finish = GenerationFinish.Stop;
                break;
            }

            if (ids.Count >= request.MaxNewTokens || Cache.Length + 1 >= ContextLength)
            {
                break;
            }

            cancellationToken.ThrowIfCancellationRequested();
            Step([token]);
            _cachedTokens.Add(token);
            forwards++;
        }

        if (!stopped)
        {
            string rest = stops.Push(detok.Flush()).Emit + stops.Flush();
            if (rest.Length > 0)
            {
                text.Append(rest);
                onText?.Invoke(-1, rest);
            }
        }

        return new GenerationResult(ids, text.ToString(), prompt.Count, cached, finish, prefill, clock.Elapsed - prefill,
            firstToken, forwards, null);
    }

    /// <summary>
    /// Brings the cache to hold the prompt, reusing the longest prefix shared with the cached sequence, and leaves the
    /// logits of the last prompt token in the row buffer. Returns the number of prompt tokens reused.
    /// </summary>
    public int Prefill(IReadOnlyList<int> prompt, CancellationToken cancellationToken)
    {
        int common = 0;
        int limit = Math.Min(Math.Min(_cachedTokens.Count, Cache.Length), prompt.Count - 1);
        while (common < limit && _cachedTokens[common] == prompt[common])
        {
            common++;
        }

        Cache.Length = common;
        _cachedTokens.RemoveRange(common, _cachedTokens.Count - common);
        for (int start = common; start < prompt.Count; start += PrefillChunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(PrefillChunk, prompt.Count - start);
            long[] chunk = new long[n];
            for (int i = 0; i < n; i++)
            {
                chunk[i] = prompt[start + i];
            }

            bool last = start + n == prompt.Count;
            try
            {
                RunAndReadLastRow(chunk, readLogits: last);
            }
            catch
            {
                _cachedTokens.Clear();
                Cache.Length = 0;
                throw;
            }

            for (int i = 0; i < n; i++)
            {
                _cachedTokens.Add(prompt[start + i]);
            }
        }

        return common;
    }

    /// <summary>Runs one decode step for the given token(s) and leaves the last row's logits in the row buffer.</summary>
    public ReadOnlySpan<float> Step(long[] tokens)
    {
        RunAndReadLastRow(tokens, readLogits: true);
        return _row;
    }

    /// <summary>Gets the logits row of the last step.</summary>
    public ReadOnlySpan<float> LastLogits => _row;

    /// <summary>Runs one forward (allocators, kernels, page-in of the weights) so the first request is not the slow one.</summary>
    public void WarmUp()
    {
        using var inference = torch.inference_mode();
        RunAndReadLastRow([EosTokenIds.Count > 0 ? EosTokenIds[0] : 0], readLogits: true);
        ResetCache();
    }

    /// <summary>Forgets the cached sequence.</summary>
    public void ResetCache()
    {
        _cachedTokens.Clear();
        Cache.Length = 0;
    }

    public void Dispose()
    {
        Cache.Dispose();
        Model.Dispose();
        Gate.Dispose();
    }

    private void RunAndReadLastRow(long[] tokens, bool readLogits)
    {
        using var scope = torch.NewDisposeScope();
        Tensor hidden = Model.Forward(tokens, Cache);
        if (readLogits)
        {
            Tensor logits = Model.Logits(hidden.narrow(0, tokens.Length - 1, 1));
            CopyRow(logits, _row);
        }
    }

    /// <summary>Copies a [1, V] f32 tensor into a managed buffer.</summary>
    internal static void CopyRow(Tensor logits, float[] destination)
    {
        Tensor host = logits.device_type == DeviceType.CPU ? logits.contiguous() : logits.cpu().contiguous();
        MemoryMarshal.Cast<byte, float>(host.bytes).CopyTo(destination);
    }
}

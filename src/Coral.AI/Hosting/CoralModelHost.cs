using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;

namespace Coral.AI;

/// <summary>
/// Owns a loaded model (weights, tokenizer, KV cache) and shares it between chat clients. Loads once, in the background
/// when started by the hosted warm-up service, or on first use. Thread-safe.
/// </summary>
/// <remarks>Chat clients created over a host never dispose it; dispose the host (or let the DI container do it).</remarks>
public sealed class CoralModelHost : IDisposable
{
    private readonly object _sync = new();
    private readonly CoralChatClientOptions _options;
    private readonly ILogger _logger;
    private Task<InferenceEngine>? _loading;
    private InferenceEngine? _engine;
    private bool _disposed;

    /// <summary>Initializes a new instance of the <see cref="CoralModelHost"/> class. Nothing is loaded yet.</summary>
    /// <param name="options">The model options; copied, so later changes have no effect.</param>
    /// <param name="logger">A logger for load, device and dtype choices.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    public CoralModelHost(CoralChatClientOptions options, ILogger<CoralModelHost>? logger = null)
    {
        _ = Throw.IfNull(options);
        string? error = CoralChatClientOptionsValidator.Check(options);
        if (error is not null)
        {
            throw new ArgumentException(error, nameof(options));
        }

        _options = Copy(options);
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        ModelId = options.ModelId ?? GgufImporter.ModelId(options.ModelPath)
            ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.ModelPath!)));
        ModelUri = OllamaStore.IsName(options.ModelPath) ? new Uri("ollama:" + Uri.EscapeDataString(OllamaStore.ModelId(options.ModelPath!)))
            : new Uri(Path.GetFullPath(options.ModelPath!));
    }

    /// <summary>Gets the model id reported in responses.</summary>
    public string ModelId { get; }

    /// <summary>Gets the file URI of the model folder.</summary>
    public Uri ModelUri { get; }

    /// <summary>Gets the current state.</summary>
    public CoralModelState State
    {
        get
        {
            Task? t = _loading;
            return t is null ? CoralModelState.NotStarted
                : !t.IsCompleted ? CoralModelState.Loading
                : t.IsCompletedSuccessfully ? CoralModelState.Ready
                : CoralModelState.Failed;
        }
    }

    /// <summary>Gets the load failure, if loading failed.</summary>
    public Exception? Failure => _loading is { IsFaulted: true } t ? t.Exception!.InnerException ?? t.Exception : null;

    /// <summary>Gets the options the host was created with (a copy).</summary>
    public CoralChatClientOptions Options => Copy(_options);

    /// <summary>Loads synchronously and returns a ready host.</summary>
    /// <param name="options">The model options.</param>
    /// <param name="logger">An optional logger.</param>
    /// <returns>The loaded host.</returns>
    public static CoralModelHost Load(CoralChatClientOptions options, ILogger<CoralModelHost>? logger = null)
    {
        var host = new CoralModelHost(options, logger);
        try
        {
            host.WaitUntilReadyAsync(CancellationToken.None).GetAwaiter().GetResult();
            return host;
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    /// <summary>Starts loading in the background if it has not started.</summary>
    /// <returns>A task that completes when loading ends (faulted on failure).</returns>
    public Task StartLoading()
    {
        lock (_sync)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _loading ??= Task.Factory.StartNew(LoadEngine, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        }
    }

    /// <summary>Waits until the model is ready, starting the load if needed.</summary>
    /// <param name="cancellationToken">Cancels the wait (not the load).</param>
    /// <returns>A task that completes when the model is ready.</returns>
    public async Task WaitUntilReadyAsync(CancellationToken cancellationToken)
    {
        await StartLoading().WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Gets the sampling the model's authors recommend (generation_config.json that samples, or an Ollama
    /// model's params), once loaded; requests fall back to it where neither they nor the options say otherwise.</summary>
    internal ModelSamplingDefaults? SamplingDefaults { get; private set; }

    /// <summary>Gets the engine when it has loaded, or null (nothing is started or awaited).</summary>
    internal InferenceEngine? LoadedEngine => !_disposed && _loading is { IsCompletedSuccessfully: true } t ? t.Result : null;

    internal async Task<InferenceEngine> GetEngineAsync(CancellationToken cancellationToken)
    {
        InferenceEngine engine = await ((Task<InferenceEngine>)StartLoading()).WaitAsync(cancellationToken).ConfigureAwait(false);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return engine;
    }

    /// <summary>Releases the weights and the KV cache once no request uses them.</summary>
    public void Dispose()
    {
        Task<InferenceEngine>? loading;
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            loading = _loading;
        }

        if (loading is { IsCompletedSuccessfully: true })
        {
            InferenceEngine engine = loading.Result;
            engine.Gate.Wait();
            engine.Dispose();
        }
    }

    private InferenceEngine LoadEngine()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            if (_options.Threads is int threads)
            {
                torch.set_num_threads(threads);
                CpuParallel.Threads = threads;
            }

            var device = TorchDevices.Resolve(_options.Device);
            bool speculative = _options.DraftModelPath is not null;
            string folder = GgufImporter.Resolve(_options.ModelPath!);   // a GGUF file: its imported folder
            var dtype = TorchDevices.ResolveDType(_options.DType, device, ModelConfig.StoredDType(Path.Combine(folder, "config.json")));
            var headType = TorchDevices.ResolveHeadType(dtype, device, speculative);
            string? quantizationName = _options.Quantization
                ?? (device.type == DeviceType.CPU && dtype == torch.ScalarType.Float32 ? GgufImporter.SuggestedQuantization(folder) : null);
            _ = TorchDevices.TryParseQuantization(quantizationName, out WeightQuantization quantization);
            _ = TorchDevices.TryParseKvCacheType(_options.KvCacheType, out torch.ScalarType kvCacheType);
            _logger.LogInformation("Coral: loading {ModelPath} on {Device} as {DType} (weights {Quantization}, LM head {HeadType}, libtorch {Backend})",
                _options.ModelPath, _options.Device, dtype, quantization == WeightQuantization.None ? "as stored" : quantization.ToString(), headType ?? dtype,
                torch.cuda.is_available() ? "with CUDA" : "CPU");
            _engine = InferenceEngine.Load(folder, device, dtype, _options.ContextLength, ModelId, _options.DraftModelPath, headType,
                quantization: quantization, kvCacheType: kvCacheType);
            SamplingDefaults = (OllamaStore.IsName(_options.ModelPath) ? OllamaStore.ReadParams(_options.ModelPath!) : null)
                ?? _engine.Tokenizer.Config.SamplingDefaults;
            if (SamplingDefaults is { } s)
            {
                _logger.LogInformation("Coral: the model's sampling defaults from {Source}: temperature {Temperature}, top-p {TopP}, top-k {TopK}, repetition penalty {Penalty}, {Stops} stop sequences",
                    s.Source, s.Temperature, s.TopP, s.TopK, s.RepetitionPenalty, s.StopSequences.Count);
            }
            if (TorchDevices.YieldTorchThreads(_engine.Model))
            {
                // Measured: with libtorch's OpenMP workers spinning beside the kernels' helpers, a draft-and-verify cycle
                // ran 2.9× slower.
                _logger.LogInformation("Coral: packed CPU kernels on {Threads} threads; libtorch set to one thread", CpuParallel.Threads);
            }

            if (_engine.Model.UsesInt8Activations)
            {
                _logger.LogInformation("Coral: quantized layers multiply int8 activations (AVX-VNNI, llama.cpp's arithmetic; CORAL_INT8_ACTIVATIONS=0 keeps f32)");
            }

            _engine.WarmUp();
            if (_engine.Drafter is not null)
            {
                int routerTopK = _options.RouterTopK ?? DefaultRouterTopK(_engine.Model.Device);
                LmHeadRouter? router = _engine.Drafter.Model.Router;
                if (routerTopK > 0 && router is null)
                {
                    _logger.LogWarning("Coral: RouterTopK {RouterTopK} is ignored: the drafter {Drafter} has no router ({File}); drafting uses the full LM head",
                        routerTopK, _options.DraftModelPath, LmHeadRouter.FileName);
                    routerTopK = -1;
                }
                else if (router is not null && routerTopK > router.Groups)
                {
                    _logger.LogWarning("Coral: RouterTopK {RouterTopK} exceeds the router's {Groups} groups; using {Groups} (the full LM head, routed)",
                        routerTopK, router.Groups, router.Groups);
                    routerTopK = router.Groups;
                }

                if (_options.TreeTotalTokens is int total)
                {
                    _engine.Tree = new TreeShape(_options.TreeDepth, _options.TreeTopK, total, routerTopK);
                }
                else
                {
                    var (shape, verify, draftMs) = _engine.TuneTree(_options.TreeDepth, _options.TreeTopK, routerTopK);
                    _engine.Tree = shape;
                    _logger.LogInformation("Coral: tree auto-tuned to {Total} nodes (depth {Depth}, top-k {TopK}); draft step {Draft:F2} ms, verify ms by size: {Verify}",
                        shape.TotalTokens, shape.Depth, shape.TopK, draftMs, string.Join(", ", verify.Select(kv => $"{kv.Key}: {kv.Value:F2}")));
                }

                _engine.Tree.Validate();
                _engine.AdaptiveDepth = _options.AdaptiveTreeDepth;
            }

            _engine.PromptLookupTokens = _options.PromptLookupTokens;   // without a drafter: packed (bf16-stored) weights only
            if (_options.ParallelRequests > 1)
            {
                _engine.EnableBatching(_options.ParallelRequests);
                _logger.LogInformation("Coral: continuous batching over {Slots} slots ({Path}; batched requests decode with plain steps{Lone})",
                    _options.ParallelRequests, _engine.Model.UsesPackedWeights ? "one forward for all, each request's tokens as alone"
                        : _engine.Model.UsesCpuKernels ? "one forward for all" : "one forward per request per step",
                    _engine.Drafter is null ? "" : ", a request alone drafts");
            }

            _logger.LogInformation("Coral: {ModelId} ready in {Ms} ms ({Arch}, {Layers} layers, d={Hidden}, vocab {Vocab}, context {Context}, KV cache {KvMiB:F1} MiB)",
                ModelId, clock.ElapsedMilliseconds, _engine.Model.Config.Architecture, _engine.Model.Config.NumLayers,
                _engine.Model.Config.HiddenSize, _engine.Model.Config.VocabSize, _engine.ContextLength, _engine.Cache.Bytes / 1048576.0);
            return _engine;
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "Coral: loading {ModelPath} failed", _options.ModelPath);
            throw;
        }
    }

    /// <summary>
    /// The router's top-k when <see cref="CoralChatClientOptions.RouterTopK"/> is unset: the checkpoint's own (−1) on CPU,
    /// where the full LM head bounds a draft step (the demo pair: 0.36 ms full, 0.14 routed); 0 (the full head) on a GPU,
    /// where launches bound it and routing saved nothing on an H200 (V = 128k: 1.2–1.5 ms full, 1.5–1.6 routed; docs/gpu.md)
    /// while costing a little acceptance.
    /// </summary>
    internal static int DefaultRouterTopK(torch.Device device) => device.type == DeviceType.CPU ? -1 : 0;

    /// <summary>A copy of every option (the host keeps its own, so later changes to the caller's object change nothing).</summary>
    internal static CoralChatClientOptions Copy(CoralChatClientOptions o) => o.Clone();
}

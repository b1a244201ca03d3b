using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// An <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> over a Coral model: each text's final hidden states (after the
/// model's last norm), pooled and L2-normalised — the form of decoder embedding models such as Qwen3-Embedding,
/// gte-Qwen and e5-mistral (last-token pooling), which load as their Qwen/Llama/Mistral architectures.
/// </summary>
/// <remarks>
/// <para>
/// Texts are tokenized with the tokenizer's special tokens (its post-processor adds BOS or, for the embedding models
/// named, the end-of-text token whose state is pooled) and run through the model one at a time, in chunks of the
/// engine's prefill size, each with a KV cache of its own: the chat client's conversation cache is untouched, and texts
/// embed to the same vectors alone or in a batch. Requests share the model host's queue with chat requests (one at a
/// time); cancellation is checked between chunks. Telemetry: a <c>coral.embed</c> span on <see cref="CoralTelemetry"/>'s
/// source, and the queue depth.
/// </para>
/// <para>
/// <see cref="EmbeddingGenerationOptions"/>: <c>Dimensions</c> keeps the first N values and re-normalises (the
/// Matryoshka truncation the Qwen3 embedding models are trained for); <c>ModelId</c> must be this model's id or null;
/// AdditionalProperties <c>pooling</c> (<c>last</c>, the default, or <c>mean</c>) and <c>normalize</c> (default true).
/// Usage reports the input tokens.
/// </para>
/// </remarks>
public sealed class CoralEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly CoralModelHost _host;
    private readonly bool _ownsHost;

    /// <summary>Initializes a new instance of the <see cref="CoralEmbeddingGenerator"/> class that owns its model host.</summary>
    /// <param name="options">The model options. The model loads on first use.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is <see langword="null"/>.</exception>
    public CoralEmbeddingGenerator(CoralChatClientOptions options)
        : this(new CoralModelHost(Throw.IfNull(options)), ownsHost: true)
    {
    }

    /// <summary>Initializes a new instance of the <see cref="CoralEmbeddingGenerator"/> class over a shared model host
    /// (for example the one a <see cref="CoralChatClient"/> uses).</summary>
    /// <param name="host">The model host; it is not disposed with the generator.</param>
    /// <exception cref="ArgumentNullException"><paramref name="host"/> is <see langword="null"/>.</exception>
    public CoralEmbeddingGenerator(CoralModelHost host)
        : this(Throw.IfNull(host), ownsHost: false)
    {
    }

    private CoralEmbeddingGenerator(CoralModelHost host, bool ownsHost) => (_host, _ownsHost) = (host, ownsHost);

    /// <summary>Gets the model host serving this generator.</summary>
    public CoralModelHost Host => _host;

    /// <inheritdoc />
    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(
        IEnumerable<string> values, EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        string[] texts = Throw.IfNull(values).ToArray();
        if (options?.ModelId is string requested && requested != _host.ModelId)
        {
            throw new InvalidOperationException($"Unknown model id '{requested}': this generator serves '{_host.ModelId}'.");
        }

        bool mean = Read(options, "pooling") switch
        {
            null or "last" => false,
            "mean" => true,
            string other => throw new ArgumentException($"EmbeddingGenerationOptions.AdditionalProperties pooling must be 'last' or 'mean' (got '{other}').", nameof(options)),
        };
        bool normalize = Read(options, "normalize") switch
        {
            null or "true" => true,
            "false" => false,
            string other => throw new ArgumentException($"EmbeddingGenerationOptions.AdditionalProperties normalize must be true or false (got '{other}').", nameof(options)),
        };
        InferenceEngine engine = await _host.GetEngineAsync(cancellationToken).ConfigureAwait(false);
        int width = engine.Model.Config.HiddenSize;
        int dimensions = options?.Dimensions ?? width;
        if (dimensions < 1 || dimensions > width)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"EmbeddingGenerationOptions.Dimensions must be between 1 and the model's {width} (got {dimensions}).");
        }

        List<int>[] ids = texts.Select((t, i) => engine.Tokenizer.Encode(t ?? throw new ArgumentNullException(nameof(values), $"Text {i} is null."))).ToArray();
        for (int i = 0; i < ids.Length; i++)
        {
            if (ids[i].Count == 0)
            {
                throw new ArgumentException($"Text {i} is empty and the tokenizer adds no token to embed.", nameof(values));
            }

            if (ids[i].Count > engine.ContextLength)
            {
                throw new PromptTooLongException(ids[i].Count, engine.ContextLength);
            }
        }

        await engine.EnterAsync(cancellationToken).ConfigureAwait(false);

        try
        {
            float[][] vectors = await Task.Factory.StartNew(
                () =>
                {
                    using Activity? activity = CoralTelemetry.Source.StartActivity("coral.embed");
                    activity?.SetTag("gen_ai.request.model", _host.ModelId);
                    activity?.SetTag("gen_ai.usage.input_tokens", ids.Sum(t => t.Count));
                    return ids.Select(t => Embed(engine, t, mean, cancellationToken)).ToArray();
                },
                cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
            DateTimeOffset created = DateTimeOffset.UtcNow;
            var result = new GeneratedEmbeddings<Embedding<float>>(vectors.Select(v => new Embedding<float>(Finish(v, dimensions, normalize))
            {
                ModelId = _host.ModelId,
                CreatedAt = created,
            }));
            long tokens = ids.Sum(t => (long)t.Count);
            result.Usage = new UsageDetails { InputTokenCount = tokens, TotalTokenCount = tokens };
            return result;
        }
        finally
        {
            CoralTelemetry.QueueDepth.Add(-1);
            engine.Gate.Release();
        }
    }

    /// <summary>One text's pooled final hidden state: the last token's row, or the mean of all rows (accumulated in f64).</summary>
    private static float[] Embed(InferenceEngine engine, List<int> ids, bool mean, CancellationToken cancellationToken)
    {
        TransformerModel model = engine.Model;
        int width = model.Config.HiddenSize;
        var sum = new double[width];
        float[] last = [];
        using var inference = torch.inference_mode();
        using KvCache cache = model.CreateCache(ids.Count);
        for (int start = 0; start < ids.Count; start += engine.PrefillChunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            int n = Math.Min(engine.PrefillChunk, ids.Count - start);
            Tensor hidden = model.Forward(ids.Skip(start).Take(n).Select(i => (long)i).ToArray(), cache).to(ScalarType.Float32).cpu();
            float[] rows = hidden.data<float>().ToArray();
            for (int r = 0; mean && r < n; r++)
            {
                for (int k = 0; k < width; k++)
                {
                    sum[k] += rows[(r * width) + k];
                }
            }

            last = rows[((n - 1) * width)..(n * width)];
        }

        return mean ? sum.Select(s => (float)(s / ids.Count)).ToArray() : last;
    }

    /// <summary>The first <paramref name="dimensions"/> values, L2-normalised when asked.</summary>
    private static ReadOnlyMemory<float> Finish(float[] v, int dimensions, bool normalize)
    {
        float[] kept = v[..dimensions];
        if (normalize)
        {
            double norm = Math.Sqrt(kept.Sum(x => (double)x * x));
            if (norm > 0)
            {
                for (int i = 0; i < kept.Length; i++)
                {
                    kept[i] = (float)(kept[i] / norm);
                }
            }
        }

        return kept;
    }

    private static string? Read(EmbeddingGenerationOptions? options, string key) =>
        options?.AdditionalProperties?.TryGetValue(key, out object? value) == true && value is not null
            ? Convert.ToString(value, CultureInfo.InvariantCulture)?.ToLowerInvariant()
            : null;

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        _ = Throw.IfNull(serviceType);
        if (serviceKey is not null)
        {
            return null;
        }

        if (serviceType == typeof(EmbeddingGeneratorMetadata))
        {
            // The width is known once the model has loaded (metadata never starts or awaits a load).
            return new EmbeddingGeneratorMetadata(CoralChatClient.ProviderName, _host.ModelUri, _host.ModelId, _host.LoadedEngine?.Model.Config.HiddenSize);
        }

        return serviceType.IsInstanceOfType(this) ? this : serviceType == typeof(CoralModelHost) ? _host : null;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsHost)
        {
            _host.Dispose();
        }
    }
}

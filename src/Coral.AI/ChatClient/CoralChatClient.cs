using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;

namespace Coral.AI;

/// <summary>
/// An <see cref="IChatClient"/> that runs a Hugging Face Llama-family model in process on TorchSharp.
/// </summary>
/// <remarks>
/// <para>
/// All members are safe for concurrent use. Requests over one model host are queued and run one at a time (the host
/// has a single KV cache, which also keeps the previous conversation so that a follow-up turn skips its shared prefix);
/// concurrent requests never share state. Each request runs on its own thread; cancellation is checked at every token.
/// </para>
/// <para>
/// <see cref="ChatOptions"/> fields honoured: Temperature (0 = greedy), TopP, TopK, Seed, MaxOutputTokens, StopSequences
/// (matched on text across token boundaries; the stop text is not emitted), FrequencyPenalty and PresencePenalty (OpenAI
/// semantics, over the generated tokens), Instructions (a leading system message), ModelId (must be this model's id or
/// null). AdditionalProperties keys: <c>min_p</c>, <c>repetition_penalty</c>. Not yet used: Tools, ToolMode,
/// ResponseFormat, Reasoning (the chat template issue adds them); ConversationId, RawRepresentationFactory and background
/// responses are ignored (the client is stateless). The caller's options are never modified. Tools are rendered by the
/// model's chat template; tool calls in the reply (Hermes/Qwen, Llama JSON, Mistral syntax) come back as
/// <see cref="FunctionCallContent"/> with <see cref="ChatFinishReason.ToolCalls"/>, never as text; <c>&lt;think&gt;</c>
/// output comes back as <see cref="TextReasoningContent"/>.
/// </para>
/// <para>
/// Defaults: sampling at <see cref="CoralChatClientOptions.DefaultTemperature"/>, <see cref="CoralChatClientOptions.DefaultTopP"/>
/// and <see cref="CoralChatClientOptions.DefaultTopK"/> when set, else the model's recommendation (generation_config.json
/// that samples, an Ollama model's params and stop sequences), else temperature 0.7 and top-p 0.95; a cap of
/// <see cref="CoralChatClientOptions.DefaultMaxOutputTokens"/>.
/// </para>
/// </remarks>
public sealed class CoralChatClient : IChatClient
{
    /// <summary>The provider name reported in <see cref="ChatClientMetadata"/>.</summary>
    public const string ProviderName = "coral";

    private readonly CoralModelHost _host;
    private readonly bool _ownsHost;
    private readonly CoralChatClientOptions _defaults;
    private readonly ChatClientMetadata _metadata;

    /// <summary>Initializes a new instance of the <see cref="CoralChatClient"/> class that owns its model host.</summary>
    /// <param name="options">The model options. The model loads on first use (or call <see cref="CoralModelHost.WaitUntilReadyAsync"/>).</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is <see langword="null"/>.</exception>
    public CoralChatClient(CoralChatClientOptions options)
        : this(new CoralModelHost(Throw.IfNull(options)), ownsHost: true)
    {
    }

    /// <summary>Initializes a new instance of the <see cref="CoralChatClient"/> class over a shared model host.</summary>
    /// <param name="host">The model host; it is not disposed with the client.</param>
    /// <exception cref="ArgumentNullException"><paramref name="host"/> is <see langword="null"/>.</exception>
    public CoralChatClient(CoralModelHost host)
        : this(Throw.IfNull(host), ownsHost: false)
    {
    }

    private CoralChatClient(CoralModelHost host, bool ownsHost)
    {
        _host = host;
        _ownsHost = ownsHost;
        _defaults = host.Options;
        _metadata = new ChatClientMetadata(ProviderName, host.ModelUri, host.ModelId);
    }

    /// <summary>Gets the model host serving this client.</summary>
    public CoralModelHost Host => _host;

    /// <inheritdoc />
    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken);

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        _ = Throw.IfNull(messages);
        List<ChatMessage> history = messages.ToList();
        if (options?.ModelId is string requested && requested != _host.ModelId)
        {
            throw new InvalidOperationException($"Unknown model id '{requested}': this client serves '{_host.ModelId}'.");
        }

        int maxTokens = options?.MaxOutputTokens ?? _defaults.DefaultMaxOutputTokens;
        if (maxTokens < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"ChatOptions.MaxOutputTokens must be at least 1 (got {maxTokens}).");
        }

        InferenceEngine engine = await _host.GetEngineAsync(cancellationToken).ConfigureAwait(false);
        ModelSamplingDefaults? modelDefaults = _host.SamplingDefaults;
        SamplingParameters sampling = MapSampling(options, modelDefaults);
        ToolCallSyntax syntax = AssistantOutputParser.Detect(engine.Tokenizer.Config.ChatTemplate);
        OutputConstraint? constraint = OutputConstraints.For(options, ref syntax, out string? schemaInstructions);
        ChatOptions? renderOptions = options;
        if (schemaInstructions is not null)
        {
            renderOptions = options!.Clone();
            renderOptions.Instructions = string.IsNullOrEmpty(options.Instructions) ? schemaInstructions : options.Instructions + "\n\n" + schemaInstructions;
        }

        RenderedPrompt prompt = ChatPromptFormatter.Render(engine.Tokenizer.Config, history, renderOptions);
        IList<string>? stops = options?.StopSequences ?? (modelDefaults is { StopSequences.Count: > 0 } m ? [.. m.StopSequences] : null);
        GenerationRequest request = prompt.ToRequest(engine.Tokenizer, sampling, maxTokens, stops) with
        {
            Constraint = constraint,
            Speculative = ReadBool(options, "speculative") ?? true,
            PromptLookupTokens = ReadInt(options, "prompt_lookup_tokens") is int lookup
                ? lookup is >= 0 and <= 32 ? lookup : throw new ArgumentException($"ChatOptions.AdditionalProperties prompt_lookup_tokens must be in [0, 32] (got {lookup}).", nameof(options))
                : null,
            Tree = engine.Tree with
            {
                Depth = ReadInt(options, "tree_depth") ?? engine.Tree.Depth,
                TopK = ReadInt(options, "tree_top_k") ?? engine.Tree.TopK,
                TotalTokens = ReadInt(options, "tree_total_tokens") ?? engine.Tree.TotalTokens,
                RouterTopK = ReadInt(options, "router_top_k") ?? engine.Tree.RouterTopK,
            },
        };
        if (engine.Drafter is not null && request.Speculative)
        {
            try
            {
                request.Tree!.Validate();
            }
            catch (ArgumentException ex)
            {
                throw new ArgumentException($"ChatOptions.AdditionalProperties tree settings: {ex.Message}", nameof(options), ex);
            }
        }

        if (request.PromptIds.Count >= engine.ContextLength)
        {
            throw new PromptTooLongException(request.PromptIds.Count, engine.ContextLength);
        }

        string responseId = "coral-" + Guid.NewGuid().ToString("N");
        string messageId = "msg-" + Guid.NewGuid().ToString("N");
        DateTimeOffset created = DateTimeOffset.UtcNow;
        ChatResponseUpdate NewUpdate(string? text) => new(ChatRole.Assistant, text)
        {
            ResponseId = responseId,
            MessageId = messageId,
            ModelId = _host.ModelId,
            CreatedAt = created,
        };
        ChatResponseUpdate Piece((bool Reasoning, string Text) piece)
        {
            ChatResponseUpdate u = NewUpdate(null);
            u.Contents.Add(piece.Reasoning ? new TextReasoningContent(piece.Text) : new TextContent(piece.Text));
            return u;
        }

        bool toolsOffered = options?.ToolMode is not NoneChatToolMode && options?.Tools?.OfType<AIFunctionDeclaration>().Any() == true;
        var parser = new AssistantOutputParser(
            toolsOffered ? syntax : ToolCallSyntax.None,
            startsInThink: prompt.Text.TrimEnd('\n').EndsWith("<think>", StringComparison.Ordinal));

        var channel = Channel.CreateUnbounded<ChatResponseUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        void OnText(int token, string text)
        {
            foreach (var piece in parser.Push(text))
            {
                channel.Writer.TryWrite(Piece(piece));
            }
        }

        void Complete(GenerationResult result, Activity? activity)
        {
            CoralTelemetry.Record(result, _host.ModelId, activity);
            var (rest, calls) = parser.Finish();
            foreach (var piece in rest)
            {
                channel.Writer.TryWrite(Piece(piece));
            }

            ChatResponseUpdate last = NewUpdate(null);
            foreach (FunctionCallContent call in calls)
            {
                last.Contents.Add(call);
            }

            last.FinishReason = calls.Count > 0 ? ChatFinishReason.ToolCalls
                : result.Finish == GenerationFinish.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;
            last.Contents.Add(new UsageContent(ToUsage(result)));
            channel.Writer.TryWrite(last);
            channel.Writer.TryComplete();
        }

        Task worker;
        if (engine.Batch is { } batch)
        {
            CoralTelemetry.QueueDepth.Add(1);
            // Continuous batching: the scheduler's thread decodes this request beside the others.
            worker = Task.Run(async () =>
            {
                using Activity? activity = CoralTelemetry.Source.StartActivity("coral.generate");
                activity?.SetTag("gen_ai.request.model", _host.ModelId);
                try
                {
                    Complete(await batch.GenerateAsync(request, OnText, stop.Token).ConfigureAwait(false), activity);
                }
                catch (Exception ex)
                {
                    activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
                    channel.Writer.TryComplete(ex);
                }
                finally
                {
                    CoralTelemetry.QueueDepth.Add(-1);
                }
            }, CancellationToken.None);
        }
        else
        {
            await engine.EnterAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                worker = Task.Factory.StartNew(() =>
                {
                    using Activity? activity = CoralTelemetry.Source.StartActivity("coral.generate");
                    activity?.SetTag("gen_ai.request.model", _host.ModelId);
                    try
                    {
                        Complete(engine.Generate(request, OnText, stop.Token), activity);
                    }
                    catch (Exception ex)
                    {
                        activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
                        channel.Writer.TryComplete(ex);
                    }
                    finally
                    {
                        CoralTelemetry.QueueDepth.Add(-1);
                        engine.Gate.Release();
                    }
                }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            }
            catch
            {
                CoralTelemetry.QueueDepth.Add(-1);
                engine.Gate.Release();
                throw;
            }
        }

        try
        {
            await foreach (ChatResponseUpdate update in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                // ReadAllAsync hands out what is already buffered without looking at the token; a cancelled caller gets
                // nothing more, however far ahead generation ran.
                cancellationToken.ThrowIfCancellationRequested();
                yield return update;
            }
        }
        finally
        {
            stop.Cancel();
            await worker.ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        _ = Throw.IfNull(serviceType);
        return serviceKey is not null ? null
            : serviceType == typeof(ChatClientMetadata) ? _metadata
            : serviceType == typeof(CoralModelHost) ? _host
            : serviceType.IsInstanceOfType(this) ? this
            : null;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsHost)
        {
            _host.Dispose();
        }
    }

    internal static UsageDetails ToUsage(GenerationResult r)
    {
        var usage = new UsageDetails
        {
            InputTokenCount = r.PromptTokens,
            OutputTokenCount = r.TokenIds.Count,
            TotalTokenCount = r.PromptTokens + r.TokenIds.Count,
            CachedInputTokenCount = r.CachedPromptTokens,
            AdditionalCounts = new AdditionalPropertiesDictionary<long>
            {
                ["prompt_eval_duration_ns"] = (long)(r.PrefillTime.TotalMilliseconds * 1e6),
                ["eval_duration_ns"] = (long)(r.DecodeTime.TotalMilliseconds * 1e6),
                ["time_to_first_token_ns"] = (long)(r.TimeToFirstToken.TotalMilliseconds * 1e6),
                ["target_forward_passes"] = r.TargetForwardPasses,
            },
        };
        if (r.Speculative is { } s)
        {
            usage.AdditionalCounts["draft_tokens_proposed"] = s.DraftTokens;
            usage.AdditionalCounts["draft_tokens_accepted"] = Math.Max(0, s.AcceptedTokens - s.Cycles);
            usage.AdditionalCounts["speculative_cycles"] = s.Cycles;
            usage.AdditionalCounts["mean_accepted_length_x1000"] = (long)Math.Round(s.MeanAcceptedLength * 1000);
            usage.AdditionalCounts["draft_duration_ns"] = (long)(s.DraftTime.TotalMilliseconds * 1e6);
            usage.AdditionalCounts["verify_duration_ns"] = (long)(s.VerifyTime.TotalMilliseconds * 1e6);
            usage.AdditionalCounts["lookup_cycles"] = s.LookupCycles;
            usage.AdditionalCounts["lookup_tokens_accepted"] = s.LookupAcceptedTokens;
            usage.AdditionalCounts["drafter_used"] = s.UsedDrafter ? 1 : 0;
        }

        return usage;
    }

    /// <summary>A request's sampling: <paramref name="o"/>'s values, else the options' defaults, else the model's
    /// (<paramref name="model"/>), else temperature 0.7 and top-p 0.95.</summary>
    internal SamplingParameters MapSampling(ChatOptions? o, ModelSamplingDefaults? model)
    {
        float temperature = o?.Temperature ?? _defaults.DefaultTemperature ?? model?.Temperature ?? 0.7f;
        if (!float.IsFinite(temperature) || temperature < 0 || o?.TopP is { } p && !(p is >= 0 and <= 1) || o?.TopK is < 0
            || o?.FrequencyPenalty is { } f && !float.IsFinite(f) || o?.PresencePenalty is { } pp && !float.IsFinite(pp))
        {
            throw new ArgumentOutOfRangeException(nameof(o),
                "ChatOptions.Temperature must be a finite number >= 0, TopP in [0, 1], TopK >= 0 and the penalties finite.");
        }

        return new SamplingParameters
        {
            Temperature = temperature,
            TopP = o?.TopP ?? _defaults.DefaultTopP ?? model?.TopP ?? 0.95f,
            TopK = o?.TopK ?? _defaults.DefaultTopK ?? model?.TopK,
            MinP = ReadFloat(o, "min_p") ?? model?.MinP,
            RepetitionPenalty = ReadFloat(o, "repetition_penalty") ?? model?.RepetitionPenalty ?? 1f,
            FrequencyPenalty = o?.FrequencyPenalty ?? 0f,
            PresencePenalty = o?.PresencePenalty ?? 0f,
            Seed = o?.Seed,
        };
    }

    private static int? ReadInt(ChatOptions? o, string key) => ReadFloat(o, key) is float f ? (int)f : null;

    private static bool? ReadBool(ChatOptions? o, string key)
    {
        if (o?.AdditionalProperties is null || !o.AdditionalProperties.TryGetValue(key, out object? value) || value is null)
        {
            return null;
        }

        return value switch
        {
            bool b => b,
            System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.True } => true,
            System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.False } => false,
            string s when bool.TryParse(s, out bool b) => b,
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties['{key}'] must be a boolean (got '{value}').", nameof(o)),
        };
    }

    private static float? ReadFloat(ChatOptions? o, string key)
    {
        if (o?.AdditionalProperties is null || !o.AdditionalProperties.TryGetValue(key, out object? value) || value is null)
        {
            return null;
        }

        try
        {
            return value switch
            {
                System.Text.Json.JsonElement e => e.GetSingle(),
                string s => float.Parse(s, CultureInfo.InvariantCulture),
                _ => Convert.ToSingle(value, CultureInfo.InvariantCulture),
            };
        }
        catch (Exception ex) when (ex is FormatException or InvalidCastException or InvalidOperationException)
        {
            throw new ArgumentException($"ChatOptions.AdditionalProperties['{key}'] must be a number (got '{value}').", nameof(o), ex);
        }
    }
}

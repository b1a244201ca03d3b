using Coral.AI;

namespace Coral.Cli;

/// <summary>Builds a model host from the common options (--model, --device, --dtype).</summary>
internal static class ModelLoading
{
    /// <summary>The value options every model-loading command accepts: the pair, the device, the dtype and the tree.</summary>
    public static readonly string[] ValueOptions = ["--model", "--draft", "--device", "--dtype", "--tree-tokens", "--tree-depth", "--tree-topk", "--router-topk", "--prompt-lookup", "--quantize", "--parallel", "--kv-cache"];

    /// <summary>Which option of <see cref="CoralChatClientOptions"/> each of <see cref="ValueOptions"/> sets, for error messages.</summary>
    private static readonly (string Property, string Flag)[] Flags =
    [
        ("ModelPath", "--model"), ("DraftModelPath", "--draft"), ("Device", "--device"), ("DType", "--dtype"),
        ("TreeTotalTokens", "--tree-tokens"), ("TreeDepth", "--tree-depth"), ("TreeTopK", "--tree-topk"), ("RouterTopK", "--router-topk"),
        ("PromptLookupTokens", "--prompt-lookup"), ("Quantization", "--quantize"), ("ParallelRequests", "--parallel"), ("KvCacheType", "--kv-cache"),
    ];

    /// <summary>The command's own value options plus <see cref="ValueOptions"/>.</summary>
    public static HashSet<string> With(params string[] options) => [.. ValueOptions, .. options];

    /// <summary>The options from --model/--draft/--device/--dtype and the tree (--tree-tokens, fixed instead of auto-tuned;
    /// --tree-depth, --tree-topk; --router-topk, 0 = full LM head); without --model, the bundled demo pair (target and its
    /// CORAL drafter).</summary>
    public static CoralChatClientOptions Options(CommandLine cl)
    {
        string? model = cl.Value("--model"), draft = cl.Value("--draft");
        if (model is null)
        {
            (model, string? demoDraft) = DemoModels.Locate()
                ?? throw new UsageException($"--model is required: the demo pair (samples/models/{DemoModels.Target}) was not found here; run from the repository or set CORAL_DEMO_MODELS.");
            draft ??= demoDraft;
        }

        return new()
        {
            ModelPath = model,
            DraftModelPath = draft,
            Device = cl.Value("--device") ?? "cpu",
            DType = cl.Value("--dtype"),
            Quantization = cl.Value("--quantize"),
            KvCacheType = cl.Value("--kv-cache"),
            TreeTotalTokens = cl.Int("--tree-tokens"),
            TreeDepth = cl.Int("--tree-depth") ?? 5,
            TreeTopK = cl.Int("--tree-topk") ?? 8,
            RouterTopK = cl.Int("--router-topk"),
            PromptLookupTokens = cl.Int("--prompt-lookup") ?? new CoralChatClientOptions().PromptLookupTokens,
            ParallelRequests = cl.Int("--parallel") ?? 1,
        };
    }

    /// <summary>Validates options built from the command line; the error names the flag the user typed, not the
    /// options property behind it.</summary>
    public static void Check(CoralChatClientOptions options)
    {
        string? invalid = CoralChatClientOptionsValidator.Check(options);
        if (invalid is not null)
        {
            throw new ArgumentException(Flags.Aggregate(invalid, (message, f) => message.Replace("CoralChatClientOptions." + f.Property, f.Flag)));
        }
    }

    public static CoralModelHost LoadHost(CommandLine cl, TextWriter stderr)
    {
        CoralChatClientOptions options = Options(cl);
        Check(options);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        CoralModelHost host = CoralModelHost.Load(options);
        InferenceEngine engine = host.GetEngineAsync(CancellationToken.None).GetAwaiter().GetResult();
        string tree = engine.Drafter is null ? string.Empty
            : $", drafter {Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.DraftModelPath!)))}, tree {engine.Tree.TotalTokens} nodes depth {engine.Tree.Depth} top-k {engine.Tree.TopK}"
              + (engine.Drafter.Model.Router is not { } r
                  ? (options.RouterTopK > 0 ? $", --router-topk {options.RouterTopK} ignored: the drafter has no router" : string.Empty)
                  : engine.Tree.RouterTopK == 0 ? ", router off (full LM head)"
                  : $", router {(engine.Tree.RouterTopK < 0 ? r.TopK : engine.Tree.RouterTopK)}/{r.Groups} groups"
                    + (options.RouterTopK > r.Groups ? $" (--router-topk {options.RouterTopK} is more than the router has)" : string.Empty));
        int kept = engine.Model.PackedLayerWeights.Count(w => w.Quantization == WeightQuantization.Q4_K);
        string quantized = engine.Model.Quantization == WeightQuantization.None ? ""
            : $", {engine.Model.Quantization} weights{(kept > 0 ? $" ({kept} projections kept as the file's Q4_K blocks)" : "")}"
              + (engine.Model.UsesInt8Activations ? " × int8 activations (AVX-VNNI)" : "");
        string kv = engine.Cache.DType == TorchSharp.torch.ScalarType.BFloat16 ? $", bf16 KV cache ({engine.Cache.Bytes / (1024 * 1024)} MiB for {engine.Cache.Capacity} tokens)" : "";
        stderr.WriteLine($"[loaded {host.ModelId} on {options.Device} ({engine.Model.WeightType}{quantized}{(engine.Model.HeadType != engine.Model.WeightType ? $", LM head {engine.Model.HeadType}" : "")}{kv}) in {clock.ElapsedMilliseconds} ms{tree}]");
        return host;
    }

    /// <summary>The KV cache's element type as bench JSON names it: f32, bf16 or f64.</summary>
    public static string KvCacheName(KvCache cache) => cache.DType switch
    {
        TorchSharp.torch.ScalarType.BFloat16 => "bf16",
        TorchSharp.torch.ScalarType.Float64 => "f64",
        _ => "f32",
    };
}

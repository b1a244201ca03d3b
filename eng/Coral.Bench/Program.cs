using System.Diagnostics;
using System.Globalization;
using System.Text;
using Coral.AI;
using Coral.AI.TestModels;
using LLama;
using LLama.Common;
using LLama.Native;
using TorchSharp;
using static TorchSharp.torch;

// Plain greedy decoding, tokens/s, Coral vs llama.cpp on the same random Llama weights, interleaved in one process.
// usage: dotnet run -c Release --project eng/Coral.Bench -- [--hidden 512] [--layers 8] [--ranks 50000] [--tokens 128]
//        [--rounds 7] [--out docs/benchmarks/plain-decode.md] [--dtypes float32,bfloat16,q8_0] (default float32,bfloat16;
//        q8_0: Coral's Q8_0 weights against llama.cpp on the Q8_0 GGUF of the same safetensors) [--cpu-default] (Coral
//        computes in f32 for every dtype, as its CPU default does — bf16 weights on the packed kernels — and the libtorch
//        path's row is left out: for large shapes, where every extra engine costs gigabytes)
//        or: --write-random <dir> --preset llama-3.2-1b|llama-3-8b [--layers N] [--dtype bf16|f16] (a random checkpoint at that shape)
//        or: --kernel-formats [--rows 1,4] [--mb 512] (the packed GEMM over bf16 vs f16 blocks, see KernelFormats)
//        or: --profile <hf-dir> [--rows 1,4,8,16,32] [--forms 0,1] (the cost breakdown of a step, see CostProfile; --forms:
//        only those engine forms, by index, and not the invariance and parts tables; --draft <dir>: the draft step instead,
//        exact and int8-approximate, routed and full head, at 1 and the largest --rows)
NativeLibraryConfig.All.WithLogCallback((_, _) => { });
if (args.SkipWhile(a => a != "--write-random").Skip(1).FirstOrDefault() is string randomFolder)
{
    // --write-random <dir> --preset llama-3.2-1b|llama-3-8b [--layers N] [--dtype bf16|f16]: a random checkpoint at a
    // released model's shape.
    string preset = args.SkipWhile(a => a != "--preset").Skip(1).FirstOrDefault() ?? "llama-3.2-1b";
    RealShapes.Write(randomFolder, preset, args.SkipWhile(a => a != "--layers").Skip(1).Select(int.Parse).FirstOrDefault() is int n and > 0 ? n : null,
        args.SkipWhile(a => a != "--dtype").Skip(1).FirstOrDefault() ?? "bf16");
    return;
}

if (args.Contains("--kernel-formats"))
{
    // --kernel-formats [--rows 1,4] [--mb 512]: the packed GEMM over bf16 and f16 blocks of the same size.
    int[] counts = (args.SkipWhile(a => a != "--rows").Skip(1).FirstOrDefault() ?? "1,4").Split(',').Select(int.Parse).ToArray();
    KernelFormats.Run(counts, int.Parse(args.SkipWhile(a => a != "--mb").Skip(1).FirstOrDefault() ?? "512", CultureInfo.InvariantCulture));
    return;
}

if (args.SkipWhile(a => a != "--profile").Skip(1).FirstOrDefault() is string profiled)
{
    // --profile <hf-dir> [--rows 1,4,8,16,32]: where a plain step and a tree verification spend their time.
    string rows = args.SkipWhile(a => a != "--rows").Skip(1).FirstOrDefault() ?? "1,4,8,16,32";
    int[] sizes = rows.Split(',').Select(int.Parse).ToArray();
    int[]? forms = args.SkipWhile(a => a != "--forms").Skip(1).FirstOrDefault()?.Split(',').Select(int.Parse).ToArray();
    if (args.SkipWhile(a => a != "--draft").Skip(1).FirstOrDefault() is string drafter)
    {
        CostProfile.Draft(profiled, drafter, sizes.Max());
        return;
    }

    if (forms is null)
    {
        CostProfile.Invariance(profiled, 64);
        CostProfile.Parts(profiled, sizes);
    }

    CostProfile.Run(profiled, sizes, forms);
    return;
}

var opts = ParseArgs(args);
int hidden = opts.GetValueOrDefault("--hidden", 512), layers = opts.GetValueOrDefault("--layers", 8);
int ranks = opts.GetValueOrDefault("--ranks", 50000), tokens = opts.GetValueOrDefault("--tokens", 128), rounds = opts.GetValueOrDefault("--rounds", 7);
string? output = args.SkipWhile(a => a != "--out").Skip(1).FirstOrDefault();
// --model <hf-dir>: measure those weights (e.g. the demo model) instead of a random model; --draft <dir> adds Coral's
// speculative decoding (bf16, greedy, same prompt) to the comparison.
string? modelArg = args.SkipWhile(a => a != "--model").Skip(1).FirstOrDefault();
string? draftArg = args.SkipWhile(a => a != "--draft").Skip(1).FirstOrDefault();

string root = modelArg is null ? Path.Combine(Path.GetTempPath(), $"coral-bench-{hidden}-{layers}-{ranks}-bf16")
    : Path.Combine(Path.GetTempPath(), "coral-bench-" + Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelArg))));
string model = modelArg ?? Path.Combine(root, "model");
Directory.CreateDirectory(root);
if (modelArg is null && !File.Exists(Path.Combine(model, "model.safetensors")))
{
    Console.Error.WriteLine($"writing random model d={hidden} L={layers} vocab={ranks} to {model}");
    TinyCheckpoint.Create(model, new TinyModelSpec
    {
        HiddenSize = hidden, Layers = layers, Heads = hidden / 64, KvHeads = hidden / 128, IntermediateSize = hidden * 11 / 4,
        TokenizerRanks = ranks, MaxPositions = 1024, VocabPadding = 0, Seed = 5, StorageDType = "BF16",   // as HF checkpoints are
    });
}

var variants = new List<(string Name, Func<string, int, double> Run)>();
string[] dtypes = (args.SkipWhile(a => a != "--dtypes").Skip(1).FirstOrDefault() ?? "float32,bfloat16").Split(',');
bool cpuDefault = args.Contains("--cpu-default");
// --llama-threads 2: llama.cpp with two threads only (each context holds its own repacked weights: at Llama-3.2-1B's
// shape three dtypes with both thread counts ran out of this VM's 24 GB).
int[] llamaThreads = (args.SkipWhile(a => a != "--llama-threads").Skip(1).FirstOrDefault() ?? "1,2").Split(',').Select(int.Parse).ToArray();
// K-quant dtypes (q4_k_m, q5_k_m, q6_k): llama.cpp's quantizer writes the file from the f32 export, and Coral loads that
// same GGUF file (its default for it: Q8_0 blocks of the file's values) — the comparison a user with a downloaded GGUF sees.
var kQuants = new Dictionary<string, LLamaFtype> { ["q4_k_m"] = LLamaFtype.MOSTLY_Q4_K_M, ["q5_k_m"] = LLamaFtype.MOSTLY_Q5_K_M, ["q6_k"] = LLamaFtype.MOSTLY_Q6_K };
foreach (string dtype in dtypes)
{
    string gguf = Path.Combine(root, $"model-{dtype}.gguf");
    if (!File.Exists(gguf) && kQuants.TryGetValue(dtype, out LLamaFtype ftype))
    {
        string f32 = Path.Combine(root, "model-float32.gguf");
        if (!File.Exists(f32))
        {
            GgufExporter.Export(model, f32, "f32");
        }

        NativeApi.llama_empty_call();
        var quantize = LLamaModelQuantizeParams.Default();
        quantize.ftype = ftype;
        quantize.nthread = Environment.ProcessorCount;
        if (NativeApi.llama_model_quantize(f32, gguf, ref quantize) != 0)
        {
            throw new InvalidOperationException($"llama.cpp could not quantize {f32} to {dtype}");
        }
    }
    else if (!File.Exists(gguf))
    {
        GgufExporter.Export(model, gguf, dtype switch { "float32" => "f32", "q8_0" or "q4_0" => dtype, _ => "bf16" });
    }

    var engine = kQuants.ContainsKey(dtype)
        ? InferenceEngine.Load(gguf, torch.CPU, ScalarType.Float32, 512,
            quantization: TorchDevices.TryParseQuantization(GgufImporter.SuggestedQuantization(GgufImporter.Prepare(gguf)), out WeightQuantization fileDefault) ? fileDefault : WeightQuantization.None)
        : InferenceEngine.Load(model, torch.CPU, dtype == "bfloat16" && !cpuDefault ? ScalarType.BFloat16 : ScalarType.Float32, 512,
            quantization: TorchDevices.TryParseQuantization(dtype, out WeightQuantization q) ? q : WeightQuantization.None);
    TorchDevices.YieldTorchThreads(engine.Model);   // as the host does: the packed kernels bring their own second thread
    variants.Add(($"coral {dtype}", (prompt, n) => CoralDecode(engine, prompt, n)));
    if (kQuants.ContainsKey(dtype))
    {
        // The same file as Q4_0 blocks of its values (--quantize q4_0): less memory than Q8_0, further from the file's values.
        var small = InferenceEngine.Load(gguf, torch.CPU, ScalarType.Float32, 512, quantization: WeightQuantization.Q4_0);
        variants.Add(($"coral {dtype} as q4_0", (prompt, n) => CoralDecode(small, prompt, n)));
    }

    if (dtype == "float32" && !cpuDefault)
    {
        // The same f32 engine on the libtorch path (CpuKernels off): what the C# kernels gain, interleaved.
        var libtorch = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 512, cpuKernels: false);
        variants.Add(("coral float32 libtorch path", (prompt, n) => CoralDecode(libtorch, prompt, n)));
    }

    if (draftArg is not null && dtype == "float32")
    {
        // The CPU default with a drafter: f32 layers, bf16 LM head.
        var spec = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 512, null, draftArg, ScalarType.BFloat16);
        spec.Tree = spec.TuneTree(5, 8, -1).Shape;
        variants.Add(("coral speculative", (prompt, n) => CoralDecode(spec, prompt, n, speculative: true)));
    }
    foreach (int threads in llamaThreads)
    {
        var p = new ModelParams(gguf) { ContextSize = 512, BatchSize = 512, UBatchSize = 512, GpuLayerCount = 0, Threads = threads, FlashAttention = false };
        var weights = LLamaWeights.LoadFromFile(p);
        var ctx = weights.CreateContext(p);
        variants.Add(($"llama.cpp {dtype} {threads}t", (prompt, n) => LlamaDecode(ctx, prompt, n)));
    }
}

string promptText = modelArg is null
    ? "The history of the city begins with a small settlement on the banks of the river, where traders met each spring to"
    : "<|im_start|>user\nContinue this text: The history of the city begins with a small settlement on the banks of the river. Traders met there each spring.<|im_end|>\n<|im_start|>assistant\n";
var results = variants.ToDictionary(v => v.Name, _ => new List<double>());
for (int r = 0; r < rounds + 1; r++)
{
    // Rotate the order every round; round 0 is a warm-up and is discarded.
    for (int k = 0; k < variants.Count; k++)
    {
        var (name, run) = variants[(k + r) % variants.Count];
        double tps = run(promptText, tokens);
        if (r > 0)
        {
            results[name].Add(tps);
        }
    }

    Console.Error.WriteLine($"round {r}: " + string.Join(", ", results.Select(kv => $"{kv.Key} {(kv.Value.Count > 0 ? kv.Value[^1] : 0):F1}")));
}

double Median(List<double> x)
{
    var s = x.OrderBy(v => v).ToList();
    return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
}

var report = new StringBuilder();
report.AppendLine(modelArg is null
    ? string.Create(CultureInfo.InvariantCulture, $"Plain greedy decode, {tokens} new tokens after a {promptText.Split(' ').Length}-word prompt; random Llama d={hidden}, {layers} layers, {hidden / 64} heads / {hidden / 128} KV heads, FFN {hidden * 11 / 4}, vocab {ranks + 5} (GPT-2 ranks + 5 specials), untied head.")
    : string.Create(CultureInfo.InvariantCulture, $"Greedy decode of {modelArg} (up to {tokens} new tokens, same chat prompt; llama.cpp on a GGUF exported from the same safetensors){(draftArg is null ? "" : $"; speculative with {draftArg}")}."));
if (cpuDefault)
{
    report.AppendLine("Coral computes in f32 on every row (its CPU default): bf16 values on the packed kernels, q8_0 / q4_0 on its quantized blocks.");
}

report.AppendLine(CultureInfo.InvariantCulture, $"Medians of {rounds} interleaved rounds (order rotated each round, one warm-up discarded), one process; machine: {Environment.ProcessorCount} vCPU, torch threads {torch.get_num_threads()}.");
report.AppendLine();
report.AppendLine("| dtype | Coral tokens/s | llama.cpp 1 thread | llama.cpp 2 threads | Coral / best llama.cpp |");
report.AppendLine("| --- | --- | --- | --- | --- |");
foreach (string dtype in dtypes)
{
    double Rate(string key) => results.TryGetValue(key, out var r) ? Median(r) : double.NaN;
    double c = Rate($"coral {dtype}"), l1 = Rate($"llama.cpp {dtype} 1t"), l2 = Rate($"llama.cpp {dtype} 2t");
    report.AppendLine(CultureInfo.InvariantCulture, $"| {dtype} | {c:F1} | {l1:F1} | {l2:F1} | {c / new[] { l1, l2 }.Where(double.IsFinite).Max():F2} |");
}

double bestLlama = dtypes.SelectMany(d => new[] { $"llama.cpp {d} 1t", $"llama.cpp {d} 2t" }).Where(results.ContainsKey).Max(k => Median(results[k]));
if (results.TryGetValue("coral float32 libtorch path", out var libtorchRates))
{
    double libtorchPath = Median(libtorchRates);
    report.AppendLine(CultureInfo.InvariantCulture, $"| float32, libtorch path (CORAL_CPU_KERNELS=0) | {libtorchPath:F1} | | | {libtorchPath / bestLlama:F2} (vs the best llama.cpp row) |");
}

string? plainBaseline = new[] { "bfloat16", "float32" }.FirstOrDefault(dtypes.Contains);
foreach (string quantized in new[] { "q8_0", "q4_0" }.Where(q => plainBaseline is not null && dtypes.Contains(q)))
{
    report.AppendLine();
    report.AppendLine(CultureInfo.InvariantCulture, $"Coral {quantized} / Coral {plainBaseline}: {Median(results[$"coral {quantized}"]) / Median(results[$"coral {plainBaseline}"]):F2}×; llama.cpp {quantized} / llama.cpp {plainBaseline} (2 threads): {Median(results[$"llama.cpp {quantized} 2t"]) / Median(results[$"llama.cpp {plainBaseline} 2t"]):F2}×.");
}
foreach (string dtype in dtypes.Where(kQuants.ContainsKey))
{
    report.AppendLine(CultureInfo.InvariantCulture, $"| {dtype} file as Q4_0 blocks (--quantize q4_0) | {Median(results[$"coral {dtype} as q4_0"]):F1} | | | {Median(results[$"coral {dtype} as q4_0"]) / bestLlama:F2} (vs the best llama.cpp row) |");
}

if (results.TryGetValue("coral speculative", out var specRates))
{
    report.AppendLine(CultureInfo.InvariantCulture, $"| speculative (f32 + bf16 head) | {Median(specRates):F1} | | | {Median(specRates) / bestLlama:F2} (vs the best llama.cpp row) |");
}

Console.WriteLine(report);
if (output is not null)
{
    File.WriteAllText(output, report.ToString());
}

static double CoralDecode(InferenceEngine engine, string prompt, int n, bool speculative = false)
{
    engine.ResetCache();
    List<int> ids = engine.Tokenizer.Encode(prompt);
    var r = engine.Generate(new GenerationRequest(ids, SamplingParameters.Greedy, n, []) { Speculative = speculative }, null, CancellationToken.None);
    // Decode rate: tokens after the first (the first comes from the prefill's logits).
    return (r.TokenIds.Count - 1) / r.DecodeTime.TotalSeconds;
}

static double LlamaDecode(LLamaContext ctx, string prompt, int n)
{
    ctx.NativeHandle.MemoryClear();
    var ids = ctx.Tokenize(prompt, addBos: true, special: true);
    var batch = new LLamaBatch();
    for (int i = 0; i < ids.Length; i++)
    {
        batch.Add(ids[i], i, LLamaSeqId.Zero, i == ids.Length - 1);
    }

    ctx.Decode(batch);
    int pos = ids.Length;
    var clock = Stopwatch.StartNew();
    int produced = 0;
    while (produced < n)
    {
        int next = LogitsSampler.ArgMax(ctx.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
        produced++;
        if (produced == n)
        {
            break;
        }

        batch.Clear();
        batch.Add(next, pos++, LLamaSeqId.Zero, true);
        ctx.Decode(batch);
    }

    return (n - 1) / clock.Elapsed.TotalSeconds;
}

static Dictionary<string, int> ParseArgs(string[] a)
{
    var d = new Dictionary<string, int>();
    for (int i = 0; i + 1 < a.Length; i++)
    {
        // Each "--name N"; flags without a value (--cpu-default) in between do not shift the pairs.
        if (a[i].StartsWith("--", StringComparison.Ordinal) && int.TryParse(a[i + 1], out int v))
        {
            d[a[i]] = v;
        }
    }

    return d;
}

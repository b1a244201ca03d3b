using System.Text.Json;
using Microsoft.Extensions.AI;
using Coral.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class CliTests
{
    private static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(args, stdout, stderr, new StringReader(string.Empty));
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary><c>coral embed</c>: one JSON line per text (from --text or stdin), the generator's vectors.</summary>
    [Fact]
    public async Task Embed_PrintsOneJsonLinePerText_TheGeneratorsVectors()
    {
        string model = TransformerModelTests.ModelFor("qwen2");
        var (code, stdout, stderr) = await Run("embed", "--model", model, "--dtype", "float32", "--text", "Whales are mammals.", "--text", "Coral", "--dimensions", "32");
        Assert.True(code == 0, stderr);
        string[] lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        using var generator = new CoralEmbeddingGenerator(new CoralChatClientOptions { ModelPath = model, DType = "float32" });
        GeneratedEmbeddings<Embedding<float>> expected = await generator.GenerateAsync(["Whales are mammals.", "Coral"], new EmbeddingGenerationOptions { Dimensions = 32 });
        for (int i = 0; i < 2; i++)
        {
            using var doc = JsonDocument.Parse(lines[i]);
            float[] v = doc.RootElement.GetProperty("embedding").EnumerateArray().Select(e => e.GetSingle()).ToArray();
            Assert.Equal(expected[i].Vector.ToArray(), v);
            Assert.True(doc.RootElement.GetProperty("tokens").GetInt32() > 0);
        }

        var stdin = new StringReader("first line\nsecond line\n");
        var outWriter = new StringWriter();
        Assert.Equal(0, await CliApp.RunAsync(["embed", "--model", model, "--dtype", "float32"], outWriter, new StringWriter(), stdin));
        Assert.Equal(2, outWriter.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Equal(2, (await Run("embed", "--model", model)).Code);   // no text: usage error
    }

    /// <summary>--quantize loads the quantized model (the load line says so) and its greedy ids are the quantized engine's;
    /// a value it does not know fails naming the flag.</summary>
    [Fact]
    public async Task GenerateQuantized_GivesTheQuantizedEnginesGreedyIds()
    {
        string model = TransformerModelTests.ModelFor("llama-sharded-bf16");
        var (code, stdout, stderr) = await Run("generate", "--model", model, "--prompt", "Once upon a time", "--temperature", "0",
            "--max-new-tokens", "12", "--quantize", "q4_0", "--prompt-lookup", "0", "--json");
        Assert.Equal(0, code);
        Assert.Contains("Q4_0 weights", stderr, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(stdout);
        int[] ids = doc.RootElement.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        using var engine = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 256, quantization: WeightQuantization.Q4_0);
        var expected = engine.Generate(new GenerationRequest(engine.Tokenizer.Encode("Once upon a time"), SamplingParameters.Greedy, 12, []), null, default);
        Assert.Equal(expected.TokenIds, ids);

        var (bad, _, error) = await Run("generate", "--model", model, "--prompt", "Hi", "--quantize", "q3_k");
        Assert.NotEqual(0, bad);
        Assert.Contains("--quantize 'q3_k' is not valid", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("llama-sharded-bf16")]
    public async Task GenerateJson_IsOneObject_WithTheEngineGreedyIds(string name)
    {
        string model = TransformerModelTests.ModelFor(name);
        var (code, stdout, _) = await Run("generate", "--model", model, "--prompt", "Once upon a time", "--temperature", "0",
            "--max-new-tokens", "12", "--dtype", "float32", "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        JsonElement o = doc.RootElement;
        int[] ids = o.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(ids.Length, o.GetProperty("completion_token_count").GetInt32());
        if (o.GetProperty("speculative").ValueKind != JsonValueKind.Null)
        {
            // No drafter: only prompt lookup speculates, and only on packed (bf16-stored) weights.
            Assert.EndsWith("bf16", name);
            Assert.Equal(o.GetProperty("speculative").GetProperty("cycles").GetInt32(), o.GetProperty("speculative").GetProperty("lookup_cycles").GetInt32());
        }

        Assert.True(o.GetProperty("elapsed_ms").GetDouble() > 0);
        Assert.True(o.GetProperty("tokens_per_second").GetDouble() > 0);

        using var engine = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 256);
        List<int> prompt = engine.Tokenizer.Encode("Once upon a time");
        Assert.Equal(prompt.Count, o.GetProperty("prompt_token_count").GetInt32());
        var expected = engine.Generate(new GenerationRequest(prompt, SamplingParameters.Greedy, 12, []), null, default);
        Assert.Equal(expected.TokenIds, ids);
        Assert.Equal(expected.Text, o.GetProperty("text").GetString());
        Assert.Equal(expected.Finish == GenerationFinish.Length ? "length" : "stop", o.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public void ChatStats_ShowTauOnlyWhenCyclesRan_AndSayWhenTheDrafterSatOut()
    {
        static string Line(params (string Key, long Value)[] counts)
        {
            var usage = new UsageDetails { OutputTokenCount = 10, AdditionalCounts = [] };
            foreach (var (key, value) in counts)
            {
                usage.AdditionalCounts[key] = value;
            }

            return Coral.Cli.ChatCommand.Stats(new ChatResponse { Usage = usage, FinishReason = ChatFinishReason.Stop }, TimeSpan.FromSeconds(1));
        }

        Assert.Contains("τ 2.50", Line(("mean_accepted_length_x1000", 2500), ("speculative_cycles", 4), ("drafter_used", 1)));
        Assert.Contains("the drafter sat out", Line(("mean_accepted_length_x1000", 0), ("speculative_cycles", 0), ("drafter_used", 0)));
        Assert.Contains("no cycle paid", Line(("mean_accepted_length_x1000", 0), ("speculative_cycles", 0), ("drafter_used", 1)));
        Assert.DoesNotContain("τ", Line());   // no drafter, no lookup: plain decoding says nothing about speculation
    }

    [Fact]
    public async Task GenerateWithStop_CutsTheText()
    {
        string model = TransformerModelTests.ModelFor("llama");
        var (_, full, _) = await Run("generate", "--model", model, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "24", "--json");
        string text = JsonDocument.Parse(full).RootElement.GetProperty("text").GetString()!;
        string stop = text.Substring(text.Length / 2, 3);
        var (code, cut, _) = await Run("generate", "--model", model, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "24", "--stop", stop, "--json");
        Assert.Equal(0, code);
        JsonElement o = JsonDocument.Parse(cut).RootElement;
        Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], o.GetProperty("text").GetString());
        Assert.Equal("stop", o.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task GenerateChat_UsesTheChatTemplateAndStopsAtTheTurnEnd()
    {
        string model = TransformerModelTests.ModelFor("qwen2");
        var (code, stdout, _) = await Run("generate", "--model", model, "--prompt", "Hi", "--chat", "--system", "Be brief.",
            "--temperature", "0", "--max-new-tokens", "8", "--json");
        Assert.Equal(0, code);
        var tok = HfTokenizer.Load(model);
        int expectedPrompt = tok.Encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", addSpecialTokens: false).Count;
        Assert.Equal(expectedPrompt, JsonDocument.Parse(stdout).RootElement.GetProperty("prompt_token_count").GetInt32());
    }

    [Fact]
    public async Task WithoutModel_TheBundledDemoPairAnswers_AndSpeculativeEqualsPlainGreedy()
    {
        // The README's main job: no --model means samples/models/coral-demo-chat with its drafter.
        string[] ask = ["--chat", "--prompt", "Define kludge.", "--max-new-tokens", "24", "--temperature", "0", "--json"];
        var (code, spec, err) = await Run(["generate", .. ask]);
        Assert.True(code == 0, err);
        Assert.Contains("coral-demo-chat-drafter", err);   // loaded with the drafter
        string root = AppContext.BaseDirectory;
        while (!Directory.Exists(Path.Combine(root, "samples", "models", "coral-demo-chat")))
        {
            root = Path.GetDirectoryName(root.TrimEnd('/'))!;
        }

        // The same engine form without the drafter: f32 on CPU (the bf16-stored pair runs on the packed kernels).
        var (plainCode, plain, plainErr) = await Run(["generate", "--model", Path.Combine(root, "samples", "models", "coral-demo-chat"), "--dtype", "float32", .. ask]);
        Assert.True(plainCode == 0, plainErr);
        string text = JsonDocument.Parse(spec).RootElement.GetProperty("text").GetString()!;
        Assert.False(string.IsNullOrWhiteSpace(text));
        Assert.Equal(JsonDocument.Parse(plain).RootElement.GetProperty("text").GetString(), text);   // lossless on the shipped pair
    }

    [Fact]
    public async Task BadInput_GivesClearErrors_AndExitCodes()
    {
        var (code, _, err) = await Run("generate", "--model", "/does/not/exist", "--prompt", "x");
        Assert.Equal(1, code);
        Assert.Contains("/does/not/exist", err);

        (code, _, err) = await Run("generate", "--prompt", "x", "--bogus", "1");
        Assert.Equal(2, code);
        Assert.Contains("--bogus", err);

        (code, _, err) = await Run("generate", "--model", TransformerModelTests.ModelFor("llama"));
        Assert.Equal(2, code);
        Assert.Contains("--prompt", err);

        (code, _, err) = await Run("generate", "--model", TransformerModelTests.ModelFor("llama"), "--prompt", "x", "--dtype", "float16");
        Assert.Equal(1, code);
        Assert.Contains("float16", err);

        // Option errors name the flag the user typed, not the options property behind it.
        foreach ((string flag, string value) in new[] { ("--tree-tokens", "1000"), ("--tree-depth", "0"), ("--tree-topk", "99"), ("--router-topk", "-1"), ("--draft", "/no/drafter") })
        {
            (code, _, err) = await Run("generate", "--model", TransformerModelTests.ModelFor("llama"), "--prompt", "x", flag, value);
            Assert.Equal(1, code);
            Assert.Contains(flag, err);
            Assert.Contains(value, err);
            Assert.DoesNotContain("CoralChatClientOptions", err);
        }

        // `coral <verb> --help` prints the usage and succeeds (it was an unknown argument).
        (code, string @out, _) = await Run("pretrain", "--help");
        Assert.Equal(0, code);
        Assert.Contains("coral pretrain", @out);
        Assert.Contains("coral eval", @out);
    }

    [Fact]
    public async Task RouterTopK_BeyondTheRouter_OrWithoutOne_IsSaidAtLoad()
    {
        string target = TransformerModelTests.ModelFor("llama-tied-scaled");
        string routed = DrafterZoo.Random(target, "cli-router-4", new DraftInitOptions { RouterGroups = 4 });
        string plain = DrafterZoo.Random(target, "cli-no-router");
        var (code, _, err) = await Run("generate", "--model", target, "--draft", routed, "--prompt", "x", "--max-new-tokens", "2", "--tree-tokens", "4", "--router-topk", "99");
        Assert.Equal(0, code);
        Assert.Contains("router 4/4 groups (--router-topk 99 is more than the router has)", err);
        (code, _, err) = await Run("generate", "--model", target, "--draft", plain, "--prompt", "x", "--max-new-tokens", "2", "--tree-tokens", "4", "--router-topk", "3");
        Assert.Equal(0, code);
        Assert.Contains("--router-topk 3 ignored: the drafter has no router", err);
    }

    [Fact]
    public async Task ExportGguf_WritesAFile()
    {
        string output = Path.Combine(ModelZoo.TempFolder("cli-gguf"), "m.gguf");
        var (code, _, _) = await Run("export-gguf", "--model", TransformerModelTests.ModelFor("llama"), "--out", output, "--type", "f16");
        Assert.Equal(0, code);
        byte[] head = File.ReadAllBytes(output)[..4];
        Assert.Equal("GGUF"u8.ToArray(), head);
    }

    /// <summary><c>coral info</c> reports what the loader reads: for a Gemma-3 its layer kinds as runs (five sliding, one
    /// global), the local RoPE base, the sandwich norms; Granite's logit divisor and tool-call syntax; a config the engine
    /// cannot run fails naming the field.</summary>
    [Fact]
    public async Task Info_ReportsWhatTheLoaderReads()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["info", "--model", TransformerModelTests.ModelFor("gemma3")], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        string text = stdout.ToString();
        Assert.Contains("Gemma3ForCausalLM", text);
        Assert.Contains("5 sliding 8, 1 global, 1 sliding 8", text);
        Assert.Contains("sliding layers θ 10000", text);
        Assert.Contains("Sandwich norms, GeGLU", text);

        stdout = new StringWriter();
        code = await Coral.Cli.CliApp.RunAsync(["info", "--model", TransformerModelTests.ModelFor("granite")], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("logits ÷2.5", stdout.ToString());
        Assert.Contains("tool calls: Granite", stdout.ToString());

        stdout = new StringWriter();
        code = await Coral.Cli.CliApp.RunAsync(["info", "--model", TransformerModelTests.ModelFor("qwen3moe")], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("4 experts of 48, 2 per token (renormalised)", stdout.ToString());

        string broken = ModelZoo.Copy(TransformerModelTests.ModelFor("llama"), "info-broken");
        File.WriteAllText(Path.Combine(broken, "config.json"), File.ReadAllText(Path.Combine(broken, "config.json")).Replace("\"silu\"", "\"relu\"", StringComparison.Ordinal));
        stderr = new StringWriter();
        code = await Coral.Cli.CliApp.RunAsync(["info", "--model", broken], new StringWriter(), stderr, TextReader.Null);
        Assert.Equal(1, code);
        Assert.Contains("hidden_act", stderr.ToString());
    }

    /// <summary><c>coral info</c> without a model reports the machine: the processor's instruction sets, the CPU paths,
    /// the f32 GEMM's measured row block (at most what Coral pads to, or speculation on f32 weights is not exact here),
    /// and CUDA.</summary>
    [Fact]
    public async Task Info_WithoutAModel_ReportsTheMachine()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await Coral.Cli.CliApp.RunAsync(["info"], stdout, stderr, TextReader.Null);
        Assert.True(code == 0, stderr.ToString());
        string text = stdout.ToString();
        Assert.Contains($"AVX-512F {(System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "yes" : "no")}", text);
        Assert.Contains($"packed weights {(PackedMatrix.Enabled ? "on" : "off")}", text);
        Assert.Contains($"(Coral pads to {TransformerModel.InvariantRowBlock}: exact)", text);
        Assert.Contains("cuda          not available", text);
        Assert.InRange(MachineReport.F32GemmRowBlock(), 1, TransformerModel.InvariantRowBlock);
    }
}

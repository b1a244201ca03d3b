using LLama.Native;
using Microsoft.Extensions.AI;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// GGUF files as models (<see cref="GgufImporter"/>, <see cref="GgufFile"/>, <see cref="GgmlBlocks"/>): a file exported
/// from a Hugging Face folder loads to the same logits, tokens and chat template as the folder; files quantized by
/// llama.cpp's own quantizer (Q4_1, Q5_0, Q5_1, K-quants) load to its values, checked against llama.cpp on the same file;
/// bad files fail naming what is wrong.
/// </summary>
public class GgufImportTests
{
    private const string Text = "The quick brown fox jumps over the lazy dog, 12345 times! <|im_start|>";

    /// <summary>Exported as stored (f32 or bf16), the GGUF file is the folder: the same logits bit for bit (llama's q/k rows
    /// put back from llama.cpp's order, llama3 / linear / YaRN RoPE scaling read back), the same tokens for text with
    /// special tokens, the same chat template and greedy answer, and the file's name as the model id.</summary>
    [Theory]
    [InlineData("llama-sharded-bf16", "bf16")]
    [InlineData("llama-tied-scaled", "f32")]   // llama3 scaling: rope_freqs.weight
    [InlineData("llama-linear-rope", "f32")]
    [InlineData("qwen2", "f32")]               // q/k/v biases
    [InlineData("qwen2-yarn", "f32")]
    [InlineData("qwen3-bf16", "bf16")]         // q/k norms
    [InlineData("qwen3moe-bf16", "bf16")]      // experts: slices of llama.cpp's stacked tensors
    [InlineData("qwen2moe-bf16", "bf16")]      // and a shared expert with its gate
    [InlineData("mixtral", "f32")]             // a llama with experts
    [InlineData("olmoe-bf16", "bf16")]         // experts with whole-projection q/k norms
    [InlineData("phi3-bf16", "bf16")]          // fused q|k|v and gate|up
    [InlineData("phi3-window", "f32")]         // a sliding window
    [InlineData("phi3-partial", "bf16")]       // partial rotation
    [InlineData("phi3-longrope", "f32")]       // LongRoPE: short and long factors as rope_factors_* vectors (Phi-3.5-mini)
    [InlineData("phi4-mini-longrope", "bf16")] // and over a partial rotation (Phi-4-mini)
    [InlineData("gemma", "f32")]               // norms stored as 1 + offset, GELU, √d embedding scale
    [InlineData("gemma2-bf16", "bf16")]        // soft caps, sandwich norms, every other layer sliding
    [InlineData("gemma3", "f32")]              // five of six layers sliding on a local RoPE base, q/k norms
    [InlineData("gemma3-sentencepiece", "bf16")]   // Gemma's SentencePiece layout: no '▁' before the text
    [InlineData("granite-bf16", "bf16")]       // multipliers on the embedding, q·k, residuals and logits
    [InlineData("granitemoe-bf16", "bf16")]    // and experts: the checkpoint's stacked gate|up is two GGUF tensors
    [InlineData("smollm3", "f32")]             // every fourth layer without RoPE
    [InlineData("olmo2-bf16", "bf16")]         // norms after the blocks, whole-projection q/k norms
    [InlineData("cohere", "f32")]              // LayerNorms, a parallel block, adjacent-pair RoPE, a logit scale
    [InlineData("cohere2-bf16", "bf16")]       // three of four layers sliding (and rotating)
    public void ExportedFile_LoadsAsItsFolder(string name, string type)
    {
        string folder = TransformerModelTests.ModelFor(name);
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-import-" + name), name + ".gguf");
        GgufExporter.Export(folder, gguf, type);
        using var fromFolder = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 256);
        using var fromFile = InferenceEngine.Load(gguf, torch.CPU, ScalarType.Float32, 256);
        Assert.Equal(name, fromFile.ModelId);
        Assert.Equal(fromFolder.Model.Config.VocabSize, fromFile.Model.Config.VocabSize);
        Assert.Equal(fromFolder.Model.UsesPackedWeights, fromFile.Model.UsesPackedWeights);
        List<int> ids = fromFolder.Tokenizer.Encode(Text);
        Assert.Equal(ids, fromFile.Tokenizer.Encode(Text));
        Assert.Equal(fromFolder.Tokenizer.Decode(ids, skipSpecial: false), fromFile.Tokenizer.Decode(ids, skipSpecial: false));
        Assert.Contains("<|im_start|>", fromFile.Tokenizer.Decode(ids, skipSpecial: false));
        Assert.Equal(fromFolder.Tokenizer.Config.ChatTemplate, fromFile.Tokenizer.Config.ChatTemplate);
        Assert.Equal(fromFolder.EosTokenIds.Order(), fromFile.EosTokenIds.Order());
        long[] longIds = [.. ids.Select(x => (long)x)];
        Assert.Equal(TorchTestHelpers.FullLogits(fromFolder.Model, longIds), TorchTestHelpers.FullLogits(fromFile.Model, longIds));
        var request = new GenerationRequest(ids, SamplingParameters.Greedy, 24, []);
        Assert.Equal(fromFolder.Generate(request, null, CancellationToken.None).TokenIds, fromFile.Generate(request, null, CancellationToken.None).TokenIds);
    }

    /// <summary>A SentencePiece tokenizer (Llama-2 / Mistral style: '▁', byte fallback) goes to GGUF as llama.cpp's
    /// <c>llama</c> tokenizer (pieces and scores) and comes back as the BPE Hugging Face converts it to: llama.cpp and the
    /// imported tokenizer split every text alike (words, digits, accents, a CJK character and an emoji by byte fallback),
    /// and so does the original; the model loads to the folder's logits.</summary>
    [Fact]
    public void SentencePieceFile_TokenizesAsLlamaCppAndItsFolder()
    {
        string folder = TransformerModelTests.ModelFor("sentencepiece");
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-import-spm"), "spm.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        using var fromFolder = InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 256);
        using var fromFile = InferenceEngine.Load(gguf, torch.CPU, ScalarType.Float32, 256);
        string[] texts =
        [
            "The quick brown fox jumps over the lazy dog.", "  two leading spaces and 12345 digits", "naïve café, déjà vu",
            "東京 and 🦀 go by bytes", "a", "line one\nline two", Coral.AI.TestModels.TinyCheckpoint.SentencePieceSample,
            "speculative verifies the drafts; hello, numbers",
        ];
        using var oracle = new LlamaCppOracle(gguf);
        foreach (string text in texts)
        {
            List<int> ours = fromFile.Tokenizer.Encode(text);
            Assert.Equal(oracle.Tokenize(text), ours);
            Assert.Equal(fromFolder.Tokenizer.Encode(text), ours);
            Assert.Equal(fromFolder.Tokenizer.Decode(ours), fromFile.Tokenizer.Decode(ours));
        }

        long[] ids = [.. fromFolder.Tokenizer.Encode(texts[0]).Select(x => (long)x)];
        Assert.Equal(TorchTestHelpers.FullLogits(fromFolder.Model, ids), TorchTestHelpers.FullLogits(fromFile.Model, ids));
    }

    /// <summary>A GGUF file does not keep added tokens' rstrip; llama.cpp gives it to the special tokens of a model named
    /// Phi-3 (as Phi-3's tokenizer.json has it), and so does the import: the chat tokens take the newline after them —
    /// llama.cpp, the import, the folder and Hugging Face tokenizers agree — while the same file under another name keeps
    /// the whitespace, as llama.cpp does.</summary>
    [Fact]
    public void Phi3NamedFile_ChatTokensTakeTheWhitespaceAfterThem_AsLlamaCpp()
    {
        string folder = TransformerModelTests.ModelFor("phi3-sentencepiece");
        string[] texts = ["<|user|>\nHello there<|end|>\n<|assistant|>\n", "<|user|>  spaced  <|end|>\n\n", "end</s>  next", "<s> bos", "done<|endoftext|>  <|end|>"];
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-phi3-spm"), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        var fromFile = HfTokenizer.Load(GgufImporter.Prepare(gguf));
        var fromFolder = HfTokenizer.Load(folder);
        using var hf = new Tokenizers.DotNet.Tokenizer(Path.Combine(folder, "tokenizer.json"));
        using (var llama = new LlamaCppOracle(gguf))
        {
            foreach (string text in texts)
            {
                Assert.Equal(llama.Tokenize(text), fromFile.Encode(text));
                Assert.Equal(fromFolder.Encode(text), fromFile.Encode(text));
                Assert.Equal(hf.Encode(text).Select(x => (int)x), fromFile.Encode(text));
            }
        }

        string other = Path.Combine(ModelZoo.TempFolder("gguf-spm-chat"), "model.gguf");
        GgufExporter.Export(ModelZoo.Copy(folder, "spm-chat"), other, "f32");
        var unnamed = HfTokenizer.Load(GgufImporter.Prepare(other));
        using var llamaOther = new LlamaCppOracle(other);
        foreach (string text in texts)
        {
            Assert.Equal(llamaOther.Tokenize(text), unnamed.Encode(text));
        }

        Assert.NotEqual(fromFolder.Encode(texts[0]), unnamed.Encode(texts[0]));
    }

    /// <summary>Q8_0 and Q4_0 files load as Coral's own blocks of the same values: logits bit for bit those of the folder
    /// quantized at load, which is what the chat client picks for such a file when no quantization is asked for.</summary>
    [Theory]
    [InlineData("q8_0")]
    [InlineData("q4_0")]
    public async Task QuantizedFile_LoadsAsItsValues_AndTheClientPicksItsQuantization(string type)
    {
        string folder = TransformerModelTests.ModelFor("llama-demo-width");
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-import-" + type), "demo-width.gguf");
        GgufExporter.Export(folder, gguf, type);
        WeightQuantization kind = type == "q8_0" ? WeightQuantization.Q8_0 : WeightQuantization.Q4_0;
        Assert.Equal(type, GgufImporter.SuggestedQuantization(GgufImporter.Prepare(gguf)));
        using var fromFolder = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 256, quantization: kind);
        using var fromFile = TransformerModel.Load(gguf, torch.CPU, ScalarType.Float32, 256, quantization: kind);
        long[] ids = [.. HfTokenizer.Load(folder).Encode(Text).Select(x => (long)x)];
        Assert.Equal(TorchTestHelpers.FullLogits(fromFolder, ids), TorchTestHelpers.FullLogits(fromFile, ids));

        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
        using var quantizedFolder = new CoralChatClient(new CoralChatClientOptions { ModelPath = folder, Quantization = type, ContextLength = 128 });
        using var file = new CoralChatClient(new CoralChatClientOptions { ModelPath = gguf, ContextLength = 128 });
        ChatResponse expected = await quantizedFolder.GetResponseAsync("Hello there", options);
        ChatResponse actual = await file.GetResponseAsync("Hello there", options);
        Assert.Equal(expected.Text, actual.Text);
        Assert.Equal("demo-width", actual.ModelId);
    }

    /// <summary>Files written by llama.cpp's quantizer in the block types Coral does not write itself: Coral's f32 values of
    /// them give logits closer to llama.cpp's on the same file than the unquantized model's are (a misread block would be
    /// far off), within 3% of the largest logit; loaded with the default Q8_0 blocks of those values as well.</summary>
    [Theory]
    [InlineData(LLamaFtype.MOSTLY_Q2_K, "llama-demo-width", "Q2_K")]
    [InlineData(LLamaFtype.MOSTLY_Q3_K_S, "llama-demo-width", "Q3_K")]
    [InlineData(LLamaFtype.MOSTLY_Q3_K_M, "llama-demo-width", "Q3_K")]
    [InlineData(LLamaFtype.MOSTLY_IQ4_NL, "llama-demo-width", "IQ4_NL")]
    [InlineData(LLamaFtype.MOSTLY_IQ4_XS, "llama-demo-width", "IQ4_XS")]
    [InlineData(LLamaFtype.MOSTLY_Q4_K_M, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q5_K_M, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q6_K, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q4_1, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q5_0, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q5_1, "llama-demo-width")]
    [InlineData(LLamaFtype.MOSTLY_Q4_K_M, "qwen3moe-wide")]   // stacked experts in K-quant blocks
    public void LlamaCppQuantizedFile_AgreesWithLlamaCpp(LLamaFtype ftype, string name, string? holds = null)
    {
        string folder = TransformerModelTests.ModelFor(name);
        string dir = ModelZoo.TempFolder($"gguf-import-{ftype}-{name}");
        string f32 = Path.Combine(dir, "f32.gguf"), quantized = Path.Combine(dir, ftype + ".gguf");
        GgufExporter.Export(folder, f32, "f32");
        LlamaCppOracle.EnsureLoaded();
        var options = LLamaModelQuantizeParams.Default();
        options.ftype = ftype;
        options.nthread = 2;
        Assert.Equal(0u, NativeApi.llama_model_quantize(f32, quantized, ref options));
        using (GgufFile file = GgufFile.Open(quantized))
        {
            Assert.Contains(file.Tensors.Values, t => t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0));
            Assert.True(holds is null || file.Tensors.Values.Any(t => t.Type == Enum.Parse<GgmlType>(holds)), $"{ftype} holds no {holds} tensor");
        }

        long[] ids = [.. HfTokenizer.Load(folder).Encode(Text).Select(x => (long)x)];
        float[][] theirs;
        using (var oracle = new LlamaCppOracle(quantized))
        {
            theirs = oracle.Logits(ids);
        }

        using var plain = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 256);
        using var values = TransformerModel.Load(quantized, torch.CPU, ScalarType.Float32, 256);
        using var q8 = TransformerModel.Load(quantized, torch.CPU, ScalarType.Float32, 256, quantization: WeightQuantization.Q8_0);
        float[] p = TorchTestHelpers.FullLogits(plain, ids), v = TorchTestHelpers.FullLogits(values, ids), q = TorchTestHelpers.FullLogits(q8, ids);
        int vocab = plain.Config.VocabSize;
        float worstPlain = 0, worstValues = 0, worstQ8 = 0, scale = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            Range row = (i * vocab)..((i + 1) * vocab);
            worstPlain = MathF.Max(worstPlain, TorchTestHelpers.MaxAbsDiff(p[row], theirs[i]));
            worstValues = MathF.Max(worstValues, TorchTestHelpers.MaxAbsDiff(v[row], theirs[i]));
            worstQ8 = MathF.Max(worstQ8, TorchTestHelpers.MaxAbsDiff(q[row], theirs[i]));
            scale = MathF.Max(scale, theirs[i].Max(MathF.Abs));
        }

        if (name.Contains("moe", StringComparison.Ordinal))
        {
            // Near-tied routers tip either way under llama.cpp's int8 activations (measured 5.9 against 9.6 unquantized,
            // as with Q4_0 in QuantizationTests); the dense model above bounds the blocks' values tightly.
            Assert.True(worstValues < worstPlain, $"{ftype}: the file's values {worstValues} from llama.cpp, the unquantized model {worstPlain}");
            return;
        }

        Assert.True(worstValues < worstPlain / 2, $"{ftype}: the file's values {worstValues} from llama.cpp, the unquantized model {worstPlain}");
        Assert.True(worstValues < 0.03f * scale, $"{ftype}: {worstValues} against logits up to {scale}");
        Assert.True(worstQ8 < worstPlain, $"{ftype}: as Q8_0 blocks {worstQ8}, the unquantized model {worstPlain}");
    }

    /// <summary>An Ollama store (<c>$OLLAMA_MODELS</c>) as Ollama lays it out — a manifest per model and tag naming layers,
    /// the model layer a GGUF blob under its sha256 —: <c>ollama:tiny</c>, <c>ollama:tiny:latest</c> and
    /// <c>ollama:library/tiny</c> chat as the folder the blob was exported from does, with the name as model id; a model
    /// not pulled, a manifest without a model layer and a missing blob fail naming what is missing.</summary>
    [Fact]
    public async Task OllamaModelName_LoadsThePulledBlob()
    {
        string folder = TransformerModelTests.ModelFor("qwen2-bf16");
        string store = ModelZoo.TempFolder("ollama-store");
        string gguf = Path.Combine(store, "export.gguf");
        GgufExporter.Export(folder, gguf, "bf16");
        string digest = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(gguf))).ToLowerInvariant();
        Directory.CreateDirectory(Path.Combine(store, "blobs"));
        File.Move(gguf, Path.Combine(store, "blobs", "sha256-" + digest));
        void Manifest(string name, string tag, string mediaType, string hex)
        {
            string dir = Path.Combine(store, "manifests", "registry.ollama.ai", "library", name);
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, tag), $$"""
                {"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
                 "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{{new string('0', 64)}}","size":2},
                 "layers":[{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{{new string('1', 64)}}","size":10},
                           {"mediaType":"{{mediaType}}","digest":"sha256:{{hex}}","size":100}]}
                """);
        }

        Manifest("tiny", "latest", "application/vnd.ollama.image.model", digest);
        Manifest("broken", "latest", "application/vnd.ollama.image.license", digest);
        Manifest("gone", "latest", "application/vnd.ollama.image.model", new string('2', 64));
        string? saved = Environment.GetEnvironmentVariable("OLLAMA_MODELS");
        Environment.SetEnvironmentVariable("OLLAMA_MODELS", store);
        try
        {
            var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
            using var fromFolder = new CoralChatClient(new CoralChatClientOptions { ModelPath = folder, ContextLength = 128 });
            string expected = (await fromFolder.GetResponseAsync("Hello there", options)).Text;
            foreach (string name in new[] { "ollama:tiny", "ollama:tiny:latest", "ollama:library/tiny" })
            {
                using var client = new CoralChatClient(new CoralChatClientOptions { ModelPath = name, ContextLength = 128 });
                ChatResponse response = await client.GetResponseAsync("Hello there", options);
                Assert.Equal(expected, response.Text);
                Assert.Equal(name["ollama:".Length..], response.ModelId);
            }

            string? missing = CoralChatClientOptionsValidator.Check(new CoralChatClientOptions { ModelPath = "ollama:llama3.2" });
            Assert.Contains("has not been pulled", missing);
            Assert.Contains(Path.Combine("library", "llama3.2", "latest"), missing);
            Assert.Contains("layers", CoralChatClientOptionsValidator.Check(new CoralChatClientOptions { ModelPath = "ollama:broken" }));
            Assert.Contains("missing", CoralChatClientOptionsValidator.Check(new CoralChatClientOptions { ModelPath = "ollama:gone" }));
        }
        finally
        {
            Environment.SetEnvironmentVariable("OLLAMA_MODELS", saved);
        }
    }

    /// <summary>Q4_K rows packed as they are (<see cref="PackedMatrix.TryFromBlocks"/>: two parts, one with a q/k head
    /// permutation, and a row order): each output equals the dequantized rows times the input (f32 activations: to f32
    /// rounding; int8 activations: to their rounding), and every row of a call has the same bits at 1 to 13 rows.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public unsafe void Q4Blocks_MultiplyAsTheirValues_AtAnyRowCount(bool int8)
    {
        if (!PackedMatrix.Supported || (int8 && !PackedMatrix.Int8Supported))
        {
            return;
        }

        using var activations = new Int8Activations(int8);
        const int K = 512;
        var random = new Random(4);
        byte[] Rows(GgmlType type, int rows)
        {
            var (per, size) = GgmlBlocks.Block(type);
            var bytes = new byte[rows * K / per * size];
            random.NextBytes(bytes);
            for (int b = 0; b < bytes.Length; b += size)
            {
                // Finite f16 scales (and minimums) in [0.001, 0.03).
                BitConverter.TryWriteBytes(bytes.AsSpan(b), (Half)(0.001 + (0.029 * random.NextDouble())));
                BitConverter.TryWriteBytes(bytes.AsSpan(b + 2), (Half)(0.001 + (0.029 * random.NextDouble())));
            }

            return bytes;
        }

        byte[] q4k = Rows(GgmlType.Q4_K, 64), more = Rows(GgmlType.Q4_K, 24);
        long[] order = [.. Enumerable.Range(0, 88).Reverse().Select(i => (long)i)];
        fixed (byte* a = q4k, b = more)
        {
            using PackedMatrix m = PackedMatrix.TryFromBlocks([((nint)a, GgmlType.Q4_K, 64, 4), ((nint)b, GgmlType.Q4_K, 24, 0)], K, order)!;
            Assert.Null(PackedMatrix.TryFromBlocks([((nint)b, GgmlType.Q4_1, 24, 0)], K, null));   // Q4_1 goes the Q8_0 way
            Assert.Equal(WeightQuantization.Q4_K, m.Quantization);
            Assert.Equal(int8, m.UsesInt8Activations);
            // The reference: the dequantized rows in the same permutation and order.
            var values = new float[88 * K];
            fixed (float* v = values)
            {
                GgmlBlocks.Dequantize(GgmlType.Q4_K, a, 64 * K / 256, v);
                GgmlBlocks.Dequantize(GgmlType.Q4_K, b, 24 * K / 256, v + (64 * K));
            }

            int[] hf = [.. Enumerable.Range(0, 64).Select(r => (r / 16 * 16) + (2 * (r % 16 % 8)) + (r % 16 / 8)), .. Enumerable.Range(64, 24)];
            float[] x = [.. Enumerable.Range(0, 13 * K).Select(_ => (float)((random.NextDouble() * 2) - 1))];
            float[]? first = null;
            foreach (int rows in new[] { 13, 1, 2, 3, 4, 5, 8 })
            {
                var y = new float[rows * 88];
                fixed (float* xp = x, yp = y)
                {
                    m.Multiply(xp, rows, yp);
                }

                first ??= y;
                for (int r = 0; r < rows; r++)
                {
                    Assert.Equal(first.AsSpan(r * 88, 88).ToArray(), y.AsSpan(r * 88, 88).ToArray());   // the same bits at any row count
                }

                for (int o = 0; o < 88; o++)
                {
                    int source = hf[(int)order[o]];
                    double expected = Enumerable.Range(0, K).Sum(i => (double)values[(source * K) + i] * x[i]);
                    double scale = Enumerable.Range(0, K).Sum(i => Math.Abs((double)values[(source * K) + i] * x[i]));
                    Assert.True(Math.Abs(y[o] - expected) <= (int8 ? 0.02 : 1e-5) * scale, $"output {o}: {y[o]} against {expected} (scale {scale})");
                }
            }
        }
    }

    /// <summary>A Q4_K_M file written by llama.cpp's quantizer loads with its Q4_K projections as they are (the Q8_0 default
    /// keeps them, makes Q8_0 blocks of the rest; a mixture of experts' experts too): fewer bytes than all Q8_0, logits
    /// close to the file's values.</summary>
    [Theory]
    [InlineData("llama-demo-width")]
    [InlineData("qwen3moe-wide")]
    public void Q4KFile_KeepsItsBlocks(string name)
    {
        string folder = TransformerModelTests.ModelFor(name);
        string dir = ModelZoo.TempFolder("gguf-import-q4k-native-" + name);
        string f32 = Path.Combine(dir, "f32.gguf"), quantized = Path.Combine(dir, "q4_k_m.gguf");
        GgufExporter.Export(folder, f32, "f32");
        LlamaCppOracle.EnsureLoaded();
        var options = LLamaModelQuantizeParams.Default();
        options.ftype = LLamaFtype.MOSTLY_Q4_K_M;
        options.nthread = 2;
        Assert.Equal(0u, NativeApi.llama_model_quantize(f32, quantized, ref options));
        using var native = TransformerModel.Load(quantized, torch.CPU, ScalarType.Float32, 256, quantization: WeightQuantization.Q8_0);
        using var values = TransformerModel.Load(quantized, torch.CPU, ScalarType.Float32, 256);
        using var q8 = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 256, quantization: WeightQuantization.Q8_0);
        if (!PackedMatrix.Supported)
        {
            return;
        }

        Assert.Contains(native.PackedLayerWeights, w => w.Quantization == WeightQuantization.Q4_K);
        Assert.True(native.PackedLayerWeights.Sum(w => w.Bytes) < 0.8 * q8.PackedLayerWeights.Sum(w => w.Bytes));
        long[] ids = [.. HfTokenizer.Load(folder).Encode(Text).Select(x => (long)x)];
        float[] n = TorchTestHelpers.FullLogits(native, ids), v = TorchTestHelpers.FullLogits(values, ids);
        float scale = v.Max(MathF.Abs), diff = TorchTestHelpers.MaxAbsDiff(n, v);
        if (name.Contains("moe", StringComparison.Ordinal))
        {
            // Near-tied routers tip under int8 activations (as against llama.cpp above): the blocks are checked by the
            // dense model; here that the experts are kept, and the logits stay near the file's.
            Assert.Contains(native.PackedLayerWeights, w => w.Quantization == WeightQuantization.Q4_K && w.Outputs == 2 * native.Config.ExpertIntermediateSize);
            Assert.True(diff < 0.5f * scale, $"native blocks vs the file's f32 values: {diff} of {scale}");
            return;
        }

        Assert.True(diff < (PackedMatrix.Int8Activations ? 0.02f : 1e-3f) * scale, $"native blocks vs the file's f32 values: {diff} of {scale}");
    }

    /// <summary>The CLI takes a GGUF file wherever it takes a model: <c>coral info</c> describes what its import reads, and
    /// <c>coral draft-init --target</c> writes a drafter that an engine on the file loads and speculates with losslessly.</summary>
    [Fact]
    public async Task Cli_TakesAGgufFile_ForInfoAndDrafterInit()
    {
        string folder = TransformerModelTests.ModelFor("llama-tied-scaled");
        string dir = ModelZoo.TempFolder("gguf-import-cli");
        string gguf = Path.Combine(dir, "tiny.gguf"), drafter = Path.Combine(dir, "drafter");
        GgufExporter.Export(folder, gguf, "f32");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["info", "--model", gguf], stdout, stderr, TextReader.Null));
        Assert.Contains("LlamaForCausalLM", stdout.ToString());
        Assert.Equal(0, await Coral.Cli.CliApp.RunAsync(["draft-init", "--target", gguf, "--out", drafter, "--seed", "3"], new StringWriter(), stderr, TextReader.Null));
        using var engine = InferenceEngine.Load(gguf, torch.CPU, ScalarType.Float32, 256, draftFolder: drafter);
        var request = new GenerationRequest(engine.Tokenizer.Encode("Once upon a time"), SamplingParameters.Greedy, 24, []);
        GenerationResult plain = engine.Generate(request with { Speculative = false }, null, CancellationToken.None);
        engine.ResetCache();
        GenerationResult speculative = engine.Generate(request, null, CancellationToken.None);
        Assert.Equal(plain.TokenIds, speculative.TokenIds);
        Assert.NotNull(speculative.Speculative);
    }

    /// <summary>Bad files fail with a <see cref="CoralModelException"/> naming the file and what is wrong: not GGUF,
    /// truncated inside the header or the data, an architecture not read from GGUF.</summary>
    [Fact]
    public void BadFiles_FailNamingTheProblem()
    {
        string folder = TransformerModelTests.ModelFor("qwen2");
        string dir = ModelZoo.TempFolder("gguf-import-bad");
        string good = Path.Combine(dir, "good.gguf");
        GgufExporter.Export(folder, good, "f32");
        byte[] bytes = File.ReadAllBytes(good);

        string notGguf = Path.Combine(dir, "not.gguf");
        File.WriteAllBytes(notGguf, [.. "NOPE"u8.ToArray(), .. bytes[4..]]);
        Assert.Contains("no GGUF magic", Assert.Throws<CoralModelException>(() => GgufImporter.Prepare(notGguf)).Message);

        string header = Path.Combine(dir, "header.gguf");
        File.WriteAllBytes(header, bytes[..200]);
        CoralModelException inHeader = Assert.Throws<CoralModelException>(() => GgufImporter.Prepare(header));
        Assert.Contains("header.gguf", inHeader.Message);
        Assert.Contains("truncated", inHeader.Message);

        Assert.Contains("does not exist", Assert.Throws<CoralModelException>(() => GgufFile.Open(Path.Combine(dir, "gone.gguf"))).Message);

        string data = Path.Combine(dir, "data.gguf");
        File.WriteAllBytes(data, bytes[..(bytes.Length - 100)]);
        CoralModelException inData = Assert.Throws<CoralModelException>(() => GgufImporter.Prepare(data));
        Assert.Contains("runs past the end of the file", inData.Message);

        string mamba = Path.Combine(dir, "mamba.gguf");
        var writer = new GgufWriter();
        writer.Add("general.architecture", "mamba");
        writer.Write(mamba);
        CoralModelException arch = Assert.Throws<CoralModelException>(() => InferenceEngine.Load(mamba, torch.CPU, ScalarType.Float32, 64));
        Assert.Contains("general.architecture", arch.Message);
        Assert.Contains("'mamba'", arch.Message);

        var options = new CoralChatClientOptions { ModelPath = Path.Combine(dir, "missing.gguf") };
        Assert.Contains("does not exist", CoralChatClientOptionsValidator.Check(options));
    }
}

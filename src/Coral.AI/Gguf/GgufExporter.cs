using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// Converts a Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3 with a byte-level BPE tokenizer) to a GGUF file
/// that llama.cpp loads, so the same weights can run under llama.cpp/LLamaSharp/Ollama.
/// </summary>
public static class GgufExporter
{

    /// <summary>Writes <paramref name="outputPath"/> from the model in <paramref name="modelFolder"/>.</summary>
    /// <param name="modelFolder">The Hugging Face model folder.</param>
    /// <param name="outputPath">The GGUF file to write.</param>
    /// <param name="tensorType">The storage type of the 2-D weights: <c>f32</c>, <c>f16</c> or <c>bf16</c> (norms stay f32);
    /// or <c>q8_0</c> / <c>q4_0</c>: the decoder's projections (experts included) as Q8_0 / Q4_0 blocks — the values a
    /// model loaded with those weights multiplies by — and every other tensor f32, as llama.cpp's quantizer makes such a
    /// file with the token embedding and output types kept.</param>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    /// <exception cref="CoralModelException">The model cannot be exported.</exception>
    public static void Export(string modelFolder, string outputPath, string tensorType = "f32") =>
        Export(modelFolder, outputPath, tensorType, preTokenizerName: null);

    /// <summary>As <see cref="Export(string, string, string)"/>, with <paramref name="preTokenizerName"/> (when given)
    /// written as <c>tokenizer.ggml.pre</c> instead of the first name of the folder's pre-tokenizer.</summary>
    internal static void Export(string modelFolder, string outputPath, string tensorType, string? preTokenizerName)
    {
        _ = Throw.IfNullOrWhitespace(modelFolder);
        _ = Throw.IfNullOrWhitespace(outputPath);
        WeightQuantization quantized = tensorType.ToLowerInvariant() switch
        {
            "q8_0" => WeightQuantization.Q8_0,
            "q4_0" => WeightQuantization.Q4_0,
            _ => WeightQuantization.None,
        };
        (uint ggmlType, ScalarType torchType) = tensorType.ToLowerInvariant() switch
        {
            "f32" or "float32" or "q8_0" or "q4_0" => (GgufWriter.TypeF32, ScalarType.Float32),
            "f16" or "float16" => (GgufWriter.TypeF16, ScalarType.Float16),
            "bf16" or "bfloat16" => (GgufWriter.TypeBF16, ScalarType.BFloat16),
            _ => throw new ArgumentException($"Tensor type '{tensorType}' is not supported; use f32, f16, bf16, q8_0 or q4_0.", nameof(tensorType)),
        };

        ModelConfig c = ModelConfig.Load(Path.Combine(modelFolder, "config.json"));
        string arch = c.Family switch
        {
            ModelFamily.Llama or ModelFamily.Mistral or ModelFamily.Mixtral => "llama",   // llama.cpp runs Mixtral as a llama with experts
            ModelFamily.Qwen2 => "qwen2",
            ModelFamily.Phi3 => "phi3",
            ModelFamily.Gemma => "gemma",
            ModelFamily.Gemma2 => "gemma2",
            ModelFamily.Gemma3 => "gemma3",
            ModelFamily.Granite => "granite",
            ModelFamily.GraniteMoe => "granitemoe",
            ModelFamily.Cohere => "command-r",
            ModelFamily.Cohere2 => "cohere2",
            ModelFamily.SmolLM3 => "smollm3",
            ModelFamily.Olmo2 => "olmo2",
            ModelFamily.Qwen3Moe => "qwen3moe",
            ModelFamily.Qwen2Moe => "qwen2moe",
            ModelFamily.Olmoe => "olmoe",
            _ => "qwen3",
        };
        bool gemma = c.Family is ModelFamily.Gemma2 or ModelFamily.Gemma3;
        bool permuteQk = arch is "llama" or "granite" or "granitemoe" or "smollm3";   // llama.cpp's "normal" (adjacent-pair) RoPE
        var g = new GgufWriter();
        g.Add("general.architecture", arch);
        g.Add("general.name", Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelFolder))));
        g.Add("general.file_type", quantized switch
        {
            WeightQuantization.Q8_0 => 7u,   // llama.cpp's MOSTLY_Q8_0
            WeightQuantization.Q4_0 => 2u,   // MOSTLY_Q4_0
            _ => ggmlType == GgufWriter.TypeF32 ? 0u : ggmlType == GgufWriter.TypeF16 ? 1u : 32u,
        });
        g.Add($"{arch}.context_length", (uint)c.MaxPositionEmbeddings);
        g.Add($"{arch}.embedding_length", (uint)c.HiddenSize);
        g.Add($"{arch}.block_count", (uint)c.NumLayers);
        g.Add($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        g.Add($"{arch}.attention.head_count", (uint)c.NumHeads);
        g.Add($"{arch}.attention.head_count_kv", (uint)c.NumKvHeads);
        g.Add($"{arch}.attention.key_length", (uint)c.HeadDim);
        g.Add($"{arch}.attention.value_length", (uint)c.HeadDim);
        g.Add(c.LayerNorms ? $"{arch}.attention.layer_norm_epsilon" : $"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        if (arch != "phi3" && c.RotaryDim != c.HeadDim)
        {
            // llama.cpp's llama, qwen2 and qwen3 graphs assert n_rot = head_dim (a GGUF with less aborts the loader).
            throw new CoralModelException(Path.Combine(modelFolder, "config.json"), "partial_rotary_factor",
                $"llama.cpp's {arch} architecture rotates whole heads: a partial rotation cannot be exported for it.");
        }

        g.Add($"{arch}.rope.dimension_count", (uint)c.RotaryDim);   // NEOX rotation of the first n_rot dimensions, as partial_rotary_factor
        g.Add($"{arch}.rope.freq_base", (float)c.RopeTheta);
        g.Add($"{arch}.vocab_size", (uint)c.VocabSize);
        if (c.Family == ModelFamily.Phi3 && c.SlidingWindow is int window)
        {
            g.Add($"{arch}.attention.sliding_window", (uint)window);
        }

        if (gemma)
        {
            AddGemma(g, arch, c, Path.Combine(modelFolder, "config.json"));
        }

        if (c.NumExperts > 0)
        {
            if (Enumerable.Range(0, c.NumLayers).Any(i => !c.IsMoe(i)))
            {
                throw new CoralModelException(Path.Combine(modelFolder, "config.json"), "mlp_only_layers",
                    $"llama.cpp's {arch} has experts in every layer; this model has dense ones.");
            }

            g.Add($"{arch}.expert_count", (uint)c.NumExperts);
            g.Add($"{arch}.expert_used_count", (uint)c.ExpertsPerToken);
            g.Add($"{arch}.expert_feed_forward_length", (uint)c.ExpertIntermediateSize);
            if (c.SharedExpertIntermediateSize > 0)
            {
                g.Add($"{arch}.expert_shared_feed_forward_length", (uint)c.SharedExpertIntermediateSize);
            }
        }

        if (c.Family is ModelFamily.Cohere or ModelFamily.Cohere2)
        {
            // llama.cpp's command-r / cohere2 rotate adjacent pairs, as these checkpoints store q and k (no permutation);
            // cohere2 slides three layers of every four, rotating only those.
            g.Add($"{arch}.logit_scale", 1f / c.LogitDivisor);
            if (c.Family == ModelFamily.Cohere2)
            {
                if (c.SlidingWindow is not int w || Enumerable.Range(0, c.NumLayers).Any(i => c.IsSliding(i) != ((i + 1) % 4 != 0) || c.UsesRope(i) != c.IsSliding(i)))
                {
                    throw new CoralModelException(Path.Combine(modelFolder, "config.json"), "sliding_window_pattern",
                        "llama.cpp's cohere2 slides (and rotates) three layers of every four; this model's layers differ.");
                }

                g.Add($"{arch}.attention.sliding_window", (uint)w);
            }
        }

        if (c.Family is ModelFamily.Granite or ModelFamily.GraniteMoe)
        {
            g.Add($"{arch}.embedding_scale", c.EmbeddingScale);
            g.Add($"{arch}.residual_scale", c.ResidualScale);
            g.Add($"{arch}.attention.scale", (float)(c.AttentionMultiplier ?? 1.0));   // the config's own value
            g.Add($"{arch}.logit_scale", c.LogitDivisor);
        }

        if (c.Family == ModelFamily.SmolLM3 && Enumerable.Range(0, c.NumLayers).Any(i => c.UsesRope(i) != ((i + 1) % 4 != 0)))
        {
            // llama.cpp's smollm3 leaves RoPE out of every fourth layer, whatever the config says.
            throw new CoralModelException(Path.Combine(modelFolder, "config.json"), "no_rope_layers",
                "llama.cpp's smollm3 leaves RoPE out of every fourth layer; this model's layers differ.");
        }
        if (c.RopeScaling is { Kind: RopeScalingKind.Linear } linear)
        {
            g.Add($"{arch}.rope.scaling.type", "linear");   // llama.cpp divides every frequency by the factor itself
            g.Add($"{arch}.rope.scaling.factor", (float)linear.Factor);
        }
        else if (c.RopeScaling is { Kind: RopeScalingKind.LongRope } longRope)
        {
            // As llama.cpp's phi3 converter writes it: no scaling type, the factors as two F32 vectors.
            g.Add($"{arch}.rope.scaling.attn_factor", (float)longRope.AttentionFactor);
            g.Add($"{arch}.rope.scaling.original_context_length", (uint)longRope.OriginalMaxPositions);
            g.AddTensor("rope_factors_long.weight", [longRope.LongFactors.Count], GgufWriter.TypeF32, F32Bytes(longRope.LongFactors));
            g.AddTensor("rope_factors_short.weight", [longRope.ShortFactors.Count], GgufWriter.TypeF32, F32Bytes(longRope.ShortFactors));
        }
        else if (c.RopeScaling is { Kind: RopeScalingKind.Yarn } yarn)
        {
            // llama.cpp's own YaRN (its keys): the same ramp and an attention factor of 0.1·ln(factor) + 1, with β 32 / 1.
            if (yarn.BetaFast != 32 || yarn.BetaSlow != 1 || !yarn.Truncate
                || Math.Abs(yarn.AttentionFactor - ((0.1 * Math.Log(yarn.Factor)) + 1)) > 1e-9)
            {
                throw new CoralModelException(Path.Combine(modelFolder, "config.json"), "rope_scaling",
                    "YaRN with beta_fast/beta_slow/truncate/attention_factor other than the defaults cannot be exported to GGUF.");
            }

            g.Add($"{arch}.rope.scaling.type", "yarn");
            g.Add($"{arch}.rope.scaling.factor", (float)yarn.Factor);
            g.Add($"{arch}.rope.scaling.original_context_length", (uint)yarn.OriginalMaxPositions);
        }

        AddTokenizer(g, modelFolder, c, preTokenizerName);

        using var reader = new CheckpointReader(modelFolder);
        using var noGrad = torch.no_grad();
        void Put(string ggufName, string hfName, long[] shape, bool norm = false, int permuteHeads = 0)
        {
            // Gemma's norms as llama.cpp multiplies by them: 1 + the stored offset (as its converter writes them).
            using Tensor t = norm ? DecoderLayer.LoadNorm(reader, hfName, shape[0], c, torch.CPU) : reader.Take(hfName, shape, ScalarType.Float32);
            using Tensor p = permuteHeads > 0 ? PermuteForInterleavedRope(t, permuteHeads) : t.alias();
            bool f32 = norm || shape.Length == 1;
            AddWeight(ggufName, p, f32 ? GgufWriter.TypeF32 : ggmlType, f32 ? ScalarType.Float32 : torchType, projection: false);
        }

        // A decoder projection (q/k/v/o, gate/up/down, experts): quantized blocks in a q8_0/q4_0 file where its rows are whole blocks.
        void Project(string ggufName, string hfName, long[] shape, int permuteHeads = 0)
        {
            using Tensor t = reader.Take(hfName, shape, ScalarType.Float32);
            using Tensor p = permuteHeads > 0 ? PermuteForInterleavedRope(t, permuteHeads) : t.alias();
            AddWeight(ggufName, p, ggmlType, torchType, projection: true);
        }

        void AddWeight(string ggufName, Tensor w, uint type, ScalarType stored, bool projection)
        {
            if (projection && quantized != WeightQuantization.None && QuantBlocks.Fits(w.shape[^1]))
            {
                try
                {
                    g.AddTensor(ggufName, w.shape, QuantBlocks.GgmlType(quantized), QuantBlocks.Gguf(w, quantized));
                }
                catch (ArgumentException e)
                {
                    throw new CoralModelException(modelFolder, ggufName, $"cannot be quantized to {quantized}: {e.Message}", e);
                }

                return;
            }

            using Tensor outT = type == GgufWriter.TypeF32 ? w.contiguous() : w.to(stored).contiguous();
            g.AddTensor(ggufName, w.shape, type, outT.bytes.ToArray());
        }

        long d = c.HiddenSize, hd = c.HeadDim, nq = c.NumHeads * hd, nkv = c.NumKvHeads * hd, ff = c.IntermediateSize;
        string root = reader.DecoderRoot;
        Put("token_embd.weight", root + "embed_tokens.weight", [c.VocabSize, d]);
        Put("output_norm.weight", root + "norm.weight", [d], norm: true);
        if (!c.TieWordEmbeddings)
        {
            Put("output.weight", reader.HeadName, [c.VocabSize, d]);
        }

        if (c.RopeScaling is { Kind: RopeScalingKind.Llama3 })
        {
            float[] factors = RopeFrequencyFactors(c);
            g.AddTensor("rope_freqs.weight", [factors.Length], GgufWriter.TypeF32, F32Bytes([.. factors.Select(x => (double)x)]));
        }

        for (int i = 0; i < c.NumLayers; i++)
        {
            string h = $"{root}layers.{i}.", b = $"blk.{i}.";
            if (c.NormPlacement != NormPlacement.Post)
            {
                Put(b + "attn_norm.weight", h + "input_layernorm.weight", [d], norm: true);
            }

            if (c.FusedProjections)
            {
                Project(b + "attn_qkv.weight", h + "self_attn.qkv_proj.weight", [nq + 2 * nkv, d]);   // phi3: NEOX RoPE, no permutation
            }
            else
            {
                Project(b + "attn_q.weight", h + "self_attn.q_proj.weight", [nq, d], permuteHeads: permuteQk ? c.NumHeads : 0);
                Project(b + "attn_k.weight", h + "self_attn.k_proj.weight", [nkv, d], permuteHeads: permuteQk ? c.NumKvHeads : 0);
                Project(b + "attn_v.weight", h + "self_attn.v_proj.weight", [nkv, d]);
            }

            Project(b + "attn_output.weight", h + "self_attn.o_proj.weight", [d, nq]);
            if (c.QkvBias)
            {
                Put(b + "attn_q.bias", h + "self_attn.q_proj.bias", [nq], permuteHeads: permuteQk ? c.NumHeads : 0);
                Put(b + "attn_k.bias", h + "self_attn.k_proj.bias", [nkv], permuteHeads: permuteQk ? c.NumKvHeads : 0);
                Put(b + "attn_v.bias", h + "self_attn.v_proj.bias", [nkv]);
            }

            if (c.OutputBias)
            {
                Put(b + "attn_output.bias", h + "self_attn.o_proj.bias", [d]);
            }

            if (c.QkNorm && c.QkNormWholeProjection)
            {
                Put(b + "attn_q_norm.weight", h + "self_attn.q_norm.weight", [nq], norm: true);
                Put(b + "attn_k_norm.weight", h + "self_attn.k_norm.weight", [nkv], norm: true);
            }
            else if (c.QkNorm)
            {
                Put(b + "attn_q_norm.weight", h + "self_attn.q_norm.weight", [hd], norm: true);
                Put(b + "attn_k_norm.weight", h + "self_attn.k_norm.weight", [hd], norm: true);
            }

            if (c.ParallelBlock)
            {
                // Cohere: the MLP reads the attention's normed input, no norm of its own.
            }
            else if (c.NormPlacement == NormPlacement.Pre)
            {
                Put(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", [d], norm: true);
            }
            else
            {
                Put(b + "post_attention_norm.weight", h + "post_attention_layernorm.weight", [d], norm: true);
                if (c.NormPlacement == NormPlacement.Sandwich)
                {
                    Put(b + "ffn_norm.weight", h + "pre_feedforward_layernorm.weight", [d], norm: true);
                }

                Put(b + "post_ffw_norm.weight", h + "post_feedforward_layernorm.weight", [d], norm: true);
            }
            if (c.IsMoe(i))
            {
                // The router, and each projection of the experts stacked as one [E, rows, cols] tensor.
                Put(b + "ffn_gate_inp.weight", c.RouterName(h), [c.NumExperts, d]);
                long fe = c.ExpertIntermediateSize;
                foreach (var (gguf, hf, rows, cols) in new[] { ("ffn_gate_exps", "gate", fe, d), ("ffn_up_exps", "up", fe, d), ("ffn_down_exps", "down", d, fe) })
                {
                    using var scope = torch.NewDisposeScope();
                    var (gateUpName, downName) = ModelConfig.StackedExpertNames(h);
                    Tensor stacked = c.StackedExperts
                        ? hf == "down"   // Granite-MoE stores them stacked already: gate rows, then up, in input_linear
                            ? reader.Take(downName, [c.NumExperts, d, fe], ScalarType.Float32)
                            : reader.Take(gateUpName, [c.NumExperts, 2 * fe, d], ScalarType.Float32).narrow(1, hf == "gate" ? 0 : fe, fe)
                        : torch.stack(Enumerable.Range(0, c.NumExperts).Select(e => reader.Take(c.ExpertWeightName(h, e, hf), [rows, cols], ScalarType.Float32)).ToArray());
                    AddWeight($"{b}{gguf}.weight", stacked, ggmlType, torchType, projection: true);
                }

                if (c.SharedExpertIntermediateSize > 0)
                {
                    long fs = c.SharedExpertIntermediateSize;
                    Put(b + "ffn_gate_inp_shexp.weight", ModelConfig.SharedExpertGateName(h), [1, d]);
                    Project(b + "ffn_gate_shexp.weight", ModelConfig.SharedExpertWeightName(h, "gate"), [fs, d]);
                    Project(b + "ffn_up_shexp.weight", ModelConfig.SharedExpertWeightName(h, "up"), [fs, d]);
                    Project(b + "ffn_down_shexp.weight", ModelConfig.SharedExpertWeightName(h, "down"), [d, fs]);
                }

                continue;
            }

            if (c.FusedProjections)
            {
                Project(b + "ffn_up.weight", h + "mlp.gate_up_proj.weight", [2 * ff, d]);   // phi3: gate|up in one tensor, gate first
            }
            else
            {
                Project(b + "ffn_gate.weight", h + "mlp.gate_proj.weight", [ff, d]);
                Project(b + "ffn_up.weight", h + "mlp.up_proj.weight", [ff, d]);
            }

            Project(b + "ffn_down.weight", h + "mlp.down_proj.weight", [d, ff]);
        }

        g.Write(outputPath);
    }

    /// <summary>Gemma-2/3's keys, where llama.cpp's graph computes what the config says: its sliding layers come in a fixed
    /// pattern (Gemma-2 every other layer from the first, Gemma-3 five of six, the local RoPE base 10,000) and its query
    /// scale is 1/√head_dim (1/√(d/heads) for the 27B shapes), so a config that differs cannot be exported.</summary>
    private static void AddGemma(GgufWriter g, string arch, ModelConfig c, string configPath)
    {
        int pattern = c.Family == ModelFamily.Gemma2 ? 2 : 6;
        if (c.SlidingWindow is not int window || Enumerable.Range(0, c.NumLayers).Any(i => c.IsSliding(i) != ((i + 1) % pattern != 0)))
        {
            throw new CoralModelException(configPath, "layer_types",
                $"llama.cpp's {arch} slides {(pattern == 2 ? "every other layer from the first" : "five layers of every six")}; this model's layers differ.");
        }

        if (c.LocalRopeTheta is double local && local != 10000)
        {
            throw new CoralModelException(configPath, "rope_local_base_freq", $"llama.cpp's {arch} uses 10000 for the sliding layers, not {local}.");
        }

        bool large = c.NumLayers == (c.Family == ModelFamily.Gemma2 ? 46 : 62);   // llama.cpp's 27B
        double theirs = large ? 1.0 / Math.Sqrt(c.HiddenSize / c.NumHeads) : 1.0 / Math.Sqrt(c.HeadDim);
        if (Math.Abs(theirs - c.AttentionScale) > 1e-12)
        {
            throw new CoralModelException(configPath, "query_pre_attn_scalar",
                $"llama.cpp's {arch} scales queries by {theirs:G6} for this shape, the config by {c.AttentionScale:G6}.");
        }

        g.Add($"{arch}.attention.sliding_window", (uint)window);
        if (c.AttentionSoftcap is double attention)
        {
            g.Add($"{arch}.attn_logit_softcapping", (float)attention);
        }

        if (c.FinalLogitSoftcap is double final)
        {
            g.Add($"{arch}.final_logit_softcapping", (float)final);
        }
    }

    /// <summary>
    /// HF stores q/k rows for rotate_half RoPE (pairs (i, i + hd/2)); llama.cpp's "normal" RoPE rotates adjacent pairs
    /// (2i, 2i + 1). Within each head, new row 2i + j takes old row j·hd/2 + i.
    /// </summary>
    private static Tensor PermuteForInterleavedRope(Tensor w, int heads)
    {
        long rows = w.shape[0];
        long hd = rows / heads;
        long[] rest = w.shape.Skip(1).ToArray();
        return w.reshape([heads, 2, hd / 2, .. rest]).transpose(1, 2).reshape([rows, .. rest]);
    }

    /// <summary>llama.cpp's rope_freqs for llama3 scaling: per-frequency divisors turning the base frequencies into the
    /// scaled ones.</summary>
    internal static float[] RopeFrequencyFactors(ModelConfig c)
    {
        double[] plain = RotaryTables.InverseFrequencies(c, applyScaling: false);
        double[] scaled = RotaryTables.InverseFrequencies(c, applyScaling: true);
        return plain.Select((p, i) => (float)(p / scaled[i])).ToArray();
    }

    private static byte[] F32Bytes(IReadOnlyList<double> values) =>
        MemoryMarshal.AsBytes(values.Select(x => (float)x).ToArray().AsSpan()).ToArray();

    private static void AddTokenizer(GgufWriter g, string folder, ModelConfig c, string? preTokenizerName)
    {
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = ModelConfig.ReadJsonObject(path);
        HfTokenizer tokenizer = HfTokenizer.Load(folder);
        if (!tokenizer.IsByteLevel)
        {
            AddSentencePiece(g, path, root, tokenizer, c);
            return;
        }

        JsonObject vocab = (JsonObject)root["model"]!["vocab"]!;
        var tokens = new string[c.VocabSize];
        var types = new int[c.VocabSize];
        foreach (var (piece, id) in vocab)
        {
            int i = id!.GetValue<int>();
            if (i < tokens.Length)
            {
                tokens[i] = piece;
                types[i] = 1;
            }
        }

        foreach (JsonNode? n in root["added_tokens"] as JsonArray ?? [])
        {
            int i = n!["id"]!.GetValue<int>();
            if (i < tokens.Length)
            {
                tokens[i] = n["content"]!.GetValue<string>();
                types[i] = n["special"]?.GetValue<bool>() ?? false ? 3 : 4;
            }
        }

        for (int i = 0; i < tokens.Length; i++)
        {
            if (tokens[i] is null)
            {
                tokens[i] = $"[PAD{i}]";
                types[i] = 5;
            }
        }

        var merges = ((JsonArray?)root["model"]!["merges"] ?? [])
            .Select(m => m is JsonArray a ? $"{a[0]} {a[1]}" : m!.GetValue<string>()).ToArray();
        IReadOnlyList<string> patterns = PreTokenizerPipeline.Parse(path, root["pre_tokenizer"]).IsolatedPatterns
            ?? throw new CoralModelException(path, "pre_tokenizer", "only pre-tokenizers that isolate regex matches can be written to GGUF.");
        bool ignoreMerges = root["model"]?["ignore_merges"]?.GetValue<bool>() ?? false;
        string pre = preTokenizerName ?? GgufPreTokenizers.Match(patterns, ignoreMerges)?.Names[0] ?? throw new CoralModelException(path, "pre_tokenizer",
            $"this split ({string.Join(" then ", patterns)}{(ignoreMerges ? ", ignore_merges" : "")}) has no known llama.cpp pre-tokenizer name.");

        g.Add("tokenizer.ggml.model", "gpt2");
        g.Add("tokenizer.ggml.pre", pre);
        g.Add("tokenizer.ggml.tokens", tokens);
        g.Add("tokenizer.ggml.token_type", types);
        g.Add("tokenizer.ggml.merges", merges);
        AddSpecialIds(g, tokenizer, c);
    }

    /// <summary>
    /// A SentencePiece-style BPE (Metaspace, byte fallback: Llama-2, Mistral v0.1) as llama.cpp's <c>llama</c> tokenizer:
    /// the pieces, a score per piece — the piece a merge makes scores −(its rank), so llama.cpp's highest-score-first
    /// merging follows the merge list —, token types (1 normal, 2 unknown, 3 control, 6 byte fallback), BOS/EOS/UNK ids.
    /// </summary>
    private static void AddSentencePiece(GgufWriter g, string path, JsonObject root, HfTokenizer tokenizer, ModelConfig c)
    {
        if (root["model"]?["byte_fallback"]?.GetValue<bool>() != true)
        {
            throw new CoralModelException(path, "model.byte_fallback", "only byte-level BPE and SentencePiece BPE with byte fallback can be exported to GGUF.");
        }

        var tokens = new string[c.VocabSize];
        var types = new int[c.VocabSize];
        var scores = new float[c.VocabSize];
        foreach (var (piece, id) in (JsonObject)root["model"]!["vocab"]!)
        {
            int i = id!.GetValue<int>();
            if (i < tokens.Length)
            {
                tokens[i] = piece;
                types[i] = piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece.EndsWith('>') ? 6 : 1;
            }
        }

        var merged = new Dictionary<string, int>(StringComparer.Ordinal);
        int rank = 0;
        foreach (JsonNode? m in (JsonArray?)root["model"]!["merges"] ?? [])
        {
            string[] pair = m is JsonArray a ? [a[0]!.GetValue<string>(), a[1]!.GetValue<string>()] : m!.GetValue<string>().Split(' ', 2);
            merged.TryAdd(pair[0] + pair[1], rank++);
        }

        for (int i = 0; i < tokens.Length; i++)
        {
            if (tokens[i] is string piece && merged.TryGetValue(piece, out int r))
            {
                scores[i] = -r;
            }
        }

        foreach (JsonNode? n in root["added_tokens"] as JsonArray ?? [])
        {
            int i = n!["id"]!.GetValue<int>();
            if (i < tokens.Length)
            {
                tokens[i] = n["content"]!.GetValue<string>();
                types[i] = n["special"]?.GetValue<bool>() ?? false ? 3 : 4;
            }
        }

        string? unk = root["model"]!["unk_token"]?.GetValue<string>();
        for (int i = 0; i < tokens.Length; i++)
        {
            if (tokens[i] is null)
            {
                (tokens[i], types[i]) = ($"[PAD{i}]", 5);
            }
            else if (tokens[i] == unk)
            {
                types[i] = 2;
            }
        }

        g.Add("tokenizer.ggml.model", "llama");
        g.Add("tokenizer.ggml.tokens", tokens);
        g.Add("tokenizer.ggml.scores", scores);
        g.Add("tokenizer.ggml.token_type", types);
        if (unk is not null && Array.IndexOf(tokens, unk) is int u and >= 0)
        {
            g.Add("tokenizer.ggml.unknown_token_id", (uint)u);
        }

        // Whether a '▁' goes before the text, as the tokenizer really does it.
        g.Add("tokenizer.ggml.add_space_prefix", tokenizer.Encode("a", addSpecialTokens: false) is [int first, ..] && tokens[first].StartsWith('\u2581'));

        AddSpecialIds(g, tokenizer, c);
    }

    /// <summary>BOS and EOS ids, whether BOS is added (what the tokenizer really does), the model's recommended sampling
    /// (a generation_config.json that samples, as llama.cpp's converter copies it) and the chat template.</summary>
    private static void AddSpecialIds(GgufWriter g, HfTokenizer tokenizer, ModelConfig c)
    {
        List<int> probe = tokenizer.Encode("a", addSpecialTokens: true);
        bool addsBos = tokenizer.BosTokenId is int bos && probe.Count > 0 && probe[0] == bos;
        int? bosId = tokenizer.BosTokenId ?? c.BosTokenId;
        if (bosId is int b)
        {
            g.Add("tokenizer.ggml.bos_token_id", (uint)b);
        }

        int? eosId = tokenizer.Config.GenerationEosTokenIds.Concat(c.EosTokenIds).Select(x => (int?)x).FirstOrDefault() ?? tokenizer.EosTokenId;
        if (eosId is int e)
        {
            g.Add("tokenizer.ggml.eos_token_id", (uint)e);
        }

        g.Add("tokenizer.ggml.add_bos_token", addsBos);
        if (tokenizer.Config.SamplingDefaults is { } sampling)
        {
            // The model's recommended sampling, as llama.cpp's converter copies generation_config.json.
            g.Add("general.sampling.temp", sampling.Temperature ?? 1f);
            g.Add("general.sampling.top_p", sampling.TopP ?? 1f);
            g.Add("general.sampling.top_k", sampling.TopK ?? 0);
            if (sampling.MinP is float minP)
            {
                g.Add("general.sampling.min_p", minP);
            }

            if (sampling.RepetitionPenalty is float penalty)
            {
                g.Add("general.sampling.penalty_repeat", penalty);
            }
        }

        if (tokenizer.Config.ChatTemplate is string template)
        {
            g.Add("tokenizer.chat_template", template);   // as llama.cpp's converter writes it
        }
    }
}

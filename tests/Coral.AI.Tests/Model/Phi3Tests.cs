using System.Text.Json.Nodes;
using Coral.AI.TestModels;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI.Tests;

/// <summary>
/// Phi-3 (<c>Phi3ForCausalLM</c>) is a Llama whose checkpoint stores q|k|v as one <c>qkv_proj</c> and gate|up as one
/// <c>gate_up_proj</c> (gate first, as Phi3MLP chunks it): the same weights stored either way give the same logits bit for
/// bit — on every path (f32 libtorch, the kernels, packed bf16) — and the same greedy and speculative tokens; the Llama
/// form is the one checked against llama.cpp.
/// </summary>
public class Phi3Tests
{
    /// <summary>The Phi-3 checkpoint's weights unfused into a Llama one (its sliding window dropped: beyond any test's length).</summary>
    private static string AsLlama(string phi3, string name)
    {
        string folder = ModelZoo.TempFolder(name);
        foreach (string file in Directory.GetFiles(phi3).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal) && !f.EndsWith(".index.json", StringComparison.Ordinal)))
        {
            File.Copy(file, Path.Combine(folder, Path.GetFileName(file)), overwrite: true);
        }

        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(phi3, "config.json")))!.AsObject();
        ModelConfig c = ModelConfig.Load(Path.Combine(phi3, "config.json"));
        config["architectures"] = new JsonArray("LlamaForCausalLM");
        config.Remove("sliding_window");
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());

        long nq = c.NumHeads * c.HeadDim, nkv = c.NumKvHeads * c.HeadDim, ff = c.IntermediateSize;
        using var scope = torch.NewDisposeScope();
        using var file16 = SafetensorsFile.Open(Path.Combine(phi3, "model.safetensors"));
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (string key in file16.Entries.Keys)
        {
            Tensor t = file16.Get(key);
            if (key.EndsWith("self_attn.qkv_proj.weight", StringComparison.Ordinal))
            {
                string p = key[..^"qkv_proj.weight".Length];
                tensors.Add(new(p + "q_proj.weight", t.narrow(0, 0, nq).contiguous()));
                tensors.Add(new(p + "k_proj.weight", t.narrow(0, nq, nkv).contiguous()));
                tensors.Add(new(p + "v_proj.weight", t.narrow(0, nq + nkv, nkv).contiguous()));
            }
            else if (key.EndsWith("mlp.gate_up_proj.weight", StringComparison.Ordinal))
            {
                string p = key[..^"gate_up_proj.weight".Length];
                tensors.Add(new(p + "gate_proj.weight", t.narrow(0, 0, ff).contiguous()));
                tensors.Add(new(p + "up_proj.weight", t.narrow(0, ff, ff).contiguous()));
            }
            else
            {
                tensors.Add(new(key, t.clone()));
            }
        }

        SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return folder;
    }

    [Theory]
    [InlineData("phi3", true, true)]        // the kernels (f32)
    [InlineData("phi3", false, false)]      // libtorch's f32 path
    [InlineData("phi3-bf16", true, true)]   // packed straight from the fused rows
    [InlineData("phi3-partial", true, true)]    // Phi-4-mini's partial rotation: q/k rows reordered from the fused rows
    [InlineData("phi3-partial", false, false)]
    public void FusedCheckpoint_EqualsTheSameWeightsUnfused(string arch, bool cpuKernels, bool packed)
    {
        string phi3 = TransformerModelTests.ModelFor(arch);
        string llama = AsLlama(phi3, "phi3-as-llama-" + arch);
        using var a = TransformerModel.Load(phi3, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        using var b = TransformerModel.Load(llama, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        Assert.Equal(ModelFamily.Phi3, a.Config.Family);
        Assert.Equal(packed && PackedMatrix.Enabled && arch != "phi3", a.UsesPackedWeights);
        Assert.Equal(a.UsesPackedWeights, b.UsesPackedWeights);
        long[] ids = [1, 5, 9, 2, 7, 3, 11, 4, 8];
        Assert.Equal(TorchTestHelpers.FullLogits(b, ids), TorchTestHelpers.FullLogits(a, ids));
    }

    [Fact]
    public void Phi3_DecodesAsTheLlama_PlainAndSpeculative()
    {
        string phi3 = TransformerModelTests.ModelFor("phi3-bf16");
        string llama = AsLlama(phi3, "phi3-as-llama-engine");
        using var a = DrafterZoo.Engine(phi3, DrafterZoo.Random(phi3, "phi3-random"));
        using var b = InferenceEngine.Load(llama, torch.CPU, ScalarType.Float32, 256);
        var request = new GenerationRequest(b.Tokenizer.Encode("Once upon a time"), SamplingParameters.Greedy, 24, []);
        List<int> expected = b.Generate(request, null, default).TokenIds.ToList();
        Assert.Equal(expected, a.Generate(request, null, default).TokenIds);
        Assert.Equal(expected, a.Generate(request with { Speculative = true, Tree = new TreeShape(3, 2, 6, 0) }, null, default).TokenIds);
    }

    /// <summary>A partial rotation that leaves an odd number of rotated dimensions is refused naming the field.</summary>
    [Fact]
    public void PartialRotaryFactor_OfAnOddDimensionCount_IsRefusedNamingTheField()
    {
        string folder = ModelZoo.TempFolder("phi3-odd-partial");
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(TransformerModelTests.ModelFor("phi3"), "config.json")))!.AsObject();
        config["partial_rotary_factor"] = 0.1875;   // 3 of 16
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        var e = Assert.Throws<CoralModelException>(() => ModelConfig.Load(Path.Combine(folder, "config.json")));
        Assert.Contains("partial_rotary_factor", e.Message);
        config["partial_rotary_factor"] = 0.75;     // 12 of 16, as Phi-4-mini
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        ModelConfig c = ModelConfig.Load(Path.Combine(folder, "config.json"));
        Assert.Equal(12, c.RotaryDim);
        // Rotated halves (0-5, 6-11) at 0-5 and 8-13, passed-through 12-15 split over 6-7 and 14-15.
        Assert.Equal([0, 1, 2, 3, 4, 5, 12, 13, 6, 7, 8, 9, 10, 11, 14, 15], c.RotaryOrder()!);
    }

    /// <summary>LongRoPE as Phi-3.5 configures it: the pretraining context at the config's root, the factor from the
    /// contexts' ratio (131072 / 4096 = 32) and the attention factor √(1 + ln 32 / ln 4096); factor lists of the wrong
    /// length or a missing context are errors naming the field.</summary>
    [Fact]
    public void LongRope_ReadsAsTransformers_AndNamesBadFields()
    {
        string folder = ModelZoo.TempFolder("phi35-config");
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(TransformerModelTests.ModelFor("phi3"), "config.json")))!.AsObject();
        config["max_position_embeddings"] = 131072;
        config["original_max_position_embeddings"] = 4096;
        JsonArray Ones(int n) => new(Enumerable.Repeat(1.0, n).Select(v => (JsonNode?)JsonValue.Create(v)).ToArray());
        config["rope_scaling"] = new JsonObject { ["type"] = "longrope", ["short_factor"] = Ones(8), ["long_factor"] = Ones(8) };
        string path = Path.Combine(folder, "config.json");
        File.WriteAllText(path, config.ToJsonString());
        RopeScaling s = ModelConfig.Load(path).RopeScaling!;
        Assert.Equal((RopeScalingKind.LongRope, 32.0, 4096), (s.Kind, s.Factor, s.OriginalMaxPositions));
        Assert.Equal(Math.Sqrt(1 + (Math.Log(32) / Math.Log(4096))), s.AttentionFactor, 12);

        config["rope_scaling"]!["long_factor"] = Ones(7);
        File.WriteAllText(path, config.ToJsonString());
        Assert.Contains("rope_scaling.short_factor", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
        config["rope_scaling"]!["long_factor"] = Ones(8);
        config.Remove("original_max_position_embeddings");
        File.WriteAllText(path, config.ToJsonString());
        Assert.Contains("original_max_position_embeddings", Assert.Throws<CoralModelException>(() => ModelConfig.Load(path)).Message);
    }

    /// <summary>The rotary tables of a LongRoPE model: position p within the pretraining context (16 here) rotates
    /// dimension pair i by p / (short_i · θ^(2i/hd)), from 16 on by p / (long_i · θ^(2i/hd)), and cos and sin carry the
    /// attention factor; computed here from the config's numbers in double precision.</summary>
    [Fact]
    public void LongRope_Tables_TakeShortFactorsWithinTheContext_LongOnesPastIt()
    {
        ModelConfig c = ModelConfig.Load(Path.Combine(TransformerModelTests.ModelFor("phi3-longrope"), "config.json"));
        RopeScaling s = c.RopeScaling!;
        using var rope = new RotaryTables(c, 64, torch.CPU);
        int hd = c.HeadDim, half = hd / 2;
        using var scope = torch.NewDisposeScope();
        foreach (int p in new[] { 0, 5, 15, 16, 17, 40, 63 })
        {
            var (cos, sin) = rope.At(p, 1, null);
            float[] cv = TorchTestHelpers.ToArray(cos.reshape(hd)), sv = TorchTestHelpers.ToArray(sin.reshape(hd));
            IReadOnlyList<double> factors = p < 16 ? s.ShortFactors : s.LongFactors;
            for (int i = 0; i < half; i++)
            {
                double angle = p / (factors[i] * Math.Pow(c.RopeTheta, 2.0 * i / hd));
                Assert.Equal(Math.Cos(angle) * s.AttentionFactor, cv[i], 3e-5);
                Assert.Equal(Math.Cos(angle) * s.AttentionFactor, cv[half + i], 3e-5);
                Assert.Equal(-Math.Sin(angle) * s.AttentionFactor, sv[i], 3e-5);   // rotate_half's sign folded in
                Assert.Equal(Math.Sin(angle) * s.AttentionFactor, sv[half + i], 3e-5);
            }
        }
    }
}

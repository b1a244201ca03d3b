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
    public void FusedCheckpoint_EqualsTheSameWeightsUnfused(string arch, bool cpuKernels, bool packed)
    {
        string phi3 = TransformerModelTests.ModelFor(arch);
        string llama = AsLlama(phi3, "phi3-as-llama-" + arch);
        using var a = TransformerModel.Load(phi3, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        using var b = TransformerModel.Load(llama, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        Assert.Equal(ModelFamily.Phi3, a.Config.Family);
        Assert.Equal(packed && PackedMatrix.Enabled && arch.EndsWith("bf16", StringComparison.Ordinal), a.UsesPackedWeights);
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

    [Fact]
    public void PartialRotaryFactor_IsRefusedNamingTheField()
    {
        string folder = ModelZoo.TempFolder("phi4-partial-rotary");
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(TransformerModelTests.ModelFor("phi3"), "config.json")))!.AsObject();
        config["partial_rotary_factor"] = 0.75;   // Phi-4-mini's
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        var e = Assert.Throws<CoralModelException>(() => ModelConfig.Load(Path.Combine(folder, "config.json")));
        Assert.Contains("partial_rotary_factor", e.Message);
    }
}

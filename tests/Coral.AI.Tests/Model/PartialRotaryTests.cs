using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI.Tests;

/// <summary>
/// Partial rotary embeddings (<c>partial_rotary_factor</c>: Phi-4-mini's 0.75) against a reference forward written here
/// the way transformers' Phi-3 attention states it — q and k split into their first r dimensions, rotated by
/// rotate_half over r with frequencies 1 / θ^(2i/r), and the rest passed through — in float64, straight from the
/// checkpoint's tensors. Coral instead reorders each q/k head's dimensions at load so that a whole-head rotation (with
/// cos 1, sin 0 past r) does the same; llama.cpp cannot be the oracle here (its qwen2 architecture asserts n_rot =
/// head_dim, and its phi3 loader fails on the tests' vocabulary).
/// </summary>
public class PartialRotaryTests
{
    private static float[] ReferenceLogits(string folder, long[] ids)
    {
        ModelConfig c = ModelConfig.Load(Path.Combine(folder, "config.json"));
        using var scope = torch.NewDisposeScope();
        using var file = SafetensorsFile.Open(Path.Combine(folder, "model.safetensors"));
        Tensor W(string name) => file.Get(name).to(ScalarType.Float64);
        int t = ids.Length, hd = c.HeadDim, r = c.RotaryDim, heads = c.NumHeads, kvHeads = c.NumKvHeads;
        Tensor Norm(Tensor x, Tensor w) => x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + c.RmsNormEps) * w;

        Tensor positions = torch.arange(t, dtype: ScalarType.Float64).unsqueeze(1);
        Tensor inv = 1.0 / torch.pow(c.RopeTheta, torch.arange(0, r, 2, dtype: ScalarType.Float64) / r);
        Tensor angles = torch.cat([positions * inv, positions * inv], 1);   // [T, r]
        Tensor cos = angles.cos(), sin = angles.sin();
        Tensor Rotate(Tensor x)   // [H, T, hd]
        {
            Tensor rot = x.narrow(-1, 0, r), pass = x.narrow(-1, r, hd - r);
            Tensor half = torch.cat([-rot.narrow(-1, r / 2, r / 2), rot.narrow(-1, 0, r / 2)], -1);
            return torch.cat([(rot * cos) + (half * sin), pass], -1);
        }

        Tensor h = W("model.embed_tokens.weight").index_select(0, torch.tensor(ids));
        Tensor causal = torch.ones(t, t, dtype: ScalarType.Bool).tril().logical_not();
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            Tensor x = Norm(h, W(p + "input_layernorm.weight"));
            Tensor Proj(string name, int n) =>
                (F.linear(x, W(p + $"self_attn.{name}_proj.weight"), c.QkvBias ? W(p + $"self_attn.{name}_proj.bias") : null))
                .view(t, n, hd).transpose(0, 1);
            Tensor q = Rotate(Proj("q", heads)), k = Rotate(Proj("k", kvHeads)), v = Proj("v", kvHeads);
            k = k.repeat_interleave(heads / kvHeads, 0);
            v = v.repeat_interleave(heads / kvHeads, 0);
            Tensor scores = torch.matmul(q, k.transpose(1, 2)) / Math.Sqrt(hd);
            Tensor attn = torch.matmul(scores.masked_fill(causal, double.NegativeInfinity).softmax(-1), v);
            h = h + F.linear(attn.transpose(0, 1).reshape(t, heads * hd), W(p + "self_attn.o_proj.weight"));
            x = Norm(h, W(p + "post_attention_layernorm.weight"));
            h = h + F.linear(F.silu(F.linear(x, W(p + "mlp.gate_proj.weight"))) * F.linear(x, W(p + "mlp.up_proj.weight")),
                W(p + "mlp.down_proj.weight"));
        }

        Tensor logits = F.linear(Norm(h, W("model.norm.weight")), W(c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
        return TorchTestHelpers.ToArray(logits.to(ScalarType.Float32));
    }

    [Theory]
    [InlineData("qwen2-partial", true)]    // the C# kernels
    [InlineData("qwen2-partial", false)]   // libtorch's f32 path
    [InlineData("qwen2", true)]            // the reference itself, on a whole-head model (which llama.cpp checks)
    public void PartialRotation_MatchesTheReferenceForward(string arch, bool cpuKernels)
    {
        string folder = TransformerModelTests.ModelFor(arch);
        using var model = TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        Assert.Equal((arch == "qwen2" ? 16 : 8, 16), (model.Config.RotaryDim, model.Config.HeadDim));
        long[] ids = [3, 17, 250, 9, 41, 7, 600, 12, 5, 88, 1, 300];
        float[] ours = TorchTestHelpers.FullLogits(model, ids), reference = ReferenceLogits(folder, ids);
        Assert.True(TorchTestHelpers.MaxAbsDiff(ours, reference) < 1e-4f, $"max |Δlogit| = {TorchTestHelpers.MaxAbsDiff(ours, reference)}");
        if (arch == "qwen2")
        {
            return;
        }

        // The reference is not vacuous: rotating whole heads instead changes the logits.
        string whole = ModelZoo.TempFolder("qwen2-partial-as-whole");
        foreach (string f in Directory.GetFiles(folder))
        {
            File.Copy(f, Path.Combine(whole, Path.GetFileName(f)), overwrite: true);
        }

        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
        config.Remove("partial_rotary_factor");
        File.WriteAllText(Path.Combine(whole, "config.json"), config.ToJsonString());
        using var wholeModel = TransformerModel.Load(whole, torch.CPU, ScalarType.Float32, 64, cpuKernels: cpuKernels);
        Assert.True(TorchTestHelpers.MaxAbsDiff(TorchTestHelpers.FullLogits(wholeModel, ids), reference) > 1e-2f);
    }

    /// <summary>Exporting a partial rotation for an architecture whose llama.cpp graph rotates whole heads is refused
    /// naming the field (llama.cpp's qwen2 aborts on such a file).</summary>
    [Fact]
    public void GgufExport_OfAPartialRotation_IsRefusedForWholeHeadArchitectures()
    {
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-partial"), "model.gguf");
        var e = Assert.Throws<CoralModelException>(() => GgufExporter.Export(TransformerModelTests.ModelFor("qwen2-partial"), gguf, "f32"));
        Assert.Contains("partial_rotary_factor", e.Message);
        Assert.False(File.Exists(gguf));
    }
}

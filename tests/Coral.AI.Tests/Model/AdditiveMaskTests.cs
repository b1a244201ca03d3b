using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// The additive mask a GPU forward builds once for all layers (RotaryTables.Additive): attention with it equals attention
/// with the bool mask it came from — bit for bit in the explicit form (scores + 0 is the score, + −∞ is −∞), closely
/// through SDPA — for a tree's mask with GQA rows, in f32, f64 and bf16.
/// </summary>
public sealed class AdditiveMaskTests
{
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    [InlineData(ScalarType.BFloat16)]
    public void Attention_WithTheAdditiveMask_EqualsTheBoolMask(ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new Generator(5);
        const int kvHeads = 2, group = 3, t = 5, start = 7, hd = 16;
        // A tree over the last t slots: node i sees itself and its parent chain.
        int[] parent = [-1, 0, 0, 1, 2];
        var tree = new bool[t * t];
        for (int i = 0; i < t; i++)
        {
            for (int a = i; a >= 0; a = parent[a])
            {
                tree[(i * t) + a] = true;
            }
        }

        Tensor mask = RotaryTables.Mask(t, start, group, torch.tensor(tree, [t, t]), null, null, torch.CPU)!;
        Tensor additive = RotaryTables.Additive(mask, dtype);
        Assert.Equal(dtype, additive.dtype);
        Assert.True(additive.masked_select(mask).eq(0).all().item<bool>());
        Assert.True(additive.masked_select(mask.logical_not()).isneginf().all().item<bool>());

        Tensor q = torch.randn([1, kvHeads, group * t, hd], generator: generator).to(dtype);
        Tensor k = torch.randn([1, kvHeads, start + t, hd], generator: generator).to(dtype);
        Tensor v = torch.randn([1, kvHeads, start + t, hd], generator: generator).to(dtype);
        // The explicit form (a soft cap, as Gemma-2's): the same bits.
        float[] boolExplicit = DecoderLayer.Attention(q, k, v, mask, 0.3, softcap: 20).data<float>().ToArray();
        float[] addExplicit = DecoderLayer.Attention(q, k, v, additive, 0.3, softcap: 20).data<float>().ToArray();
        Assert.Equal(boolExplicit, addExplicit);
        // Fused SDPA: close (another kernel may take the additive mask).
        Tensor viaBool = DecoderLayer.Attention(q, k, v, mask, 1 / Math.Sqrt(hd));
        Tensor viaAdd = DecoderLayer.Attention(q, k, v, additive, 1 / Math.Sqrt(hd));
        double tolerance = dtype == ScalarType.BFloat16 ? 2e-2 : 1e-5;
        Assert.True(viaBool.sub(viaAdd).abs().max().item<float>() < tolerance);
        // The mask is not idle: without it the tree's rows read keys they must not.
        Assert.True(viaBool.sub(DecoderLayer.Attention(q, k, v, null, 1 / Math.Sqrt(hd))).abs().max().item<float>() > 1e-3);
    }
}

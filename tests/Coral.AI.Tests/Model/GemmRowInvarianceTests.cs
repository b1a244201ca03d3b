using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// The property TransformerModel.InvariantRows rests on, checked on this machine's libtorch: an f32 GEMM computes a row
/// that sits in a whole block of rows with the same bits at any row count. (On AMD EPYC the rows past the last whole
/// 4-row block of a GEMM under 12 rows differ — the one-row GEMV always does — which broke a tree's exactness when
/// one-token steps were padded only to two rows.)
/// </summary>
public sealed class GemmRowInvarianceTests
{
    [Theory]
    [InlineData(64, 192)]
    [InlineData(256, 768)]
    [InlineData(768, 256)]
    [InlineData(256, 1000)]
    public void F32Gemm_PaddedRowCounts_GiveEveryRowTheSameBits(int inFeatures, int outFeatures)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new Generator(11);
        Tensor w = torch.randn([inFeatures, outFeatures], generator: generator);
        Tensor x = torch.randn([40, inFeatures], generator: generator);
        float[] reference = x.matmul(w).data<float>().ToArray();
        for (int t = 1; t <= 40; t++)
        {
            int rows = TransformerModel.InvariantRows(t);
            Tensor padded = torch.cat([x.narrow(0, 0, t), x.narrow(0, t - 1, 1).expand(rows - t, inFeatures)], 0);
            float[] y = padded.matmul(w).narrow(0, 0, t).contiguous().data<float>().ToArray();
            Assert.True(y.AsSpan().SequenceEqual(reference.AsSpan(0, t * outFeatures)), $"{t} rows run as {rows}");
        }
    }
}

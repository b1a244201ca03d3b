using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class FeatureStorePackTests
{
    private static FeatureSequence Sequence(long first, int length, byte mask) => new(
        torch.arange(first, first + length, dtype: ScalarType.Int64),
        torch.full([length, 4], (float)first).to(ScalarType.BFloat16),
        torch.full([length], mask, dtype: ScalarType.Byte));

    [Fact]
    public void Pack_JoinsSequencesUpToTheLimit_AndClearsTheSeamMask()
    {
        var packed = FeatureStore.Pack([Sequence(0, 3, 1), Sequence(10, 4, 1), Sequence(20, 5, 1), Sequence(30, 9, 1)], maxTokens: 8);

        Assert.Equal(3, packed.Count);
        Assert.Equal(new long[] { 0, 1, 2, 10, 11, 12, 13 }, packed[0].InputIds.data<long>().ToArray());
        Assert.Equal(new byte[] { 1, 1, 1, 0, 1, 1, 1 }, packed[0].LossMask.data<byte>().ToArray());   // (feature of 2, token 10) is not a pair
        Assert.Equal(10f, packed[0].HiddenState[3, 0].to(ScalarType.Float32).item<float>());          // features travel with their tokens
        Assert.Equal(new long[] { 20, 21, 22, 23, 24 }, packed[1].InputIds.data<long>().ToArray());
        Assert.Equal(9, packed[2].InputIds.shape[0]);                                                 // longer than the limit: alone, unchanged
        Assert.All(packed[2].LossMask.data<byte>().ToArray(), m => Assert.Equal(1, m));
    }
}

using Coral.AI.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Tests;

public class PretrainLossTests
{
    [Fact]
    public void LossAndGradients_EqualAutogradCrossEntropy_OverTheFullLogits()
    {
        var gen = new Generator(7);
        Tensor h = torch.randn([37, 16], generator: gen, dtype: ScalarType.Float64).to(ScalarType.Float32);
        Tensor head = torch.randn([101, 16], generator: gen) * 0.5;
        Tensor labels = torch.randint(0, 101, [37], generator: gen);
        Tensor weight = (torch.rand(37, generator: gen) > 0.3).to(ScalarType.Float32);

        // Reference: full [37 × 101] logits through autograd.
        Tensor hRef = h.clone().requires_grad_(true), wRef = head.clone().requires_grad_(true);
        Tensor nll = F.cross_entropy(F.linear(hRef, wRef), labels, reduction: nn.Reduction.None);
        Tensor reference = (nll * weight).sum() / weight.sum();
        reference.backward();

        // Chunks of 8 rows (the last one short).
        (double loss, Tensor gradH, Tensor gradW) = ChunkedCrossEntropy.Compute(h, head, labels, weight, bf16: false, rows: 8);
        Assert.Equal(reference.item<float>(), loss, 4);
        Assert.True(gradH.allclose(hRef.grad!, rtol: 1e-4, atol: 1e-6), $"dh max |Δ| {(gradH - hRef.grad!).abs().max().item<float>()}");
        Assert.True(gradW.allclose(wRef.grad!, rtol: 1e-4, atol: 1e-6), $"dW max |Δ| {(gradW - wRef.grad!).abs().max().item<float>()}");

        // bf16 products stay close (the block is bf16; the loss within 1%).
        (double loss16, Tensor gradH16, Tensor gradW16) = ChunkedCrossEntropy.Compute(h, head, labels, weight, bf16: true, rows: 8);
        Assert.Equal(loss, loss16, 1);
        Assert.True((gradH16 - gradH).abs().max().item<float>() < 0.05 * gradH.abs().max().item<float>());
        Assert.True((gradW16 - gradW).abs().max().item<float>() < 0.05 * gradW.abs().max().item<float>());

        // The one-hot parts (a gather and an index-add, not a scatter into the block) with labels repeated across rows and chunks.
        Tensor repeated = torch.tensor(Enumerable.Range(0, 37).Select(i => (long)(i % 3 == 0 ? 5 : i % 3 == 1 ? 99 : i)).ToArray());
        Tensor hRep = h.clone().requires_grad_(true), wRep = head.clone().requires_grad_(true);
        Tensor nllRep = F.cross_entropy(F.linear(hRep, wRep), repeated, reduction: nn.Reduction.None);
        ((nllRep * weight).sum() / weight.sum()).backward();
        (_, Tensor gradHRep, Tensor gradWRep) = ChunkedCrossEntropy.Compute(h, head, repeated, weight, bf16: false, rows: 8);
        Assert.True(gradHRep.allclose(hRep.grad!, rtol: 1e-4, atol: 1e-6));
        Assert.True(gradWRep.allclose(wRep.grad!, rtol: 1e-4, atol: 1e-6), $"dW max |Δ| {(gradWRep - wRep.grad!).abs().max().item<float>()}");
    }

    [Fact]
    public void Pack_PutsEveryTokenOfTheStreamInABlock_OverlappingByOne()
    {
        var data = new List<TrainingExample>
        {
            new([1, 2, 3, 4, 5], [1, 1, 1, 1, 1]),
            new([6, 7, 8], [0, 0, 1]),
        };
        (Tensor ids, Tensor mask) = Pretrainer.Pack(data, blockLength: 3, seed: 0);
        Assert.Equal(new long[] { 2, 4 }, ids.shape);
        long[] flat = ids.data<long>().ToArray();
        // Block b starts where block b-1 ended: its first token is the previous block's last (the input for its first target).
        Assert.Equal(flat[3], flat[4]);
        // Masks travel with their tokens.
        var stream = flat[..4].Concat(flat[5..]).ToArray();
        byte[] m = mask.data<byte>().ToArray();
        var streamMask = m[..4].Concat(m[5..]).ToArray();
        for (int i = 0; i < stream.Length; i++)
        {
            Assert.Equal(stream[i] >= 6 ? (stream[i] == 8 ? 1 : 0) : 1, streamMask[i]);
        }
    }
}

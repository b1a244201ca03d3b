using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>
/// The soft cross-entropy −Σ_v p(v)·log q(v), with p = softmax(W·f) (target) and q = softmax(W·h) (drafter), through a
/// frozen LM head W [V, d]. The target distribution of a sequence is computed once (<see cref="Target"/>) and shared by
/// every HASS step; the drafter side runs in row chunks, so no [T × V] logits or gradients of the drafter are held, and no
/// autograd graph is built over the head: per chunk, loss = lse(z) − Σ p·z and dLoss/dh = (q − p)·W, scaled by the row
/// weight. The caller adds <c>(h · grad).sum()</c> to its loss as a surrogate whose gradient is exactly that. In bf16
/// mode the head products and the [rows × V] blocks are bf16 (AMX/AVX512-BF16 GEMMs), everything else f32.
/// </summary>
internal static class ChunkedSoftCrossEntropy
{
    /// <summary>The target distribution softmax(W·f) [T, V] (bf16 or f32) and its argmax [T].</summary>
    public static (Tensor Probabilities, Tensor ArgMax) Target(Tensor targetFeatures, Tensor head, bool bf16)
    {
        using var noGrad = torch.no_grad();
        ScalarType dtype = bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        Tensor logits = F.linear(targetFeatures.to(dtype), head.to(dtype));
        return (logits.softmax(1), logits.argmax(1));
    }

    /// <summary>Returns the weighted mean loss, dLoss/dh [T, d] (f32) and the top-1 agreement rate on weighted rows.</summary>
    public static (double Loss, Tensor GradH, double Accuracy) Compute(Tensor h, (Tensor Probabilities, Tensor ArgMax) target, Tensor head,
        Tensor weight, Tensor denominator, int rows = 256)
    {
        using var noGrad = torch.no_grad();
        Tensor hd = h.detach();
        ScalarType dtype = target.Probabilities.dtype;
        using Tensor w = head.to(dtype);
        long n = hd.shape[0];
        Tensor loss = torch.zeros(n), hits = torch.zeros(n), grad = torch.zeros_like(hd);
        for (long start = 0; start < n; start += rows)
        {
            using var scope = torch.NewDisposeScope();
            long r = Math.Min(rows, n - start);
            Tensor logits = F.linear(hd.narrow(0, start, r).to(dtype), w);
            Tensor p = target.Probabilities.narrow(0, start, r);
            loss.narrow(0, start, r).copy_(logits.logsumexp(1).to(ScalarType.Float32) - (p * logits).sum([1L], type: ScalarType.Float32));
            hits.narrow(0, start, r).copy_(logits.argmax(1).eq(target.ArgMax.narrow(0, start, r)));
            Tensor g = logits.softmax(1).sub_(p);
            grad.narrow(0, start, r).copy_(g.matmul(w));
        }

        Tensor scale = (weight / denominator).unsqueeze(1);
        double value = (loss * weight).sum().item<float>() / denominator.item<float>();
        double accuracy = (hits * weight).sum().item<float>() / Math.Max(weight.sum().item<float>(), 1e-5f);
        return (value, (grad * scale).detach(), accuracy);
    }
}

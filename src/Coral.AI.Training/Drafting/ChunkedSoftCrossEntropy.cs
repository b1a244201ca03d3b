using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>
/// The soft cross-entropy −Σ_v p(v)·log q(v), with p = softmax(W·f) (target) and q = softmax(W·h) (drafter), through a
/// frozen LM head W [V, d], computed over vocabulary chunks so that no [T × V] logits, probabilities or gradients are
/// ever held whole. Its gradient with respect to h, (q − p)·W per row scaled by the row weight, is computed alongside
/// (no autograd graph over the head); the caller adds <c>(h · grad).sum()</c> to its loss as a surrogate whose gradient
/// is exactly that.
/// </summary>
internal static class ChunkedSoftCrossEntropy
{
    /// <summary>Returns the weighted mean loss, dLoss/dh [T, d] and the top-1 agreement rate on weighted rows.</summary>
    public static (double Loss, Tensor GradH, double Accuracy) Compute(Tensor h, Tensor targetFeatures, Tensor head, Tensor weight, Tensor denominator, int chunk = 8192)
    {
        using var noGrad = torch.no_grad();
        Tensor hd = h.detach();
        long vocab = head.shape[0], rows = h.shape[0];
        // Pass 1: running max and sum of exponentials for both distributions, and their argmax.
        Tensor mq = torch.full(rows, double.NegativeInfinity), sq = torch.zeros(rows);
        Tensor mp = torch.full(rows, double.NegativeInfinity), sp = torch.zeros(rows);
        Tensor aq = torch.zeros(rows, ScalarType.Int64), ap = torch.zeros(rows, ScalarType.Int64);
        for (long start = 0; start < vocab; start += chunk)
        {
            using var scope = torch.NewDisposeScope();
            long n = Math.Min(chunk, vocab - start);
            Tensor w = head.narrow(0, start, n);
            (mq, sq, aq) = Accumulate(F.linear(hd, w), mq, sq, aq, start);
            (mp, sp, ap) = Accumulate(F.linear(targetFeatures, w), mp, sp, ap, start);
            (mq, sq, aq, mp, sp, ap) = (mq.MoveToOuterDisposeScope(), sq.MoveToOuterDisposeScope(), aq.MoveToOuterDisposeScope(),
                mp.MoveToOuterDisposeScope(), sp.MoveToOuterDisposeScope(), ap.MoveToOuterDisposeScope());
        }

        Tensor lseQ = mq + sq.log(), lseP = mp + sp.log();
        // Pass 2: loss and gradient chunk by chunk.
        Tensor loss = torch.zeros(rows);
        Tensor grad = torch.zeros_like(hd);
        for (long start = 0; start < vocab; start += chunk)
        {
            using var scope = torch.NewDisposeScope();
            long n = Math.Min(chunk, vocab - start);
            Tensor w = head.narrow(0, start, n);
            Tensor logq = F.linear(hd, w) - lseQ.unsqueeze(1);
            Tensor p = (F.linear(targetFeatures, w) - lseP.unsqueeze(1)).exp();
            loss.sub_((p * logq).sum([1L]));
            grad.add_((logq.exp() - p).matmul(w));
        }

        Tensor scale = (weight / denominator).unsqueeze(1);
        double value = (loss * weight).sum().item<float>() / denominator.item<float>();
        double accuracy = (aq.eq(ap).to(ScalarType.Float32) * weight).sum().item<float>() / Math.Max(weight.sum().item<float>(), 1e-5f);
        return (value, (grad * scale).detach(), accuracy);
    }

    private static (Tensor Max, Tensor Sum, Tensor ArgMax) Accumulate(Tensor logits, Tensor max, Tensor sum, Tensor argMax, long offset)
    {
        var (chunkMax, chunkArg) = logits.max(1);
        Tensor newMax = torch.maximum(max, chunkMax);
        Tensor newSum = sum * (max - newMax).exp() + (logits - newMax.unsqueeze(1)).exp().sum([1L]);
        Tensor newArg = torch.where(chunkMax.gt(max), chunkArg + offset, argMax);
        return (newMax, newSum, newArg);
    }
}

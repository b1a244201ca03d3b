using System.Numerics.Tensors;

namespace Coral.AI;

/// <summary>
/// Lossless acceptance of deterministic (one-hot) draft candidates, EAGLE-2's multi-candidate rule: try the children
/// of the current node in order; accept child x with probability P(x); on rejection set P(x) = 0 and renormalise, which
/// leaves P conditioned on "not x". If every child is rejected, the next token is drawn from what remains of P. The
/// emitted token is then distributed exactly as P (greedy: P is one-hot at the argmax, so this is exact matching).
/// </summary>
internal static class TreeAcceptance
{
    /// <summary>Returns the index into <paramref name="childTokens"/> of the accepted child, or −1 (P is then the residual).</summary>
    /// <param name="probs">The target distribution at the current node; modified in place on rejections.</param>
    /// <param name="childTokens">The candidate tokens, distinct, in the order they are tried.</param>
    /// <param name="uniform">Draws from U[0, 1).</param>
    public static int AcceptChild(Span<float> probs, IReadOnlyList<int> childTokens, Func<double> uniform)
    {
        for (int c = 0; c < childTokens.Count; c++)
        {
            int x = childTokens[c];
            float px = probs[x];
            if (px <= 0f)
            {
                continue;                                    // P(x) = 0: rejected with certainty, P unchanged
            }

            if (px >= 1f || uniform() < px)
            {
                return c;
            }

            probs[x] = 0f;
            TensorPrimitives.Multiply(probs, 1f / (1f - px), probs);
        }

        return -1;
    }
}

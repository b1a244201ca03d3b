using System.Runtime.CompilerServices;

namespace Coral.AI;

/// <summary>The k largest entries of a row in one pass (drafting candidates, top-k sampling).</summary>
internal static class BestK
{
    /// <summary>
    /// Writes the <c>values.Length</c> largest entries of <paramref name="x"/> above <paramref name="floor"/> into
    /// <paramref name="values"/> / <paramref name="indices"/>, best first, ties to the lower index (NaN never qualifies), and
    /// returns how many there are. A sorted buffer: an entry enters only when it beats the current k-th, so after the first
    /// few hundred entries of a long row almost none do.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Select(ReadOnlySpan<float> x, float floor, Span<float> values, Span<int> indices)
    {
        int k = values.Length, count = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            if (!(v > floor) || (count == k && !(v > values[k - 1])))
            {
                continue;
            }

            int j = count < k ? count++ : k - 1;
            for (; j > 0 && values[j - 1] < v; j--)
            {
                values[j] = values[j - 1];
                indices[j] = indices[j - 1];
            }

            values[j] = v;
            indices[j] = i;
        }

        return count;
    }
}

using System.Numerics.Tensors;

namespace Coral.AI;

/// <summary>
/// Penalties, temperature, top-k, top-p and min-p over one row of logits, done in C# on the logits' memory (torch's
/// argmax/topk over 50k entries cost more than the whole loop here). Owns the request's random stream.
/// </summary>
internal sealed class LogitsSampler
{
    private readonly SamplingParameters _p;
    private readonly Random _random;
    private readonly int[] _counts;
    private readonly List<int> _seen = [];
    private readonly HashSet<int> _context = [];
    private readonly float[] _work;
    private long[] _keys = [];   // sorted candidates (SortedCandidates)

    public LogitsSampler(SamplingParameters parameters, int vocabSize, IEnumerable<int>? promptIds = null)
    {
        _p = parameters;
        _random = parameters.Seed is long s ? new Random(unchecked((int)(s ^ (s >> 32)))) : new Random();
        _counts = new int[vocabSize];
        _work = new float[vocabSize];
        if (parameters.RepetitionPenalty != 1f && promptIds is not null)
        {
            _context.UnionWith(promptIds);
        }
    }

    public SamplingParameters Parameters => _p;

    /// <summary>Records a generated token for the penalties.</summary>
    public void Accept(int token)
    {
        if ((uint)token >= (uint)_counts.Length)
        {
            return;
        }

        if (_counts[token]++ == 0)
        {
            _seen.Add(token);
        }

        _context.Add(token);
    }

    /// <summary>Picks the next token from one row of logits (the span is not modified).</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        Span<float> x = _work.AsSpan(0, logits.Length);
        logits.CopyTo(x);
        ApplyPenalties(x);
        if (_p.IsGreedy)
        {
            return ArgMax(x);
        }

        ToProbabilities(x);
        return Draw(x);
    }

    /// <summary>Writes the distribution the sampler draws from (after every filter) into <paramref name="probs"/>.</summary>
    public void Distribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        logits.CopyTo(probs);
        ApplyPenalties(probs);
        if (_p.IsGreedy)
        {
            int best = ArgMax(probs);
            probs.Clear();
            probs[best] = 1f;
            return;
        }

        ToProbabilities(probs);
    }

    /// <summary>Draws an index from a normalised distribution.</summary>
    public int Draw(ReadOnlySpan<float> probs)
    {
        double u = _random.NextDouble();
        double acc = 0;
        int last = -1;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] <= 0f)
            {
                continue;
            }

            last = i;
            acc += probs[i];
            if (u < acc)
            {
                return i;
            }
        }

        return last;
    }

    public double NextUniform() => _random.NextDouble();

    /// <summary>The index of the largest value (the first one on ties), vectorised.</summary>
    public static int ArgMax(ReadOnlySpan<float> x) => TensorPrimitives.IndexOfMax(x);

    private void ApplyPenalties(Span<float> x)
    {
        if (_p.FrequencyPenalty != 0f || _p.PresencePenalty != 0f)
        {
            foreach (int t in _seen)
            {
                if (t < x.Length)
                {
                    x[t] -= _p.FrequencyPenalty * _counts[t] + _p.PresencePenalty;
                }
            }
        }

        if (_p.RepetitionPenalty != 1f)
        {
            foreach (int t in _context)
            {
                if ((uint)t < (uint)x.Length)
                {
                    x[t] = x[t] > 0 ? x[t] / _p.RepetitionPenalty : x[t] * _p.RepetitionPenalty;
                }
            }
        }
    }

    /// <summary>Temperature, softmax, then top-k, top-p and min-p; the result sums to 1.</summary>
    private void ToProbabilities(Span<float> x)
    {
        float inv = 1f / _p.Temperature;
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Multiply(x, inv, x);
        TensorPrimitives.Exp(x, x);                     // exp(−∞) = 0
        float sum = TensorPrimitives.Sum(x);
        TensorPrimitives.Multiply(x, 1f / sum, x);
        float pmax = 1f / sum;

        if (_p.TopK is int k && k > 0 && k < x.Length)
        {
            KeepLargest(x, k);
        }

        if (_p.TopP is float topP && topP < 1f)
        {
            KeepNucleus(x, topP, pmax);
        }

        if (_p.MinP is float minP && minP > 0f)
        {
            float threshold = minP * pmax;
            for (int i = 0; i < x.Length; i++)
            {
                if (x[i] < threshold)
                {
                    x[i] = 0f;
                }
            }
        }

        TensorPrimitives.Multiply(x, 1f / TensorPrimitives.Sum(x), x);
    }

    /// <summary>Zeroes all but the k largest entries (ties at the boundary keep the lower index).</summary>
    private void KeepLargest(Span<float> x, int k)
    {
        if (k > 256)
        {
            int n = SortedCandidates(x, 0f);
            if (n > k)
            {
                KeepFirst(x, k);
            }

            return;
        }

        Span<float> best = stackalloc float[k];
        Span<int> index = stackalloc int[k];
        int count = BestK.Select(x, 0f, best, index);
        x.Clear();
        for (int j = 0; j < count; j++)
        {
            x[index[j]] = best[j];
        }
    }

    /// <summary>
    /// Keeps the smallest set of most likely tokens whose mass reaches <paramref name="topP"/>. Only entries above a
    /// threshold are sorted: the threshold is lowered until the entries above it already hold topP of the mass, so the
    /// nucleus lies inside them.
    /// </summary>
    private void KeepNucleus(Span<float> x, float topP, float pmax)
    {
        float threshold = pmax / 1024f;
        while (true)
        {
            double mass = 0;
            foreach (float v in x)
            {
                if (v >= threshold && v > 0f)
                {
                    mass += v;
                }
            }

            // Written so that NaN (a model that produced NaN logits) ends the loop too.
            if (!(mass < topP) || !(threshold >= 1e-30f))
            {
                break;
            }

            threshold /= 64f;
        }

        int n = SortedCandidates(x, threshold);
        double cum = 0;
        int keep = n;
        for (int j = 0; j < n; j++)
        {
            cum += BitConverter.Int32BitsToSingle(0x7FFFFFFF - (int)(_keys[j] >> 32));
            if (cum >= topP)
            {
                keep = j + 1;
                break;
            }
        }

        KeepFirst(x, keep);
    }

    /// <summary>
    /// Sorts the positive entries at or above <paramref name="threshold"/> into <see cref="_keys"/>, best first, ties by
    /// lower index: each key is (0x7FFFFFFF − the value's bits) « 32 | index, so one primitive sort of longs orders them
    /// (positive floats order as their bits). Returns how many there are.
    /// </summary>
    private int SortedCandidates(ReadOnlySpan<float> x, float threshold)
    {
        if (_keys.Length < x.Length)
        {
            _keys = new long[x.Length];
        }

        int n = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            if (v >= threshold && v > 0f)
            {
                _keys[n++] = ((long)(0x7FFFFFFF - BitConverter.SingleToInt32Bits(v)) << 32) | (uint)i;
            }
        }

        Array.Sort(_keys, 0, n);
        return n;
    }

    /// <summary>Zeroes every entry but the first <paramref name="keep"/> of the sorted candidates.</summary>
    private void KeepFirst(Span<float> x, int keep)
    {
        x.Clear();
        for (int j = 0; j < keep; j++)
        {
            long key = _keys[j];
            x[(int)(key & 0xFFFFFFFF)] = BitConverter.Int32BitsToSingle(0x7FFFFFFF - (int)(key >> 32));
        }
    }
}

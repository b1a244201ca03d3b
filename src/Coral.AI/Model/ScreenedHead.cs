using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// The exact greedy token of an LM head from half its bytes: an int8 copy of the head (one scale per token) screens the
/// vocabulary with a proven error bound, and only the tokens that could still be the maximum get their exact logit.
/// </summary>
/// <remarks>
/// <para>Why: the LM head is the largest weight of a small model's decode step (the demo target: 25.7 MB of bf16 head
/// against 18.9 MB for its twelve layers), and a greedy step needs only its argmax. The screen reads 12.9 MB of int8
/// with VNNI (32 multiply-adds an instruction) and then computes the exact logits of the few tokens it cannot rule out
/// (a median of two on the demo target): 0.31 ms against 0.51 ms for the full head, measured interleaved alone on the
/// machine.</para>
/// <para>Exactness: token v's row w is stored as s·q (q int8, s = max|w|/127, residual r = w − s·q) and the input x as
/// t·p (p int8, t = max|x|/127, residual e = x − t·p). The screen's value a = fl(fl(q·p) · fl(s·t)) (q·p an exact integer
/// sum) differs from the f32 logit the full head computes by at most
/// β = ‖r‖‖x‖ + s‖q‖‖e‖ + 3.0001·2⁻²⁴·s‖q‖·t‖p‖ + γ‖w‖‖x‖, γ = 1.0001·K·2⁻²⁴ (Cauchy–Schwarz for both residuals; the
/// roundings of a; the f32 sum of the full head). With m = max(a − β), a token whose a + β is below m can neither reach
/// the maximum nor tie it; every other token's logit is computed exactly as <see cref="PackedMatrix"/> computes it (one
/// f32 fused multiply-add chain over k = 0 … K − 1 from zero: the same bits), and the first largest wins, as in a full
/// argmax.</para>
/// </remarks>
internal sealed unsafe class ScreenedHead : ICpuWork, IDisposable
{
    /// <summary>Tokens per block of the int8 copy: eight VNNI vectors of eight tokens.</summary>
    public const int Block = 64;

    /// <summary>The most candidates worth their exact logits; past it (a flat distribution) the caller runs the full head.</summary>
    public const int MaxCandidates = 2048;

    /// <summary>The most rows one pass over the int8 copy screens: four rows × four vectors of accumulators.</summary>
    public const int PassRows = 4;

    private readonly int _vocab, _inputs, _groups, _blocks;
    private readonly ScalarType _rowType;
    private readonly byte* _rows;     // the head [V, K] (f32 with bf16 values, bf16 or f16; the model's tensor, which outlives this), or null: approximations only
    private readonly float _maxAlpha, _maxSigma;
    private sbyte* _q;                // [blocks][K/4 groups][8 vectors][8 tokens][4 k]
    private int* _sums;               // per token: Σ q (the unsigned input's offset of 128 is taken off with it)
    private float* _scale, _alpha, _sigma;   // per token: s, ‖r‖ + γ‖w‖, s‖q‖ (rounded up; padding: 0)
    private float* _approx;           // per row of a pass and token: a
    private uint* _input;             // per row of a pass: K/4 words of four offset bytes (p + 128)
    private readonly int[] _candidates = new int[MaxCandidates];
    private readonly float[] _partMax = new float[64 * PassRows];
    private readonly float[] _t = new float[PassRows], _xNorm = new float[PassRows], _pTerm = new float[PassRows];
    private int _parts, _passRows, _padded;

    private ScreenedHead(Tensor exact, int vocab, int inputs, bool approximateOnly)
    {
        (_vocab, _inputs) = (vocab, inputs);
        _rowType = exact.dtype;
        fixed (byte* rows = exact.bytes)
        {
            _rows = rows;
        }

        _groups = (inputs + 3) / 4;
        _blocks = (vocab + Block - 1) / Block;
        int padded = _padded = _blocks * Block;
        nuint qBytes = (nuint)((long)padded * _groups * 4);
        _q = (sbyte*)NativeMemory.AlignedAlloc(qBytes, 64);
        NativeMemory.Clear(_q, qBytes);
        _sums = (int*)Allocate(padded);
        _scale = Allocate(padded);
        _alpha = Allocate(padded);
        _sigma = Allocate(padded);
        _approx = Allocate(PassRows * padded);
        _input = (uint*)Allocate(PassRows * _groups);

        double gamma = 1.0001 * inputs * Math.ScaleB(1, -24);
        float maxAlpha = 0, maxSigma = 0;
        object gate = new();
        Parallel.For(0, vocab, () => (0f, 0f), (v, _, local) =>
        {
            float* w = stackalloc float[inputs];
            Row(v, w);
            float big = 0;
            for (int k = 0; k < inputs; k++)
            {
                big = Math.Max(big, Math.Abs(w[k]));
            }

            float s = big / 127f;
            double residual = 0, norm = 0, levels = 0;
            int sum = 0;
            for (int k = 0; k < inputs; k++)
            {
                int level = s == 0 ? 0 : Math.Clamp((int)MathF.Round(w[k] / s), -127, 127);
                _q[Offset(v, k)] = (sbyte)level;
                sum += level;
                double r = w[k] - ((double)s * level);
                residual += r * r;
                norm += (double)w[k] * w[k];
                levels += (double)level * level;
            }

            _sums[v] = sum;
            _scale[v] = s;
            _alpha[v] = Up(Math.Sqrt(residual) + (gamma * Math.Sqrt(norm)));
            _sigma[v] = Up(s * Math.Sqrt(levels));
            return (Math.Max(local.Item1, _alpha[v]), Math.Max(local.Item2, _sigma[v]));
        }, local =>
        {
            lock (gate)
            {
                (maxAlpha, maxSigma) = (Math.Max(maxAlpha, local.Item1), Math.Max(maxSigma, local.Item2));
            }
        });
        (_maxAlpha, _maxSigma) = (maxAlpha, maxSigma);
        if (approximateOnly)
        {
            _rows = null;   // read to build the copy, not kept: no exact logits, so no argmax
        }
    }

    /// <summary>Gets whether this CPU runs the screen (AVX-512 for the packed head, VNNI for the screen).</summary>
    public static bool Supported => Avx512F.IsSupported && AvxVnni.IsSupported;

    /// <summary>Gets whether models build the screen (<see cref="Supported"/>, and <c>CORAL_SCREENED_HEAD</c> is not 0;
    /// set it to 0 for A/B measurements against the full head).</summary>
    public static bool Enabled { get; } = Supported && Environment.GetEnvironmentVariable("CORAL_SCREENED_HEAD") is not ("0" or "false");

    /// <summary>Gets the bytes the int8 copy and its per-token numbers hold.</summary>
    public long Bytes => (long)_padded * ((_groups * 4) + ((4 + PassRows) * sizeof(float)));

    /// <summary>Gets how many rows the screen has decided so far (for tests and measurements).</summary>
    public long Decisions { get; private set; }

    /// <summary>Gets the number of candidates the last <see cref="TryArgMax(float*, int, Span{int})"/> computed exactly (for measurements).</summary>
    public int LastCandidates { get; private set; }

    /// <summary>The last <see cref="TryArgMax(float*, int, Span{int})"/>'s screen value a of token <paramref name="v"/> and its error bound β
    /// (for tests: |a − logit| ≤ β for every token).</summary>
    internal (float Approx, float Bound) Screened(int v) => (_approx[v], Bound(0, v));

    /// <summary>Builds the screen of <paramref name="head"/> [V, K] (CPU, contiguous, f32, bf16 or f16; read in place, not
    /// copied: it must outlive the screen unless <paramref name="approximateOnly"/>), or returns null when this CPU lacks
    /// AVX-512 or VNNI, or f32 values are not all bf16 or f16 ones not all finite (the full head would not be the packed
    /// one whose bits this screen reproduces). With <paramref name="approximateOnly"/> the head is read only here, and the screen serves
    /// <see cref="TryApproxLogits"/> alone (<see cref="TryArgMax(float*, int, Span{int})"/> decides nothing).</summary>
    public static ScreenedHead? TryCreate(Tensor head, bool approximateOnly = false)
    {
        if (!Supported || head.dim() != 2 || head.device_type != DeviceType.CPU || !head.is_contiguous()
            || head.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)
            || (head.dtype != ScalarType.Float32 && head.numel() * 2 > int.MaxValue))
        {
            return null;
        }

        if ((head.dtype == ScalarType.Float32 && !PackedMatrix.AllBf16((uint*)CpuKernels.Pointer(head), head.numel()))
            || (head.dtype == ScalarType.Float16 && PackedMatrix.F16Exponents(CpuKernels.Pointer16(head), head.numel()) is null))
        {
            return null;
        }

        return new ScreenedHead(head, (int)head.shape[0], (int)head.shape[1], approximateOnly);
    }

    /// <summary>
    /// The index of the largest logit of <paramref name="x"/> (K floats) through the head, the first one on ties — the
    /// token a full <see cref="TensorPrimitives.IndexOfMax{T}(ReadOnlySpan{T})"/> over the packed head's logits picks.
    /// False (nothing decided) when x is zero or not finite, or more than <see cref="MaxCandidates"/> tokens survive.
    /// </summary>
    public bool TryArgMax(float* x, out int token)
    {
        Span<int> one = stackalloc int[1];
        bool decided = TryArgMax(x, 1, one);
        token = decided ? one[0] : -1;
        return decided;
    }

    /// <summary>The greedy token of each of <paramref name="rows"/> rows of <paramref name="x"/> ([rows, K]) into
    /// <paramref name="tokens"/>, screening <see cref="PassRows"/> rows per pass over the int8 copy; false when a row is
    /// not decided (as <see cref="TryArgMax(float*, out int)"/>).</summary>
    public bool TryArgMax(float* x, int rows, Span<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_q == null, this);
        if (_rows == null)
        {
            return false;   // approximations only: no exact logits to decide with
        }

        LastCandidates = 0;
        for (int first = 0; first < rows; first += PassRows)
        {
            if (!Pass(x, first, Math.Min(PassRows, rows - first)))
            {
                return false;
            }

            for (int r = 0; r < _passRows; r++)
            {
                float m = float.NegativeInfinity;
                for (int p = 0; p < _parts; p++)
                {
                    m = Math.Max(m, _partMax[(p * PassRows) + r]);
                }

                // The f32 sums a ± β round by at most 2⁻²⁴ of |a| + β ≤ |m| + 3·max β near the threshold: a margin of 2⁻²⁰.
                float threshold = m - (float)((Math.Abs(m) + (3.0 * ((_maxAlpha * _xNorm[r]) + (_maxSigma * _pTerm[r])))) * Math.ScaleB(1, -20));
                int count = Candidates(r, threshold);
                if (count < 0)
                {
                    return false;
                }

                LastCandidates += count;
                tokens[first + r] = Best(x + ((long)(first + r) * _inputs), count);
                Decisions++;
            }
        }

        return true;
    }

    /// <summary>
    /// The screen's values a (int8 approximations of the logits, within the bound β of each, see the remarks) of
    /// <paramref name="rows"/> rows of <paramref name="x"/> ([rows, K]) into <paramref name="y"/> (rows
    /// <paramref name="outputStride"/> floats apart; V values each): what a drafter needs, whose proposals are verified
    /// anyway, from half the bytes of the bf16 head. False (nothing written past the rows done) when a row is zero or not
    /// finite.
    /// </summary>
    public bool TryApproxLogits(float* x, int rows, float* y, int outputStride)
    {
        ObjectDisposedException.ThrowIf(_q == null, this);
        for (int first = 0; first < rows; first += PassRows)
        {
            if (!Pass(x, first, Math.Min(PassRows, rows - first)))
            {
                return false;
            }

            for (int r = 0; r < _passRows; r++)
            {
                new ReadOnlySpan<float>(_approx + ((long)r * _padded), _vocab).CopyTo(new Span<float>(y + ((long)(first + r) * outputStride), _vocab));
            }
        }

        return true;
    }

    /// <summary>One pass over the int8 copy for rows <paramref name="first"/> … + <paramref name="count"/> − 1 of x
    /// (at most <see cref="PassRows"/>): a and each part's max(a − β); false when a row is zero or not finite.</summary>
    private bool Pass(float* x, int first, int count)
    {
        _passRows = count;
        for (int r = 0; r < count; r++)
        {
            if (!Quantize(x + ((long)(first + r) * _inputs), r))
            {
                return false;
            }
        }

        _parts = Math.Min(Math.Min(_blocks, 64), CpuParallel.Threads * 2);
        CpuParallel.Run(this, _parts);
        return true;
    }

    /// <summary>Row <paramref name="r"/> of the pass: x as t·p (p int8, stored offset by 128 as VNNI's unsigned operand)
    /// and the norms of its bound; false when x is zero or not finite.</summary>
    private bool Quantize(float* x, int r)
    {
        float big = 0;
        for (int k = 0; k < _inputs; k++)
        {
            big = Math.Max(big, Math.Abs(x[k]));
        }

        if (!float.IsFinite(big) || big == 0 || big > 1e15f)
        {
            return false;
        }

        float t = big / 127f;
        double xNorm = 0, eNorm = 0, pNorm = 0;
        byte* offset = (byte*)(_input + ((long)r * _groups));
        for (int k = 0; k < _groups * 4; k++)
        {
            int level = k < _inputs ? Math.Clamp((int)MathF.Round(x[k] / t), -127, 127) : 0;
            offset[k] = (byte)(level + 128);
            if (k < _inputs)
            {
                double e = x[k] - ((double)t * level);
                xNorm += (double)x[k] * x[k];
                eNorm += e * e;
                pNorm += (double)level * level;
            }
        }

        _t[r] = t;
        _xNorm[r] = Up(Math.Sqrt(xNorm));
        _pTerm[r] = Up(Math.Sqrt(eNorm) + (3.0001 * Math.ScaleB(1, -24) * t * Math.Sqrt(pNorm)));
        return true;
    }

    /// <summary>The first largest exact logit among the candidates (IndexOfMax's order: +0 above −0).</summary>
    private int Best(float* x, int count)
    {
        int token = -1;
        float best = float.NegativeInfinity;
        for (int i = 0; i < count; i++)
        {
            int v = _candidates[i];
            float logit = Exact(v, x);
            if (token < 0 || logit > best || (logit == best && logit == 0 && float.IsNegative(best) && !float.IsNegative(logit)))
            {
                (best, token) = (logit, v);
            }
        }

        return token;
    }

    void ICpuWork.Run(int part)
    {
        int b0 = part * _blocks / _parts, b1 = (part + 1) * _blocks / _parts;
        Span<float> max = _partMax.AsSpan(part * PassRows, PassRows);
        if (_passRows == 1)
        {
            max[0] = ScreenOne(b0, b1);
        }
        else if (_passRows == 2)
        {
            ScreenRows<RowCount.Two>(b0, b1, max);
        }
        else if (_passRows == 3)
        {
            ScreenRows<RowCount.Three>(b0, b1, max);
        }
        else
        {
            ScreenRows<RowCount.Four>(b0, b1, max);
        }
    }

    /// <summary>One row over blocks [b0, b1), eight vectors of tokens at a time (eight independent VNNI chains): a per
    /// token into the approx buffer; returns max(a − β).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private float ScreenOne(int b0, int b1)
    {
        int groups = _groups;
        uint* input = _input;
        var lower = Vector256.Create(float.NegativeInfinity);
        for (int b = b0; b < b1; b++)
        {
            sbyte* q = _q + ((long)b * groups * Block * 4);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            for (int g = 0; g < groups; g++, q += Block * 4)
            {
                Vector256<byte> p = Vector256.Create(input[g]).AsByte();
                a0 = AvxVnni.MultiplyWideningAndAdd(a0, p, Vector256.Load(q));
                a1 = AvxVnni.MultiplyWideningAndAdd(a1, p, Vector256.Load(q + 32));
                a2 = AvxVnni.MultiplyWideningAndAdd(a2, p, Vector256.Load(q + 64));
                a3 = AvxVnni.MultiplyWideningAndAdd(a3, p, Vector256.Load(q + 96));
                a4 = AvxVnni.MultiplyWideningAndAdd(a4, p, Vector256.Load(q + 128));
                a5 = AvxVnni.MultiplyWideningAndAdd(a5, p, Vector256.Load(q + 160));
                a6 = AvxVnni.MultiplyWideningAndAdd(a6, p, Vector256.Load(q + 192));
                a7 = AvxVnni.MultiplyWideningAndAdd(a7, p, Vector256.Load(q + 224));
            }

            int v = b * Block;
            lower = Vector256.Max(lower, Finish(0, v, a0));
            lower = Vector256.Max(lower, Finish(0, v + 8, a1));
            lower = Vector256.Max(lower, Finish(0, v + 16, a2));
            lower = Vector256.Max(lower, Finish(0, v + 24, a3));
            lower = Vector256.Max(lower, Finish(0, v + 32, a4));
            lower = Vector256.Max(lower, Finish(0, v + 40, a5));
            lower = Vector256.Max(lower, Finish(0, v + 48, a6));
            lower = Vector256.Max(lower, Finish(0, v + 56, a7));
        }

        return Horizontal(lower);
    }

    /// <summary>Two to four rows over blocks [b0, b1), four vectors of tokens at a time (half a block): up to sixteen
    /// accumulators, four weight vectors and the broadcast input (EVEX-encoded VNNI: 32 vector registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ScreenRows<TRows>(int b0, int b1, Span<float> max)
        where TRows : struct, IRowCount
    {
        int groups = _groups;
        uint* input0 = _input, input1 = input0 + groups, input2 = input1 + groups, input3 = input2 + groups;
        var lower0 = Vector256.Create(float.NegativeInfinity);
        Vector256<float> lower1 = lower0, lower2 = lower0, lower3 = lower0;
        for (int half = b0 * 2; half < b1 * 2; half++)
        {
            sbyte* q = _q + ((long)(half / 2) * groups * Block * 4) + ((half % 2) * 128);
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector256<int> c0 = default, c1 = default, c2 = default, c3 = default;
            Vector256<int> d0 = default, d1 = default, d2 = default, d3 = default;
            Vector256<int> e0 = default, e1 = default, e2 = default, e3 = default;
            for (int g = 0; g < groups; g++, q += Block * 4)
            {
                Vector256<byte> p = Vector256.Create(input0[g]).AsByte();
                a0 = AvxVnni.MultiplyWideningAndAdd(a0, p, Vector256.Load(q));
                a1 = AvxVnni.MultiplyWideningAndAdd(a1, p, Vector256.Load(q + 32));
                a2 = AvxVnni.MultiplyWideningAndAdd(a2, p, Vector256.Load(q + 64));
                a3 = AvxVnni.MultiplyWideningAndAdd(a3, p, Vector256.Load(q + 96));
                p = Vector256.Create(input1[g]).AsByte();
                c0 = AvxVnni.MultiplyWideningAndAdd(c0, p, Vector256.Load(q));
                c1 = AvxVnni.MultiplyWideningAndAdd(c1, p, Vector256.Load(q + 32));
                c2 = AvxVnni.MultiplyWideningAndAdd(c2, p, Vector256.Load(q + 64));
                c3 = AvxVnni.MultiplyWideningAndAdd(c3, p, Vector256.Load(q + 96));
                if (TRows.Count >= 3)
                {
                    p = Vector256.Create(input2[g]).AsByte();
                    d0 = AvxVnni.MultiplyWideningAndAdd(d0, p, Vector256.Load(q));
                    d1 = AvxVnni.MultiplyWideningAndAdd(d1, p, Vector256.Load(q + 32));
                    d2 = AvxVnni.MultiplyWideningAndAdd(d2, p, Vector256.Load(q + 64));
                    d3 = AvxVnni.MultiplyWideningAndAdd(d3, p, Vector256.Load(q + 96));
                }

                if (TRows.Count >= 4)
                {
                    p = Vector256.Create(input3[g]).AsByte();
                    e0 = AvxVnni.MultiplyWideningAndAdd(e0, p, Vector256.Load(q));
                    e1 = AvxVnni.MultiplyWideningAndAdd(e1, p, Vector256.Load(q + 32));
                    e2 = AvxVnni.MultiplyWideningAndAdd(e2, p, Vector256.Load(q + 64));
                    e3 = AvxVnni.MultiplyWideningAndAdd(e3, p, Vector256.Load(q + 96));
                }
            }

            int v = half * 32;
            lower0 = Vector256.Max(lower0, Finish4(0, v, a0, a1, a2, a3));
            lower1 = Vector256.Max(lower1, Finish4(1, v, c0, c1, c2, c3));
            if (TRows.Count >= 3)
            {
                lower2 = Vector256.Max(lower2, Finish4(2, v, d0, d1, d2, d3));
            }

            if (TRows.Count >= 4)
            {
                lower3 = Vector256.Max(lower3, Finish4(3, v, e0, e1, e2, e3));
            }
        }

        max[0] = Horizontal(lower0);
        max[1] = Horizontal(lower1);
        if (TRows.Count >= 3)
        {
            max[2] = Horizontal(lower2);
        }

        if (TRows.Count >= 4)
        {
            max[3] = Horizontal(lower3);
        }
    }

    /// <summary>Row r's <see cref="Finish"/> for 32 tokens from <paramref name="v"/>: max of their a − β.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> Finish4(int r, int v, Vector256<int> s0, Vector256<int> s1, Vector256<int> s2, Vector256<int> s3) =>
        Vector256.Max(Vector256.Max(Finish(r, v, s0), Finish(r, v + 8, s1)), Vector256.Max(Finish(r, v + 16, s2), Finish(r, v + 24, s3)));

    private static float Horizontal(Vector256<float> x)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < 8; i++)
        {
            max = Math.Max(max, x[i]);
        }

        return max;
    }

    /// <summary>Row r's a = fl(q·p) · fl(s·t) for eight tokens (q·p = the VNNI sum minus 128·Σq, exact) into the approx
    /// buffer; returns a − β (padding tokens: −∞, they never compete).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> Finish(int r, int v, Vector256<int> sum)
    {
        Vector256<int> dot = sum - (Vector256.Load(_sums + v) << 7);
        Vector256<float> a = Vector256.ConvertToSingle(dot) * (Vector256.Load(_scale + v) * Vector256.Create(_t[r]));
        a.Store(_approx + ((long)r * _padded) + v);
        Vector256<float> lower = a - Bound(v, Vector256.Create(_xNorm[r]), Vector256.Create(_pTerm[r]));
        if (v + 8 <= _vocab)
        {
            return lower;
        }

        Vector256<int> index = Vector256.Create(v) + Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
        return Vector256.ConditionalSelect(Vector256.LessThan(index, Vector256.Create(_vocab)).AsSingle(), lower, Vector256.Create(float.NegativeInfinity));
    }

    /// <summary>Eight tokens' β = α‖x‖ + σ(‖e‖ + 3.0001·2⁻²⁴·t‖p‖).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> Bound(int v, Vector256<float> xNorm, Vector256<float> pTerm) =>
        (Vector256.Load(_alpha + v) * xNorm) + (Vector256.Load(_sigma + v) * pTerm);

    private float Bound(int r, int v) => (_alpha[v] * _xNorm[r]) + (_sigma[v] * _pTerm[r]);

    /// <summary>Row r's tokens whose a + β reaches <paramref name="threshold"/>, in index order; −1 when more than
    /// <see cref="MaxCandidates"/>.</summary>
    private int Candidates(int r, float threshold)
    {
        int count = 0;
        float* approx = _approx + ((long)r * _padded);
        var xNorm = Vector256.Create(_xNorm[r]);
        var pTerm = Vector256.Create(_pTerm[r]);
        var limit = Vector256.Create(threshold);
        int full = _vocab / 8 * 8;
        for (int v = 0; v < full; v += 8)
        {
            Vector256<float> upper = Vector256.Load(approx + v) + Bound(v, xNorm, pTerm);
            uint bits = Vector256.GreaterThanOrEqual(upper, limit).ExtractMostSignificantBits();
            while (bits != 0)
            {
                if (count == MaxCandidates)
                {
                    return -1;
                }

                _candidates[count++] = v + BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
            }
        }

        for (int v = full; v < _vocab; v++)
        {
            if (approx[v] + Bound(r, v) >= threshold)
            {
                if (count == MaxCandidates)
                {
                    return -1;
                }

                _candidates[count++] = v;
            }
        }

        return count;
    }

    /// <summary>Token v's f32 logit exactly as <see cref="PackedMatrix"/> computes it: one fused multiply-add chain from 0.</summary>
    [SkipLocalsInit]
    private float Exact(int v, float* x)
    {
        float acc = 0f;
        if (_rowType == ScalarType.BFloat16)
        {
            ushort* w = (ushort*)_rows + ((long)v * _inputs);
            for (int k = 0; k < _inputs; k++)
            {
                acc = MathF.FusedMultiplyAdd(BitConverter.Int32BitsToSingle(w[k] << 16), x[k], acc);
            }
        }
        else if (_rowType == ScalarType.Float16)
        {
            // Widened first by the kernels' vector code (the scalar Half conversion costs ≈ 10 ns a value).
            float* w = stackalloc float[_inputs];
            CpuKernels.Widen((ushort*)_rows + ((long)v * _inputs), ScalarType.Float16, w, _inputs);
            for (int k = 0; k < _inputs; k++)
            {
                acc = MathF.FusedMultiplyAdd(w[k], x[k], acc);
            }
        }
        else
        {
            float* w = (float*)_rows + ((long)v * _inputs);
            for (int k = 0; k < _inputs; k++)
            {
                acc = MathF.FusedMultiplyAdd(w[k], x[k], acc);
            }
        }

        return acc;
    }

    /// <summary>Row v of the exact head as f32.</summary>
    private void Row(int v, float* w)
    {
        if (_rowType != ScalarType.Float32)
        {
            CpuKernels.Widen((ushort*)_rows + ((long)v * _inputs), _rowType, w, _inputs);
        }
        else
        {
            new ReadOnlySpan<float>((float*)_rows + ((long)v * _inputs), _inputs).CopyTo(new Span<float>(w, _inputs));
        }
    }

    /// <summary>Where q[v, k] lives: block v / 64, group k / 4, vector (v % 64) / 8, lane v % 8, byte k % 4.</summary>
    private long Offset(int v, int k) =>
        ((((((long)(v / Block) * _groups) + (k / 4)) * 8) + (v % Block / 8)) * 32) + ((v % 8) * 4) + (k % 4);

    /// <summary>A non-negative double as the next f32 up (a bound stays a bound).</summary>
    private static float Up(double value) => MathF.BitIncrement((float)value);

    private static float* Allocate(int count)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(Math.Max(count, 16) * sizeof(float)), 64);
        NativeMemory.Clear(p, (nuint)(Math.Max(count, 16) * sizeof(float)));
        return p;
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_q);
        NativeMemory.AlignedFree(_sums);
        NativeMemory.AlignedFree(_scale);
        NativeMemory.AlignedFree(_alpha);
        NativeMemory.AlignedFree(_sigma);
        NativeMemory.AlignedFree(_approx);
        NativeMemory.AlignedFree(_input);
        _q = null;
        _sums = null;
        _input = null;
        _scale = _alpha = _sigma = _approx = null;
    }
}

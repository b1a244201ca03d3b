using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Numerics.Tensors;

namespace Coral.AI;

/// <summary>
/// Q8_0, Q4_0 and Q4_K with int8 activations (llama.cpp's arithmetic for all three): each call rounds its input rows to Q8_0 blocks
/// of their own — per row and group of 32 inputs, d = max|x| / 127, levels round(x / d) — and the micro-kernel multiplies
/// bytes by bytes with AVX-VNNI (<c>vpdpbusd</c>: four products a lane into an int32, 32 a 256-bit instruction, nothing
/// widened), where the f32 kernel widens every level and does 16 multiply-adds an instruction.
/// </summary>
/// <remarks>
/// <para>Layout: per block of 32 outputs, steps of four inputs in which a 32-bit lane holds one output's four
/// consecutive inputs — Q8_0: level + 128 a byte, <c>[K/4][32][4]</c>; Q4_0: level + 8 a nibble, 64 bytes a step, the
/// low nibbles of each half's 32 bytes outputs 0–7 of that half of 16, the high ones 8–15 — and the scales of the f32
/// layout, <c>[K/32][32]</c>. The offset makes the weights the instruction's unsigned operand; offset · Σ q of the
/// activations comes off each group's integer sum.</para>
/// <para>Exactness: a group's sum Σ level · q is an exact int32 (in any order), and an output's total is
/// fma(sum, w_scale · x_scale, total) over groups in order from zero — nothing depends on the row count, so a row has the
/// same bits alone, in a batch or as a tree node (lossless greedy speculation, batch-invariant serving). The activations'
/// rounding is an error of its own (≤ d / 2 an input), which llama.cpp makes too: Coral's Q8_0 logits on such a CPU are
/// closer to llama.cpp's than the f32-activation kernel's (tested).</para>
/// </remarks>
internal sealed unsafe partial class PackedMatrix
{
    private bool _int8;        // Q8_0 / Q4_0 in the VNNI layout, multiplied with int8 activations
    private sbyte* _xq;        // the current call's activation levels [rows][K]
    private float* _xd;        // their scales [rows][K/32] (f16-rounded, as llama.cpp stores them)
    private int* _xsum;        // Σ levels per group [rows][K/32]
    private int _xRows;        // rows the three have room for

    /// <summary>Gets whether this CPU multiplies quantized weights with int8 activations (AVX-VNNI and AVX-512).</summary>
    public static bool Int8Supported => AvxVnni.IsSupported && Avx512F.IsSupported;

    /// <summary>Gets or sets whether Q8_0 and Q4_0 matrices packed from now on use int8 activations (<see cref="Int8Supported"/>, and
    /// <c>CORAL_INT8_ACTIVATIONS</c> is not 0). Tests switch it to cover the f32-activation kernel too.</summary>
    internal static bool Int8Activations { get; set; } = Int8Supported && Environment.GetEnvironmentVariable("CORAL_INT8_ACTIVATIONS") is not ("0" or "false");

    /// <summary>Gets whether this matrix multiplies int8 activations (quantized while <see cref="Int8Activations"/> was on).</summary>
    public bool UsesInt8Activations => _int8;

    /// <summary>Byte offset of level (input <paramref name="c"/>, column <paramref name="j"/>) within a Q8_0 block in the VNNI layout.</summary>
    private static long VnniOffset(long c, int j) => ((c / 4) * 4 * Block) + (j * 4) + (c % 4);

    /// <summary>Byte offset and nibble shift of level (input <paramref name="c"/>, column <paramref name="j"/>) within a Q4_0
    /// block in the VNNI layout: step c / 4 of 64 bytes, half j / 16 of 32, lane j % 8, the high nibble for j % 16 ≥ 8.</summary>
    private static (long Offset, int Shift) VnniNibble(long c, int j) => (((c / 4) * 2 * Block) + ((j / 16) * 32) + ((j % 8) * 4) + (c % 4), j % 16 >= 8 ? 4 : 0);

    /// <summary>Rounds the call's rows to int8 levels per group of 32 inputs: d = max|x| / 127 (stored f16-rounded), levels
    /// round-to-nearest-even of x / d with the unrounded d (llama.cpp's <c>quantize_row_q8_0</c>), and Σ levels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void QuantizeActivations()
    {
        int k = Inputs, groups = k / QuantBlocks.Size;
        if (_xRows < _rows)
        {
            NativeMemory.AlignedFree(_xq);
            NativeMemory.AlignedFree(_xd);
            NativeMemory.AlignedFree(_xsum);
            _xRows = Math.Max(_rows, 2 * _xRows);
            _xq = (sbyte*)NativeMemory.AlignedAlloc((nuint)((long)_xRows * k), 64);
            _xd = (float*)NativeMemory.AlignedAlloc((nuint)((long)_xRows * groups * sizeof(float)), 64);
            _xsum = (int*)NativeMemory.AlignedAlloc((nuint)((long)_xRows * groups * sizeof(int)), 64);
        }

        for (int r = 0; r < _rows; r++)
        {
            for (int g = 0; g < groups; g++)
            {
                long at = ((long)r * k) + (g * QuantBlocks.Size);
                Vector512<float> a = Vector512.Load(_x + at), b = Vector512.Load(_x + at + 16);
                float amax = MathF.Abs(TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(_x + at, QuantBlocks.Size)));
                float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                Vector512<int> qa = Avx512F.ConvertToVector512Int32(a * id), qb = Avx512F.ConvertToVector512Int32(b * id);
                Avx512F.ConvertToVector128SByteWithSaturation(qa).Store(_xq + at);
                Avx512F.ConvertToVector128SByteWithSaturation(qb).Store(_xq + at + 16);
                _xd[(r * groups) + g] = (float)(Half)d;
                _xsum[(r * groups) + g] = Vector512.Sum(qa + qb);
            }
        }
    }

    /// <summary>Blocks <paramref name="b0"/> to <paramref name="b1"/> of the current call in the VNNI layout, a block (32
    /// outputs) and up to four rows at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private void RangeInt8(int b0, int b1)
    {
        int k = Inputs, n = Outputs, groups = k / QuantBlocks.Size, rows = _rows, ld = _ldy;
        long blockBytes = (long)k * LevelBytes(_quantization), blockScales = BlockScales;
        float* tail = stackalloc float[4 * Block];   // a last block past the matrix's outputs
        for (int b = b0; b < b1; b++)
        {
            bool full = (b + 1) * Block <= n;
            byte* w = (byte*)_levels + (b * blockBytes);
            float* s = _scales + (b * blockScales);
            for (int r = 0; r < rows;)
            {
                int m = Math.Min(rows - r, 4), ldy = full ? ld : Block;
                float* y = full ? _y + ((long)r * ld) + (b * Block) : tail;
                sbyte* q = _xq + ((long)r * k);
                float* d = _xd + ((long)r * groups);
                int* sums = _xsum + ((long)r * groups);
                if (rows == 1 && full && b + 1 < b1 && (b + 2) * Block <= n)
                {
                    // One row: two blocks at a time, two streams of levels in flight (the f32 kernel's pairs of blocks).
                    if (_quantization == WeightQuantization.Q4_K)
                    {
                        TilePair<Q4MinBytes>(w, s, w + blockBytes, s + blockScales, q, d, sums, k, y);
                    }
                    else if (_quantization == WeightQuantization.Q4_0)
                    {
                        TilePair<Q4Bytes>(w, s, w + blockBytes, s + blockScales, q, d, sums, k, y);
                    }
                    else
                    {
                        TilePair<Q8Bytes>(w, s, w + blockBytes, s + blockScales, q, d, sums, k, y);
                    }

                    b++;
                    break;
                }

                if (_quantization == WeightQuantization.Q4_K)
                {
                    TileRows<Q4MinBytes>(m, w, s, q, d, sums, k, y, ldy);
                }
                else if (_quantization == WeightQuantization.Q4_0)
                {
                    TileRows<Q4Bytes>(m, w, s, q, d, sums, k, y, ldy);
                }
                else
                {
                    TileRows<Q8Bytes>(m, w, s, q, d, sums, k, y, ldy);
                }

                if (!full)
                {
                    int count = n - (b * Block);
                    for (int i = 0; i < m; i++)
                    {
                        new ReadOnlySpan<float>(tail + (i * Block), count).CopyTo(new Span<float>(_y + ((long)(r + i) * ld) + (b * Block), count));
                    }
                }

                r += m;
            }
        }
    }

    private static void TileRows<TLevels>(int rows, byte* w, float* s, sbyte* q, float* d, int* sums, int k, float* y, int ldy)
        where TLevels : struct, IByteLevels
    {
        switch (rows)
        {
            case 4: TileInt8<RowCount.Four, TLevels>(w, s, q, d, sums, k, y, ldy); break;
            case 3: TileInt8<RowCount.Three, TLevels>(w, s, q, d, sums, k, y, ldy); break;
            case 2: TileInt8<RowCount.Two, TLevels>(w, s, q, d, sums, k, y, ldy); break;
            default: TileInt8<RowCount.One, TLevels>(w, s, q, d, sums, k, y, ldy); break;
        }
    }

    /// <summary>How a block's levels sit in the VNNI layout, as a type (one micro-kernel body per format).</summary>
    private interface IByteLevels
    {
        /// <summary>Gets the bytes of one step: 4 inputs × 32 outputs.</summary>
        static abstract int StepBytes { get; }

        /// <summary>Gets what the stored (unsigned) levels exceed the levels by: Σ q times it comes off each group's sum.</summary>
        static abstract int Offset { get; }

        /// <summary>Gets whether the format is Q4_K's (scales and minimums formed from compact ones,
        /// <see cref="GroupScales{TLevels}"/>): min · x scale · Σ q comes off each group.</summary>
        static abstract bool HasMin { get; }

        /// <summary>The unsigned levels of one step's half (16 outputs): outputs 0–7 and 8–15 of the half, four inputs a lane.</summary>
        static abstract (Vector256<byte> W0, Vector256<byte> W1) Load(byte* step, int half);
    }

    /// <summary>Q8_0: level + 128 a byte; a step's half is 64 bytes.</summary>
    private readonly struct Q8Bytes : IByteLevels
    {
        public static int StepBytes => 4 * Block;

        public static int Offset => 128;

        public static bool HasMin => false;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector256<byte> W0, Vector256<byte> W1) Load(byte* step, int half) =>
            (Vector256.Load(step + (half * 64)), Vector256.Load(step + (half * 64) + 32));
    }

    /// <summary>Q4_0: level + 8 a nibble; a step's half is 32 bytes, outputs 0–7 of the half in the low nibbles and 8–15 in
    /// the high ones.</summary>
    private readonly struct Q4Bytes : IByteLevels
    {
        public static int StepBytes => 2 * Block;

        public static int Offset => 8;

        public static bool HasMin => false;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector256<byte> W0, Vector256<byte> W1) Load(byte* step, int half)
        {
            Vector256<byte> v = Vector256.Load(step + (half * 32)), low = Vector256.Create((byte)15);
            return (v & low, Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & low);
        }
    }

    /// <summary>Q4_K: the levels as stored (0–15, no offset), with minimums.</summary>
    private readonly struct Q4MinBytes : IByteLevels
    {
        public static int StepBytes => 2 * Block;

        public static int Offset => 0;

        public static bool HasMin => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector256<byte> W0, Vector256<byte> W1) Load(byte* step, int half) => Q4Bytes.Load(step, half);
    }

    /// <summary>How far ahead the int8 kernel prefetches a block's levels (Q8_0: four groups, Q4_0: eight).</summary>
    private const int PrefetchBytes = 4096;

    /// <summary>
    /// The int8 micro-kernel: <typeparamref name="TRows"/> rows × one block of 32 outputs, taken as two halves of 16 (two
    /// 256-bit accumulators a row: at most 11 vector registers, within VEX's 16). Per group of 32 inputs, eight steps of
    /// four inputs each add four byte products a lane; then each output's total += (sum − 128 · Σ q) · (w scale · x scale).
    /// Prefetches the block's levels two groups ahead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileInt8<TRows, TLevels>(byte* w, float* s, sbyte* q0, float* d0, int* sums0, int k, float* y0, int ldy)
        where TRows : struct, IRowCount
        where TLevels : struct, IByteLevels
    {
        int groups = k / QuantBlocks.Size;
        sbyte* q1 = q0 + k, q2 = q1 + k, q3 = q2 + k;   // rows past TRows.Count are never read
        float* d1 = d0 + groups, d2 = d1 + groups, d3 = d2 + groups;
        int* sums1 = sums0 + groups, sums2 = sums1 + groups, sums3 = sums2 + groups;
        float* y1 = y0 + ldy, y2 = y1 + ldy, y3 = y2 + ldy;
        int groupBytes = 8 * TLevels.StepBytes;   // 32 inputs × 32 outputs
        int ahead = PrefetchBytes / groupBytes;
        for (int g = 0; g < groups; g++)
        {
            byte* wg = w + ((long)g * groupBytes);
            bool first = g == 0;
            for (int h = 0; h < 2; h++)
            {
                Vector256<int> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
                byte* p = wg;
                // The group PrefetchBytes ahead, its lines split between the halves; past the block's end that is the next
                // block's start (blocks are contiguous), and past the matrix's end a prefetch is harmless.
                for (int line = h; line < groupBytes / 64; line += 2)
                {
                    Sse.Prefetch0(wg + (ahead * groupBytes) + (line * 64));
                }

                int x = g * QuantBlocks.Size;
                for (int step = 0; step < 8; step++, p += TLevels.StepBytes, x += 4)
                {
                    var (w0, w1) = TLevels.Load(p, h);
                    Vector256<sbyte> x0 = Vector256.Create(*(int*)(q0 + x)).AsSByte();
                    a0 = AvxVnni.MultiplyWideningAndAdd(a0, w0, x0);
                    b0 = AvxVnni.MultiplyWideningAndAdd(b0, w1, x0);
                    if (TRows.Count > 1)
                    {
                        Vector256<sbyte> x1 = Vector256.Create(*(int*)(q1 + x)).AsSByte();
                        a1 = AvxVnni.MultiplyWideningAndAdd(a1, w0, x1);
                        b1 = AvxVnni.MultiplyWideningAndAdd(b1, w1, x1);
                    }

                    if (TRows.Count > 2)
                    {
                        Vector256<sbyte> x2 = Vector256.Create(*(int*)(q2 + x)).AsSByte();
                        a2 = AvxVnni.MultiplyWideningAndAdd(a2, w0, x2);
                        b2 = AvxVnni.MultiplyWideningAndAdd(b2, w1, x2);
                    }

                    if (TRows.Count > 3)
                    {
                        Vector256<sbyte> x3 = Vector256.Create(*(int*)(q3 + x)).AsSByte();
                        a3 = AvxVnni.MultiplyWideningAndAdd(a3, w0, x3);
                        b3 = AvxVnni.MultiplyWideningAndAdd(b3, w1, x3);
                    }
                }

                int o = h * 16;
                var (s0, s1, m0, m1) = GroupScales<TLevels>(s, g, groups, o);
                Finish<TLevels>(y0 + o, a0, b0, sums0[g], d0[g], s0, s1, m0, m1, first);
                if (TRows.Count > 1)
                {
                    Finish<TLevels>(y1 + o, a1, b1, sums1[g], d1[g], s0, s1, m0, m1, first);
                }

                if (TRows.Count > 2)
                {
                    Finish<TLevels>(y2 + o, a2, b2, sums2[g], d2[g], s0, s1, m0, m1, first);
                }

                if (TRows.Count > 3)
                {
                    Finish<TLevels>(y3 + o, a3, b3, sums3[g], d3[g], s0, s1, m0, m1, first);
                }
            }
        }
    }

    /// <summary>One row × two adjacent blocks (64 outputs): per group and half, the two blocks' steps side by side — each
    /// output computes exactly what <see cref="TileInt8{TRows, TLevels}"/> computes for it, with two streams of levels in
    /// flight instead of one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TilePair<TLevels>(byte* wa, float* sa, byte* wb, float* sb, sbyte* q, float* d, int* sums, int k, float* y)
        where TLevels : struct, IByteLevels
    {
        int groups = k / QuantBlocks.Size, groupBytes = 8 * TLevels.StepBytes, ahead = PrefetchBytes / groupBytes;
        for (int g = 0; g < groups; g++)
        {
            byte* ga = wa + ((long)g * groupBytes), gb = wb + ((long)g * groupBytes);
            bool first = g == 0;
            int sum = sums[g];
            float scale = d[g];
            for (int h = 0; h < 2; h++)
            {
                for (int line = h; line < groupBytes / 64; line += 2)
                {
                    Sse.Prefetch0(ga + (ahead * groupBytes) + (line * 64));
                    Sse.Prefetch0(gb + (ahead * groupBytes) + (line * 64));
                }

                Vector256<int> a0 = default, b0 = default, a1 = default, b1 = default;
                byte* pa = ga, pb = gb;
                int x = g * QuantBlocks.Size;
                for (int step = 0; step < 8; step++, pa += TLevels.StepBytes, pb += TLevels.StepBytes, x += 4)
                {
                    var (w0, w1) = TLevels.Load(pa, h);
                    var (v0, v1) = TLevels.Load(pb, h);
                    Vector256<sbyte> x0 = Vector256.Create(*(int*)(q + x)).AsSByte();
                    a0 = AvxVnni.MultiplyWideningAndAdd(a0, w0, x0);
                    b0 = AvxVnni.MultiplyWideningAndAdd(b0, w1, x0);
                    a1 = AvxVnni.MultiplyWideningAndAdd(a1, v0, x0);
                    b1 = AvxVnni.MultiplyWideningAndAdd(b1, v1, x0);
                }

                int o = h * 16;
                var (e0, e1, n0, n1) = GroupScales<TLevels>(sa, g, groups, o);
                var (e2, e3, n2, n3) = GroupScales<TLevels>(sb, g, groups, o);
                Finish<TLevels>(y + o, a0, b0, sum, scale, e0, e1, n0, n1, first);
                Finish<TLevels>(y + Block + o, a1, b1, sum, scale, e2, e3, n2, n3, first);
            }
        }
    }

    /// <summary>Group <paramref name="g"/>'s scales (and Q4_K's minimums) for 16 outputs from <paramref name="from"/> of the
    /// block whose scale region is <paramref name="s"/>: stored f32 scales, or d · sub-scale and dmin · sub-min (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float> S0, Vector256<float> S1, Vector256<float> M0, Vector256<float> M1) GroupScales<TLevels>(float* s, int g, int groups, int from)
        where TLevels : struct, IByteLevels
    {
        if (!TLevels.HasMin)
        {
            float* sg = s + (g * Block) + from;
            return (Vector256.Load(sg), Vector256.Load(sg + 8), default, default);
        }

        byte* sub = (byte*)s + (g * 64) + from;
        float* super = s + (groups * 16) + (g / 8 * 64) + from;
        Vector256<float> Widen(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p));
        return (Widen(sub) * Vector256.Load(super), Widen(sub + 8) * Vector256.Load(super + 8),
            Widen(sub + 32) * Vector256.Load(super + 32), Widen(sub + 40) * Vector256.Load(super + 40));
    }

    /// <summary>16 outputs' totals at <paramref name="y"/> += (group sum − offset · Σ q) · (w scale · x scale), fused (the
    /// first group's from zero); then for Q4_K += min · −(x scale · Σ q), fused (<paramref name="m0"/>, <paramref name="m1"/>:
    /// the minimums). <paramref name="sum"/> is the activations' Σ q.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish<TLevels>(float* y, Vector256<int> a, Vector256<int> b, int sum, float xScale, Vector256<float> s0, Vector256<float> s1,
        Vector256<float> m0, Vector256<float> m1, bool first)
        where TLevels : struct, IByteLevels
    {
        var off = Vector256.Create(TLevels.Offset * sum);
        Vector256<float> fa = Vector256.ConvertToSingle(a - off), fb = Vector256.ConvertToSingle(b - off);
        Vector256<float> zero = Vector256<float>.Zero;
        Vector256.FusedMultiplyAdd(fa, s0 * xScale, first ? zero : Vector256.Load(y)).Store(y);
        Vector256.FusedMultiplyAdd(fb, s1 * xScale, first ? zero : Vector256.Load(y + 8)).Store(y + 8);
        if (TLevels.HasMin)
        {
            var minus = Vector256.Create(-(xScale * sum));
            Vector256.FusedMultiplyAdd(m0, minus, Vector256.Load(y)).Store(y);
            Vector256.FusedMultiplyAdd(m1, minus, Vector256.Load(y + 8)).Store(y + 8);
        }
    }
}

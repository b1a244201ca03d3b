using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// A weight for the CPU kernels' GEMMs, y[R, N] = x[R, K] · W[K, N]: stored as bf16 — or as f16, for a checkpoint
/// stored so — in blocks of 32 output columns (<c>[N/32][K][32]</c>, contiguous per block), multiplied in f32. Only
/// weights whose every value the 16-bit format holds are packed, so the product uses exactly the checkpoint's values (a
/// bf16 or f16 checkpoint loaded as f32, as the demo pair is).
/// Within a block's row of 32, the 32-bit word j holds column j in its low half and column 16 + j in its high half, so
/// that one 64-byte load becomes the block's two f32 vectors with one shift and one mask (the high half of an f32 is its
/// bf16); a plain column order needed a widening move and a shift per 16 values, and the widening competed with the
/// multiply-adds for the vector ports (a 4-row head 20-40% slower).
/// </summary>
/// <remarks>
/// <para>Why: a decode step on CPU streams every weight once, and two cores get ≈ 25 GB/s from this VM's memory
/// (<c>Coral.Bench --profile</c>); bf16 halves those bytes against f32, and the packed blocks are read front to back.
/// MKL's f32 GEMM, the alternative, takes a GEMV for one row and computes rows past its last whole 4-row block another
/// way, so a speculative engine has to pad its rows to whole blocks to stay exact; and its cost grows with the rows of a
/// verified tree.</para>
/// <para>Exactness: every output element is one f32 accumulator that adds w[k]·x[k] by fused multiply-add for k = 0, 1,
/// …, K − 1, whatever the number of rows, the block, the split between threads or the micro-kernel that computes it, so
/// a token's logits have the same bits alone and as a node of a verified tree (lossless greedy speculation).</para>
/// </remarks>
internal sealed unsafe partial class PackedMatrix : ICpuWork, IDisposable
{
    /// <summary>Output columns per block (two 16-float vectors).</summary>
    public const int Block = 32;

    private readonly int _blocks;
    private readonly bool _f16;   // the blocks hold f16 values (else bf16)
    private readonly int _bias;   // f16: the blocks' exponent bias (15, a half's own, or one that leaves no subnormal)
    private ushort* _w;       // 16-bit blocks [N/32][K][32] (null for Q8_0: PackedMatrix.Quantized.cs)
    private float* _x, _y;   // the current call's operands (one call at a time per matrix)
    private int _rows, _parts, _ldy;

    private PackedMatrix(int inputs, int outputs, bool f16, int bias = 15)
    {
        (Inputs, Outputs, _f16, _bias) = (inputs, outputs, f16, bias);
        _blocks = (outputs + Block - 1) / Block;
        nuint bytes = (nuint)((long)_blocks * Block * inputs * sizeof(ushort));
        _w = (ushort*)NativeMemory.AlignedAlloc(bytes, 64);
        NativeMemory.Clear(_w, bytes);
    }

    /// <summary>Gets whether this CPU runs the kernels (AVX-512).</summary>
    public static bool Supported => Avx512F.IsSupported;

    /// <summary>Gets whether models pack their bf16-valued (and f16-stored) weights (<see cref="Supported"/>, and <c>CORAL_PACKED_WEIGHTS</c>
    /// is not 0; set it to 0 for A/B measurements against libtorch's GEMMs).</summary>
    public static bool Enabled { get; } = Supported && Environment.GetEnvironmentVariable("CORAL_PACKED_WEIGHTS") is not ("0" or "false");

    /// <summary>Gets K, the length of an input row.</summary>
    public int Inputs { get; }

    /// <summary>Gets N, the length of an output row.</summary>
    public int Outputs { get; }

    /// <summary>Gets the format of the packed values: <see cref="ScalarType.BFloat16"/>, <see cref="ScalarType.Float16"/>, or
    /// <see cref="ScalarType.Int8"/> for quantized blocks (<see cref="TryQuantize"/>, <see cref="Quantization"/>).</summary>
    public ScalarType Format => _levels != null ? ScalarType.Int8 : _f16 ? ScalarType.Float16 : ScalarType.BFloat16;

    /// <summary>Gets the exponent bias of an f16 matrix's blocks: 15 (a half's own) or the one chosen at packing so that no
    /// value is subnormal (<see cref="F16Bias"/>).</summary>
    internal int ExponentBias => _bias;

    /// <summary>Gets the bytes the packed weight holds.</summary>
    public long Bytes => _levels != null
        ? ((long)_blocks * LevelBytes(_quantization) * Inputs) + ((long)_blocks * BlockScales * sizeof(float))
        : (long)_blocks * Block * Inputs * sizeof(ushort);

    /// <summary>
    /// Packs <paramref name="inOut"/> [K, N] (f32 or bf16, CPU), or returns null when it holds a value that bf16 cannot
    /// represent exactly, or when this CPU lacks AVX-512: <see cref="TryCreateFromRows(Tensor[])"/> of its transpose
    /// (the models pack their [out, in] rows directly; this form serves weights laid out [in, out]).
    /// </summary>
    public static PackedMatrix? TryCreate(Tensor inOut)
    {
        if (!Supported || inOut.dim() != 2 || inOut.device_type != DeviceType.CPU)
        {
            return null;
        }

        using var noGrad = torch.no_grad();
        using Tensor t = inOut.t();
        using Tensor rows = t.contiguous();
        return TryCreateFromRows(rows);
    }

    /// <summary>
    /// Packs weights given as output rows — <paramref name="parts"/> [n_i, K] (f32 or bf16, CPU, contiguous), stacked along
    /// the output dimension as <c>torch.cat(parts)</c> would, i.e. the checkpoint's own [out, in] layout — into the same
    /// matrix <see cref="TryCreate"/> makes from the transposed [K, N] copy, without making it: bf16 rows (a bf16
    /// checkpoint's mapped tensors) are copied as they are, f32 rows must hold bf16 values; f16 rows (every part f16) are
    /// copied as they are into an f16 matrix, which the kernels widen exactly as they read it. Returns null where
    /// <see cref="TryCreate"/> would (a value bf16 cannot represent, no AVX-512), for f16 parts mixed with others or
    /// holding an infinity or NaN, or for a part that is not a contiguous [n, K] f32/bf16/f16 CPU tensor.
    /// </summary>
    public static PackedMatrix? TryCreateFromRows(params Tensor[] parts) => TryCreateFromRows(parts, round: false);

    /// <summary>As <see cref="TryCreateFromRows(Tensor[])"/>; with <paramref name="round"/> f32 values that bf16 cannot
    /// hold are rounded to the nearest bf16 (ties to even) instead of refused — for weights whose precision decides
    /// nothing that is emitted (a drafter's: verification decides).</summary>
    public static PackedMatrix? TryCreateFromRows(Tensor[] parts, bool round) => TryCreateFromRows(parts, round, rebias: true);

    /// <summary>As <see cref="TryCreateFromRows(Tensor[], bool)"/>; <paramref name="rebias"/> false keeps f16 values with
    /// their own exponent bias, subnormals included (for measurements, <see cref="F16Bias"/>).</summary>
    internal static PackedMatrix? TryCreateFromRows(Tensor[] parts, bool round, bool rebias)
    {
        if (!Supported || parts.Length == 0)
        {
            return null;
        }

        long k = parts[0].dim() == 2 ? parts[0].shape[1] : -1;
        bool f16 = parts[0].dtype == ScalarType.Float16;
        foreach (Tensor t in parts)
        {
            if (t.dim() != 2 || t.shape[1] != k || t.device_type != DeviceType.CPU || !t.is_contiguous()
                || t.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)
                || (t.dtype == ScalarType.Float16) != f16
                || (t.dtype != ScalarType.Float32 && t.numel() * 2 > int.MaxValue)   // CpuKernels.Pointer16's limit
                || (t.dtype == ScalarType.Float32 && !round && !AllBf16((uint*)CpuKernels.Pointer(t), t.numel())))
            {
                return null;
            }
        }

        int bias = 15;
        if (f16)
        {
            var (min, max) = (int.MaxValue, int.MinValue);
            foreach (Tensor t in parts)
            {
                if (F16Exponents(CpuKernels.Pointer16(t), t.numel()) is not var (lo, hi))
                {
                    return null;   // an infinity or NaN
                }

                (min, max) = (Math.Min(min, lo), Math.Max(max, hi));
            }

            bias = rebias ? F16Bias(min, max) : 15;
        }

        // Each output column's source row: the high half of an f32's bits, or the bf16 (f16) itself.
        int n = (int)parts.Sum(t => t.shape[0]);
        var rows = new nint[n];
        var f32 = new bool[n];
        int o = 0;
        foreach (Tensor t in parts)
        {
            byte* start = t.dtype == ScalarType.Float32 ? (byte*)CpuKernels.Pointer(t) : (byte*)CpuKernels.Pointer16(t);
            long stride = k * t.element_size();
            for (long r = 0; r < t.shape[0]; r++, o++)
            {
                (rows[o], f32[o]) = ((nint)(start + (r * stride)), t.dtype == ScalarType.Float32);
            }
        }

        var m = new PackedMatrix((int)k, n, f16, bias);
        ushort* dst = m._w;
        Parallel.For(0, m._blocks, b =>
        {
            int columns = Math.Min(Block, n - (b * Block));
            ushort* block = dst + ((long)b * k * Block);
            for (int j = 0; j < columns; j++)
            {
                int column = (b * Block) + j, slot = Slot(j);
                if (f32[column])
                {
                    uint* src = (uint*)rows[column];
                    for (long c = 0; c < k; c++)
                    {
                        uint bits = src[c];
                        block[(c * Block) + slot] = (ushort)((round ? bits + 0x7FFF + ((bits >> 16) & 1) : bits) >> 16);
                    }
                }
                else if (bias != 15)
                {
                    ushort* src = (ushort*)rows[column];
                    for (long c = 0; c < k; c++)
                    {
                        block[(c * Block) + slot] = Rebias(src[c], bias);
                    }
                }
                else
                {
                    ushort* src = (ushort*)rows[column];
                    for (long c = 0; c < k; c++)
                    {
                        block[(c * Block) + slot] = src[c];
                    }
                }
            }
        });

        return m;
    }

    /// <summary>
    /// The exponent bias for an f16 matrix whose nonzero values' exponents (value = 1.f · 2^E) span
    /// [<paramref name="min"/>, <paramref name="max"/>]: one that stores every such value as a normal number (stored
    /// exponent 1–31, no infinities to reserve) with a finite scale 2^(127 − bias), so the kernels never multiply a
    /// subnormal f32 (which costs a microcode assist of ≈ 150 cycles on Intel cores: with the 0.2% of subnormal halves of
    /// a trained weight, one-row products ran 1.3–1.5× slower than bf16 ones instead of 1.05–1.16×); a half's own 15
    /// where that already holds, or where no bias can (values spanning more than 31 binades, which keep their subnormals).
    /// </summary>
    internal static int F16Bias(int min, int max)
    {
        if (min > max || (min >= -14 && max <= 16))
        {
            return 15;   // all zero, or no subnormal to remove
        }

        int lo = Math.Max(0, 1 - min), hi = 31 - max;
        return lo <= hi ? lo : 15;
    }

    /// <summary>The least and greatest exponent E (value = 1.f · 2^E; subnormal halves normalized) among the nonzero f16
    /// values (as bits), (int.MaxValue, int.MinValue) when all are zero, or null when one is an infinity or a NaN.</summary>
    internal static (int Min, int Max)? F16Exponents(ushort* values, long count)
    {
        const long Chunk = 1 << 20;
        int min = int.MaxValue, max = int.MinValue, bad = 0;
        object gate = new();
        Parallel.For(0, (count + Chunk - 1) / Chunk, (i, state) =>
        {
            long end = Math.Min(count, (i + 1) * Chunk);
            int lo = int.MaxValue, hi = int.MinValue;
            for (long j = i * Chunk; j < end; j++)
            {
                int e = (values[j] >> 10) & 0x1F, f = values[j] & 0x3FF;
                if (e == 0x1F)
                {
                    Interlocked.Exchange(ref bad, 1);
                    state.Stop();
                    return;
                }

                if (e != 0 || f != 0)
                {
                    int exponent = e != 0 ? e - 15 : BitOperations.Log2((uint)f) - 24;
                    (lo, hi) = (Math.Min(lo, exponent), Math.Max(hi, exponent));
                }
            }

            lock (gate)
            {
                (min, max) = (Math.Min(min, lo), Math.Max(max, hi));
            }
        });
        return bad == 0 ? (min, max) : null;
    }

    /// <summary>An f16 value (bits, finite) stored with exponent bias <paramref name="bias"/> instead of 15, subnormals
    /// normalized (exact: a half's fraction has at most 10 bits either way); zero stays zero.</summary>
    internal static ushort Rebias(ushort h, int bias)
    {
        int sign = h & 0x8000, e = (h >> 10) & 0x1F, f = h & 0x3FF;
        if (e == 0)
        {
            if (f == 0)
            {
                return (ushort)sign;
            }

            int p = BitOperations.Log2((uint)f);   // f = 2^p · 1.m, value 2^(p − 24) · 1.m
            (e, f) = (p - 24 + 15, (f << (10 - p)) & 0x3FF);
        }

        return (ushort)(sign | ((e - 15 + bias) << 10) | f);
    }

    /// <summary>Whether each of <paramref name="count"/> f32 values (as bits) is a bf16: its low 16 bits are zero.</summary>
    internal static bool AllBf16(uint* values, long count)
    {
        const long Chunk = 1 << 20;
        int bad = 0;
        Parallel.For(0, (count + Chunk - 1) / Chunk, (i, state) =>
        {
            long end = Math.Min(count, (i + 1) * Chunk);
            for (long j = i * Chunk; j < end; j++)
            {
                if ((values[j] & 0xFFFF) != 0)
                {
                    Interlocked.Exchange(ref bad, 1);
                    state.Stop();
                    return;
                }
            }
        });
        return bad == 0;
    }

    /// <summary>y[rows, N] = x[rows, K] · W, on this thread and <see cref="CpuParallel"/>'s helpers; output rows are
    /// <paramref name="outputStride"/> floats apart (0: N).</summary>
    public void Multiply(float* x, int rows, float* y, int outputStride = 0)
    {
        ObjectDisposedException.ThrowIf(_w == null && _levels == null, this);
        _x = x;
        _y = y;
        _rows = rows;
        _ldy = outputStride == 0 ? Outputs : outputStride;
        if (_int8)
        {
            QuantizeActivations();
        }
        else if (_quantization is WeightQuantization.Q4_0 or WeightQuantization.Q4_K)
        {
            SumGroups();
        }

        // Parts are claimed first come, first served; more parts than threads even out a late start of the helper.
        int threads = CpuParallel.Threads;
        _parts = Math.Min(_blocks, (long)_blocks * Inputs * rows >= 1 << 20 ? 4 * threads : threads);
        CpuParallel.Run(this, _parts);
    }

    void ICpuWork.Run(int part)
    {
        int b0 = part * _blocks / _parts, b1 = (part + 1) * _blocks / _parts;
        if (_int8)
        {
            RangeInt8(b0, b1);
        }
        else if (_quantization == WeightQuantization.Q4_K)
        {
            Range<Q4MinLevels>(b0, b1);
        }
        else if (_quantization == WeightQuantization.Q4_0)
        {
            Range<Q4Levels>(b0, b1);
        }
        else if (_levels != null)
        {
            Range<Q8Levels>(b0, b1);
        }
        else if (_f16)
        {
            Range<HalfBlocks<HalfFormat.Float16>>(b0, b1);
        }
        else
        {
            Range<HalfBlocks<HalfFormat.BFloat16>>(b0, b1);
        }
    }

    /// <summary>Blocks <paramref name="b0"/> to <paramref name="b1"/> of the current call, two blocks (64 outputs) at a
    /// time by the micro-kernel for <typeparamref name="TFormat"/>: four vector sums per row, up to sixteen for four rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private void Range<TFormat>(int b0, int b1)
        where TFormat : struct, IBlockFormat
    {
        // The f16 blocks' scale (2^(127 − bias); bf16 and the quantized formats ignore it) and where blocks start.
        Vector512<float> scale = HalfFormat.Float16.ScaleFor(_bias);
        byte* data = TFormat.Grouped ? (byte*)_levels : (byte*)_w;
        long blockBytes = (long)Inputs * TFormat.RowBytes, blockScales = TFormat.HasMin ? Q4KScales(Inputs) : (long)Inputs / QuantBlocks.Size * Block;
        int k = Inputs, n = Outputs, rows = _rows, ld = _ldy;
        float* tail = stackalloc float[4 * 2 * Block];   // outputs of a pair that ends past the range or the matrix
        for (int b = b0; b < b1; b += 2)
        {
            bool full = b + 2 <= b1 && (b + 2) * Block <= n;
            int next = b + 1 < b1 ? b + 1 : b;
            int ldy = full ? ld : 2 * Block;
            for (int r = 0; r < rows;)
            {
                float* x = _x + (long)r * k;
                float* y = full ? _y + (long)r * ld + b * Block : tail;
                int m = Math.Min(rows - r, 4);
                if (m == 4)
                {
                    Tile<RowCount.Four, TFormat>(data + (b * blockBytes), data + (next * blockBytes), Scales(b, blockScales), Scales(next, blockScales), x, k, y, ldy, scale, Sums(r));
                }
                else if (m == 3)
                {
                    Tile<RowCount.Three, TFormat>(data + (b * blockBytes), data + (next * blockBytes), Scales(b, blockScales), Scales(next, blockScales), x, k, y, ldy, scale, Sums(r));
                }
                else if (m == 2)
                {
                    Tile<RowCount.Two, TFormat>(data + (b * blockBytes), data + (next * blockBytes), Scales(b, blockScales), Scales(next, blockScales), x, k, y, ldy, scale, Sums(r));
                }
                else
                {
                    Tile<RowCount.One, TFormat>(data + (b * blockBytes), data + (next * blockBytes), Scales(b, blockScales), Scales(next, blockScales), x, k, y, ldy, scale, Sums(r));
                }

                if (!full)
                {
                    int start = b * Block, count = Math.Min(Math.Min(b1, b + 2) * Block, n) - start;
                    for (int i = 0; i < m; i++)
                    {
                        new ReadOnlySpan<float>(tail + i * 2 * Block, count).CopyTo(new Span<float>(_y + (long)(r + i) * ld + start, count));
                    }
                }

                r += m;
            }
        }
    }

    /// <summary>Block <paramref name="block"/>'s scales (quantized formats; null otherwise).</summary>
    private float* Scales(int block, long blockScales) => _scales == null ? null : _scales + (block * blockScales);

    /// <summary>Row <paramref name="row"/>'s −8 · Σ x per group (Q4_0; null otherwise).</summary>
    private float* Sums(int row) => _sums == null ? null : _sums + ((long)row * (Inputs / QuantBlocks.Size));

    /// <summary>Where column <paramref name="j"/> of a block lives in the block's row of 32 bf16 values: the low half of
    /// 32-bit word j for j &lt; 16, the high half of word j − 16 otherwise.</summary>
    private static int Slot(int j) => j < 16 ? 2 * j : (2 * (j - 16)) + 1;

    /// <summary>
    /// The micro-kernel: <typeparamref name="TRows"/> rows (1 to 4) × 64 outputs of two blocks in
    /// <typeparamref name="TFormat"/>. 16-bit formats: each output one accumulator over k in order (4 to 16 independent
    /// sums). Quantized formats: per group of 32 inputs, each output sums level × x[k] for its 32 k in order from zero and
    /// adds that sum (Q4_0: plus −8 · Σ x from <paramref name="sums"/>) times the group's scales to its total, which
    /// waits in <paramref name="y"/> between groups. The JIT compiles one body per row count and format with the other
    /// rows' and formats' code removed; it stays a small method of its own because in one large method the JIT spilled
    /// the accumulators to the stack.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TRows, TFormat>(byte* p0, byte* p1, float* s0, float* s1, float* x0, int k, float* y, int ldy, Vector512<float> scale, float* sums)
        where TRows : struct, IRowCount
        where TFormat : struct, IBlockFormat
    {
        float* x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;   // rows past TRows.Count are never read
        int step = TFormat.RowBytes, group = TFormat.Grouped ? QuantBlocks.Size : k, groups = k / QuantBlocks.Size;
        Vector512<uint> mask = TFormat.Mask;   // loaded once: the JIT re-broadcast such constants in every iteration
        for (int g = 0; g < k; g += group)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
            Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
            for (int c = g; c < g + group; c++)
            {
                if (TFormat.Grouped)
                {
                    // Two groups ahead of each stream: 0.61 → 0.48× bf16's time at one row for Q8_0 (the lines came late).
                    Sse.Prefetch0(p0 + (64 * step));
                    Sse.Prefetch0(p1 + (64 * step));
                }

                var (w0, w1, w2, w3) = TFormat.Widen(p0, p1, mask, scale);
                p0 += step;
                p1 += step;
                var s = Vector512.Create(x0[c]);
                a0 = Vector512.FusedMultiplyAdd(w0, s, a0);
                a1 = Vector512.FusedMultiplyAdd(w1, s, a1);
                a2 = Vector512.FusedMultiplyAdd(w2, s, a2);
                a3 = Vector512.FusedMultiplyAdd(w3, s, a3);
                if (TRows.Count >= 2)
                {
                    s = Vector512.Create(x1[c]);
                    b0 = Vector512.FusedMultiplyAdd(w0, s, b0);
                    b1 = Vector512.FusedMultiplyAdd(w1, s, b1);
                    b2 = Vector512.FusedMultiplyAdd(w2, s, b2);
                    b3 = Vector512.FusedMultiplyAdd(w3, s, b3);
                }

                if (TRows.Count >= 3)
                {
                    s = Vector512.Create(x2[c]);
                    c0 = Vector512.FusedMultiplyAdd(w0, s, c0);
                    c1 = Vector512.FusedMultiplyAdd(w1, s, c1);
                    c2 = Vector512.FusedMultiplyAdd(w2, s, c2);
                    c3 = Vector512.FusedMultiplyAdd(w3, s, c3);
                }

                if (TRows.Count >= 4)
                {
                    s = Vector512.Create(x3[c]);
                    d0 = Vector512.FusedMultiplyAdd(w0, s, d0);
                    d1 = Vector512.FusedMultiplyAdd(w1, s, d1);
                    d2 = Vector512.FusedMultiplyAdd(w2, s, d2);
                    d3 = Vector512.FusedMultiplyAdd(w3, s, d3);
                }
            }

            if (!TFormat.Grouped)
            {
                Store4(y, a0, a1, a2, a3);
                if (TRows.Count >= 2)
                {
                    Store4(y + ldy, b0, b1, b2, b3);
                }

                if (TRows.Count >= 3)
                {
                    Store4(y + 2 * ldy, c0, c1, c2, c3);
                }

                if (TRows.Count >= 4)
                {
                    Store4(y + 3 * ldy, d0, d1, d2, d3);
                }

                continue;
            }

            bool first = g == 0;
            int at = g / QuantBlocks.Size;
            Vector512<float> e0, e1, e2, e3, n0 = default, n1 = default, n2 = default, n3 = default;
            if (TFormat.HasMin)
            {
                // Q4_K: scales and minimums formed from the blocks' sub-scales and super-block scales (s0, s1: the regions).
                (e0, n0) = Q4KGroup(s0, at, groups, 0);
                (e1, n1) = Q4KGroup(s0, at, groups, 16);
                (e2, n2) = Q4KGroup(s1, at, groups, 0);
                (e3, n3) = Q4KGroup(s1, at, groups, 16);
            }
            else
            {
                (e0, e1, e2, e3) = (Vector512.Load(s0), Vector512.Load(s0 + 16), Vector512.Load(s1), Vector512.Load(s1 + 16));
                s0 += Block;
                s1 += Block;
            }

            Scale4<TFormat>(y, a0, a1, a2, a3, e0, e1, e2, e3, first, sums, at, n0, n1, n2, n3);
            if (TRows.Count >= 2)
            {
                Scale4<TFormat>(y + ldy, b0, b1, b2, b3, e0, e1, e2, e3, first, sums + groups, at, n0, n1, n2, n3);
            }

            if (TRows.Count >= 3)
            {
                Scale4<TFormat>(y + 2 * ldy, c0, c1, c2, c3, e0, e1, e2, e3, first, sums + 2 * groups, at, n0, n1, n2, n3);
            }

            if (TRows.Count >= 4)
            {
                Scale4<TFormat>(y + 3 * ldy, d0, d1, d2, d3, e0, e1, e2, e3, first, sums + 3 * groups, at, n0, n1, n2, n3);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store4(float* y, Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3)
    {
        a0.Store(y);
        a1.Store(y + 16);
        a2.Store(y + 32);
        a3.Store(y + 48);
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_w);
        NativeMemory.AlignedFree(_levels);
        NativeMemory.AlignedFree(_scales);
        NativeMemory.AlignedFree(_sums);
        NativeMemory.AlignedFree(_xq);
        NativeMemory.AlignedFree(_xd);
        NativeMemory.AlignedFree(_xsum);
        _xq = null;
        _xd = null;
        _xsum = null;
        _xRows = 0;
        _sums = null;
        _w = null;
        _levels = null;
        _scales = null;
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// A weight for the CPU kernels' GEMMs, y[R, N] = x[R, K] · W[K, N]: stored as bf16 in blocks of 32 output columns
/// (<c>[N/32][K][32]</c>, contiguous per block), multiplied in f32. Only weights whose every value is a bf16 are packed,
/// so the product uses exactly the checkpoint's values (a bf16 checkpoint loaded as f32, as the demo pair is).
/// Within a block's row of 32, the 32-bit word j holds column j in its low half and column 16 + j in its high half, so
/// that one 64-byte load becomes the block's two f32 vectors with one shift and one mask (the high half of an f32 is its
/// bf16); a plain column order needed a widening move and a shift per 16 values, and the widening competed with the
/// multiply-adds for the vector ports (a 4-row head 20-40% slower).
/// </summary>
/// <remarks>
/// <para>Why: a decode step on CPU streams every weight once, and two cores get ≈ 25 GB/s from this VM's memory
/// (<c>Coral.Bench --profile</c>); bf16 halves those bytes against f32, and the packed blocks are read front to back.
/// MKL's f32 GEMM, the alternative, takes a GEMV for one row and another kernel from two rows up, so a speculative
/// engine had to pad one-token steps to two rows to stay exact; and its cost grows with the rows of a verified tree.</para>
/// <para>Exactness: every output element is one f32 accumulator that adds w[k]·x[k] by fused multiply-add for k = 0, 1,
/// …, K − 1, whatever the number of rows, the block, the split between threads or the micro-kernel that computes it, so
/// a token's logits have the same bits alone and as a node of a verified tree (lossless greedy speculation).</para>
/// </remarks>
internal sealed unsafe class PackedMatrix : ICpuWork, IDisposable
{
    /// <summary>Output columns per block (two 16-float vectors).</summary>
    public const int Block = 32;

    private readonly int _blocks;
    private ushort* _w;
    private float* _x, _y;   // the current call's operands (one call at a time per matrix)
    private int _rows, _parts, _ldy;

    private PackedMatrix(int inputs, int outputs)
    {
        (Inputs, Outputs) = (inputs, outputs);
        _blocks = (outputs + Block - 1) / Block;
        nuint bytes = (nuint)((long)_blocks * Block * inputs * sizeof(ushort));
        _w = (ushort*)NativeMemory.AlignedAlloc(bytes, 64);
        NativeMemory.Clear(_w, bytes);
    }

    /// <summary>Gets whether this CPU runs the kernels (AVX-512).</summary>
    public static bool Supported => Avx512F.IsSupported;

    /// <summary>Gets whether models pack their bf16-valued weights (<see cref="Supported"/>, and <c>CORAL_PACKED_WEIGHTS</c>
    /// is not 0; set it to 0 for A/B measurements against libtorch's GEMMs).</summary>
    public static bool Enabled { get; } = Supported && Environment.GetEnvironmentVariable("CORAL_PACKED_WEIGHTS") is not ("0" or "false");

    /// <summary>Gets K, the length of an input row.</summary>
    public int Inputs { get; }

    /// <summary>Gets N, the length of an output row.</summary>
    public int Outputs { get; }

    /// <summary>Gets the bytes the packed weight holds.</summary>
    public long Bytes => (long)_blocks * Block * Inputs * sizeof(ushort);

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
    /// checkpoint's mapped tensors) are copied as they are, f32 rows must hold bf16 values. Returns null where
    /// <see cref="TryCreate"/> would (a value bf16 cannot represent, no AVX-512) or for a part that is not a contiguous
    /// [n, K] f32/bf16 CPU tensor.
    /// </summary>
    public static PackedMatrix? TryCreateFromRows(params Tensor[] parts) => TryCreateFromRows(parts, round: false);

    /// <summary>As <see cref="TryCreateFromRows(Tensor[])"/>; with <paramref name="round"/> f32 values that bf16 cannot
    /// hold are rounded to the nearest bf16 (ties to even) instead of refused — for weights whose precision decides
    /// nothing that is emitted (a drafter's: verification decides).</summary>
    public static PackedMatrix? TryCreateFromRows(Tensor[] parts, bool round)
    {
        if (!Supported || parts.Length == 0)
        {
            return null;
        }

        long k = parts[0].dim() == 2 ? parts[0].shape[1] : -1;
        foreach (Tensor t in parts)
        {
            if (t.dim() != 2 || t.shape[1] != k || t.device_type != DeviceType.CPU || !t.is_contiguous()
                || t.dtype is not (ScalarType.Float32 or ScalarType.BFloat16)
                || (t.dtype == ScalarType.BFloat16 && t.numel() * 2 > int.MaxValue)   // CpuKernels.Bf16Pointer's limit
                || (t.dtype == ScalarType.Float32 && !round && !AllBf16((uint*)CpuKernels.Pointer(t), t.numel())))
            {
                return null;
            }
        }

        // Each output column's source row: the high half of an f32's bits, or the bf16 itself.
        int n = (int)parts.Sum(t => t.shape[0]);
        var rows = new nint[n];
        var f32 = new bool[n];
        int o = 0;
        foreach (Tensor t in parts)
        {
            byte* start = t.dtype == ScalarType.Float32 ? (byte*)CpuKernels.Pointer(t) : (byte*)CpuKernels.Bf16Pointer(t);
            long stride = k * t.element_size();
            for (long r = 0; r < t.shape[0]; r++, o++)
            {
                (rows[o], f32[o]) = ((nint)(start + (r * stride)), t.dtype == ScalarType.Float32);
            }
        }

        var m = new PackedMatrix((int)k, n);
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
        ObjectDisposedException.ThrowIf(_w == null, this);
        _x = x;
        _y = y;
        _rows = rows;
        _ldy = outputStride == 0 ? Outputs : outputStride;
        // Parts are claimed first come, first served; more parts than threads even out a late start of the helper.
        int threads = CpuParallel.Threads;
        _parts = Math.Min(_blocks, (long)_blocks * Inputs * rows >= 1 << 20 ? 4 * threads : threads);
        CpuParallel.Run(this, _parts);
    }

    void ICpuWork.Run(int part) => Range(part * _blocks / _parts, (part + 1) * _blocks / _parts);

    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private void Range(int b0, int b1)
    {
        int k = Inputs, n = Outputs, rows = _rows, ld = _ldy;
        float* tail = stackalloc float[4 * 2 * Block];   // outputs of a pair that ends past the range or the matrix
        for (int b = b0; b < b1; b += 2)
        {
            // Two blocks (64 outputs) at a time: four vector sums per row, up to sixteen for four rows.
            bool full = b + 2 <= b1 && (b + 2) * Block <= n;
            ushort* p0 = Packed(b), p1 = b + 1 < b1 ? Packed(b + 1) : p0;
            int ldy = full ? ld : 2 * Block;
            for (int r = 0; r < rows;)
            {
                float* x = _x + (long)r * k;
                float* y = full ? _y + (long)r * ld + b * Block : tail;
                int m = Math.Min(rows - r, 4);
                if (m == 4)
                {
                    Tile<RowCount.Four>(p0, p1, x, k, y, ldy);
                }
                else if (m == 3)
                {
                    Tile<RowCount.Three>(p0, p1, x, k, y, ldy);
                }
                else if (m == 2)
                {
                    Tile<RowCount.Two>(p0, p1, x, k, y, ldy);
                }
                else
                {
                    Tile<RowCount.One>(p0, p1, x, k, y, ldy);
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

    private ushort* Packed(int block) => _w + (long)block * Inputs * Block;

    /// <summary>Where column <paramref name="j"/> of a block lives in the block's row of 32 bf16 values: the low half of
    /// 32-bit word j for j &lt; 16, the high half of word j − 16 otherwise.</summary>
    private static int Slot(int j) => j < 16 ? 2 * j : (2 * (j - 16)) + 1;

    /// <summary>A block's row (32 bf16 values) as f32 columns 0–15 and 16–31 (exact: a bf16's bits are the high half of
    /// its f32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<float> Low, Vector512<float> High) Bf16(ushort* p)
    {
        Vector512<uint> words = Vector512.Load((uint*)p);
        return (Avx512F.ShiftLeftLogical(words, 16).AsSingle(), (words & Vector512.Create(0xFFFF0000u)).AsSingle());
    }

    /// <summary>
    /// The micro-kernel: <typeparamref name="TRows"/> rows (1 to 4) × 64 outputs of two blocks, each output one
    /// accumulator over k in order (4 to 16 independent sums). The JIT compiles one body per row count with the other
    /// rows' code removed; it stays a small method of its own because in one large method the JIT spilled the
    /// accumulators to the stack.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TRows>(ushort* p0, ushort* p1, float* x0, int k, float* y, int ldy)
        where TRows : struct, IRowCount
    {
        float* x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;   // rows past TRows.Count are never read
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        for (int c = 0; c < k; c++)
        {
            var (w0, w1) = Bf16(p0);
            var (w2, w3) = Bf16(p1);
            p0 += Block;
            p1 += Block;
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
        _w = null;
    }
}

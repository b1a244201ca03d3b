using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// Q8_0 blocks (<see cref="Q8Blocks"/>): a weight quantized at load to int8 levels with an f16 scale per 32 inputs of an
/// output, read by the kernels at a little over half the bytes of bf16 (8 + 1 bits a weight: the scales are kept as f32).
/// </summary>
/// <remarks>
/// <para>Layout: per block of 32 outputs, levels <c>[K][32]</c> (column j at byte j) and scales <c>[K/32][32]</c>.</para>
/// <para>Exactness: per group of 32 inputs an output sums level × x[k] for k in order from zero, then adds that sum times
/// the group's scale to its total, groups in order — fused multiply-adds in a fixed order that depends on nothing but
/// K, so a row has the same bits at any row count, block or split between threads (lossless greedy speculation), and
/// the product is that of the Q8_0 values up to f32 rounding (<see cref="Q8Blocks"/>).</para>
/// </remarks>
internal sealed unsafe partial class PackedMatrix
{
    private sbyte* _levels;   // Q8_0: [N/32][K][32]
    private float* _scales;   // Q8_0: [N/32][K/32][32]

    private PackedMatrix(int inputs, int outputs, sbyte* levels, float* scales)
    {
        (Inputs, Outputs) = (inputs, outputs);
        _levels = levels;
        _scales = scales;
        _blocks = (outputs + Block - 1) / Block;
    }

    /// <summary>
    /// Quantizes weights given as output rows — <paramref name="parts"/> [n_i, K] (f32, bf16 or f16, CPU, contiguous),
    /// stacked along the output dimension as <c>torch.cat(parts)</c> would — into Q8_0 blocks, or returns null where this
    /// CPU lacks AVX-512, K is not a multiple of 32, a part is not such a tensor, or a value is not finite.
    /// </summary>
    public static PackedMatrix? TryQuantize(params Tensor[] parts)
    {
        if (!Supported || parts.Length == 0 || parts[0].dim() != 2 || !Q8Blocks.Fits(parts[0].shape[1]))
        {
            return null;
        }

        int k = (int)parts[0].shape[1];
        if (parts.Any(t => t.dim() != 2 || t.shape[1] != k || t.device_type != DeviceType.CPU || !t.is_contiguous()
            || t.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)))
        {
            return null;
        }

        // Each output's source row and its dtype.
        int n = (int)parts.Sum(t => t.shape[0]);
        var rows = new (nint Start, ScalarType Type)[n];
        int o = 0;
        foreach (Tensor t in parts)
        {
            byte* start = t.dtype == ScalarType.Float32 ? (byte*)CpuKernels.Pointer(t) : (byte*)CpuKernels.Pointer16(t);
            for (long r = 0; r < t.shape[0]; r++, o++)
            {
                rows[o] = ((nint)(start + (r * k * t.element_size())), t.dtype);
            }
        }

        int blocks = (n + Block - 1) / Block, groups = k / Q8Blocks.Size;
        nuint levelBytes = (nuint)((long)blocks * Block * k), scaleBytes = (nuint)((long)blocks * groups * Block * sizeof(float));
        var m = new PackedMatrix(k, n, (sbyte*)NativeMemory.AlignedAlloc(levelBytes, 64), (float*)NativeMemory.AlignedAlloc(scaleBytes, 64));
        NativeMemory.Clear(m._levels, levelBytes);   // padding columns of the last block: level 0, scale 0
        NativeMemory.Clear(m._scales, scaleBytes);
        int bad = 0;
        Parallel.For(0, n, () => new float[k + groups], (column, state, buffer) =>
        {
            fixed (float* row = buffer)
            {
                float* scales = row + k;
                Widen(rows[column].Start, rows[column].Type, k, row);
                sbyte* q = stackalloc sbyte[k];
                if (!Q8Blocks.Quantize(row, k, q, scales))
                {
                    Interlocked.Exchange(ref bad, 1);
                    state.Stop();
                    return buffer;
                }

                int b = column / Block, j = column % Block;
                sbyte* levels = m._levels + ((long)b * k * Block) + j;
                float* blockScales = m._scales + ((long)b * groups * Block) + j;
                for (long c = 0; c < k; c++)
                {
                    levels[c * Block] = q[c];
                }

                for (int g = 0; g < groups; g++)
                {
                    blockScales[g * Block] = scales[g];
                }
            }

            return buffer;
        }, _ => { });
        if (bad != 0)
        {
            m.Dispose();
            return null;
        }

        return m;
    }

    /// <summary>Packs <paramref name="parts"/> as <see cref="TryCreateFromRows(Tensor[], bool)"/> does, or with
    /// <paramref name="quantization"/> Q8_0 as <see cref="TryQuantize"/> does where the rows are whole blocks of 32 (a
    /// weight whose rows are not keeps its values).</summary>
    public static PackedMatrix? TryPack(Tensor[] parts, bool round, WeightQuantization quantization) =>
        quantization == WeightQuantization.Q8_0 && parts.Length > 0 && parts[0].dim() == 2 && Q8Blocks.Fits(parts[0].shape[1])
            ? TryQuantize(parts)
            : TryCreateFromRows(parts, round);

    /// <summary>A stored row of <paramref name="count"/> values (f32, bf16 or f16) as f32.</summary>
    private static void Widen(nint start, ScalarType type, int count, float* row)
    {
        switch (type)
        {
            case ScalarType.Float32:
                new ReadOnlySpan<float>((float*)start, count).CopyTo(new Span<float>(row, count));
                break;
            case ScalarType.BFloat16:
                for (int c = 0; c < count; c++)
                {
                    row[c] = BitConverter.Int32BitsToSingle(((ushort*)start)[c] << 16);
                }

                break;
            default:
                for (int c = 0; c < count; c++)
                {
                    row[c] = (float)((Half*)start)[c];
                }

                break;
        }
    }

    /// <summary>Blocks of Q8_0 levels and scales.</summary>
    private readonly struct Q8Pair : IBlockPair
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Tile<TRows>(PackedMatrix m, int block, int next, float* x, float* y, int ldy)
            where TRows : struct, IRowCount
        {
            int k = m.Inputs;
            long levels = (long)k * Block, scales = (long)k / Q8Blocks.Size * Block;
            TileQ8<TRows>(m._levels + (block * levels), m._levels + (next * levels), m._scales + (block * scales), m._scales + (next * scales), x, k, y, ldy);
        }
    }

    /// <summary>The Q8_0 micro-kernel: <typeparamref name="TRows"/> rows (1 to 4) × 64 outputs of two blocks. Per group
    /// of 32 inputs, each output sums level × x[k] for its 32 k in order from zero (fused multiply-adds) and adds that
    /// sum times the group's scale to its total (one more), which waits in <paramref name="y"/> between groups: the 16
    /// sums, 4 scales and 4 widened levels fill the vector registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileQ8<TRows>(sbyte* q0, sbyte* q1, float* s0, float* s1, float* x0, int k, float* y, int ldy)
        where TRows : struct, IRowCount
    {
        float* x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;   // rows past TRows.Count are never read
        for (int g = 0; g < k; g += Q8Blocks.Size)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
            Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
            for (int c = g; c < g + Q8Blocks.Size; c++)
            {
                Vector512<float> w0 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(q0)));
                Vector512<float> w1 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(q0 + 16)));
                Vector512<float> w2 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(q1)));
                Vector512<float> w3 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(q1 + 16)));
                q0 += Block;
                q1 += Block;
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

            Vector512<float> e0 = Vector512.Load(s0), e1 = Vector512.Load(s0 + 16), e2 = Vector512.Load(s1), e3 = Vector512.Load(s1 + 16);
            s0 += Block;
            s1 += Block;
            bool first = g == 0;
            Scale4(y, a0, a1, a2, a3, e0, e1, e2, e3, first);
            if (TRows.Count >= 2)
            {
                Scale4(y + ldy, b0, b1, b2, b3, e0, e1, e2, e3, first);
            }

            if (TRows.Count >= 3)
            {
                Scale4(y + 2 * ldy, c0, c1, c2, c3, e0, e1, e2, e3, first);
            }

            if (TRows.Count >= 4)
            {
                Scale4(y + 3 * ldy, d0, d1, d2, d3, e0, e1, e2, e3, first);
            }
        }
    }

    /// <summary>A row's 64 totals at <paramref name="y"/> plus its group sums times the group's scales (fused; the first
    /// group's from zero).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scale4(float* y, Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> e0, Vector512<float> e1, Vector512<float> e2, Vector512<float> e3, bool first)
    {
        Vector512<float> zero = Vector512<float>.Zero;
        Vector512.FusedMultiplyAdd(a0, e0, first ? zero : Vector512.Load(y)).Store(y);
        Vector512.FusedMultiplyAdd(a1, e1, first ? zero : Vector512.Load(y + 16)).Store(y + 16);
        Vector512.FusedMultiplyAdd(a2, e2, first ? zero : Vector512.Load(y + 32)).Store(y + 32);
        Vector512.FusedMultiplyAdd(a3, e3, first ? zero : Vector512.Load(y + 48)).Store(y + 48);
    }
}

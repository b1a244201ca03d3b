using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// Q8_0 and Q4_0 blocks (<see cref="QuantBlocks"/>): a weight quantized at load to int8 (int4) levels with an f16 scale per
/// 32 inputs of an output, read by the kernels at 9/16 (5/16) of bf16's bytes (the scales are kept as f32: 1 bit a weight);
/// and a GGUF file's Q4_K rows as they are (<see cref="WeightQuantization.Q4_K"/>: unsigned 4-bit levels, value =
/// d · sub-scale · level − dmin · sub-min; <see cref="TryFromBlocks"/>).
/// </summary>
/// <remarks>
/// <para>Layout: per block of 32 outputs, levels <c>[K][32]</c> (Q8_0: column j at byte j; Q4_0: <c>[K][16]</c>, byte
/// j holding column j's level + 8 in its low half and column 16 + j's in its high half; Q4_K the same with the level
/// itself) and scales <c>[K/32][32]</c> (Q4_K: sub-scales, sub-minimums and super-block scales, <see cref="TryFromBlocks"/>).</para>
/// <para>Exactness: per group of 32 inputs an output sums level × x[k] for k in order from zero (Q4_0: its stored
/// level + 8, then adds −8 · Σ x), then adds that sum times the group's scale to its total, groups in order — f32
/// operations in a fixed order that depends on nothing but K, so a row has the same bits at any row count, block or
/// split between threads (lossless greedy speculation), and the product is that of the quantized values up to f32
/// rounding (<see cref="QuantBlocks"/>).</para>
/// </remarks>
internal sealed unsafe partial class PackedMatrix
{
    private sbyte* _levels;   // Q8_0: [N/32][K][32]; Q4_0: [N/32][K][16] (two levels a byte)
    private float* _scales;   // [N/32][K/32][32]
    private readonly WeightQuantization _quantization;
    private float* _sums;     // Q4_0: the current call's −8 · Σ x over each group of 32 inputs, [rows][K/32]
    private int _sumRows;     // rows _sums has room for

    /// <summary>Gets the block format of a quantized matrix (<see cref="WeightQuantization.None"/> for 16-bit ones).</summary>
    public WeightQuantization Quantization => _quantization;

    private PackedMatrix(int inputs, int outputs, WeightQuantization kind, sbyte* levels, float* scales)
    {
        (Inputs, Outputs, _quantization) = (inputs, outputs, kind);
        _levels = levels;
        _scales = scales;
        _blocks = (outputs + Block - 1) / Block;
    }

    /// <summary>
    /// Quantizes weights given as output rows — <paramref name="parts"/> [n_i, K] (f32, bf16 or f16, CPU, contiguous),
    /// stacked along the output dimension as <c>torch.cat(parts)</c> would — into <paramref name="kind"/> blocks, or
    /// returns null where this CPU lacks AVX-512, K is not a multiple of 32, a part is not such a tensor, or a value is not finite.
    /// </summary>
    public static PackedMatrix? TryQuantize(WeightQuantization kind, params Tensor[] parts)
    {
        if (!Supported || parts.Length == 0 || parts[0].dim() != 2 || !QuantBlocks.Fits(parts[0].shape[1]))
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

        int blocks = (n + Block - 1) / Block, groups = k / QuantBlocks.Size, rowBytes = LevelBytes(kind);
        nuint levelBytes = (nuint)((long)blocks * rowBytes * k), scaleBytes = (nuint)((long)blocks * groups * Block * sizeof(float));
        var m = new PackedMatrix(k, n, kind, (sbyte*)NativeMemory.AlignedAlloc(levelBytes, 64), (float*)NativeMemory.AlignedAlloc(scaleBytes, 64))
        {
            _int8 = Int8Activations,
        };
        NativeMemory.Clear(m._levels, levelBytes);   // padding columns of the last block: scale 0, so value 0
        NativeMemory.Clear(m._scales, scaleBytes);
        int bad = 0;
        // A block's 32 columns on one thread: Q4_0 writes two columns into each byte.
        Parallel.For(0, blocks, () => new float[k + groups], (b, state, buffer) =>
        {
            fixed (float* row = buffer)
            {
                float* scales = row + k;
                sbyte* q = stackalloc sbyte[k];
                for (int j = 0; j < Block && (b * Block) + j < n; j++)
                {
                    int column = (b * Block) + j;
                    ReadRow(rows[column].Start, rows[column].Type, k, row);
                    if (!QuantBlocks.Quantize(kind, row, k, q, scales))
                    {
                        Interlocked.Exchange(ref bad, 1);
                        state.Stop();
                        return buffer;
                    }

                    if (kind == WeightQuantization.Q4_0)
                    {
                        for (long c = 0; c < k; c++)
                        {
                            q[c] += 8;   // stored level + 8: unsigned nibbles
                        }

                        m.StoreNibbles(b, j, (byte*)q);
                    }
                    else if (m._int8)
                    {
                        // Level + 128 at (input c / 4, column j, c % 4) (PackedMatrix.Vnni.cs); padding columns stay 0.
                        byte* levels = (byte*)m._levels + ((long)b * k * Block);
                        for (long c = 0; c < k; c++)
                        {
                            levels[VnniOffset(c, j)] = (byte)(q[c] + 128);
                        }
                    }
                    else
                    {
                        sbyte* levels = m._levels + ((long)b * k * Block) + j;
                        for (long c = 0; c < k; c++)
                        {
                            levels[c * Block] = q[c];
                        }
                    }

                    float* blockScales = m._scales + ((long)b * groups * Block) + j;
                    for (int g = 0; g < groups; g++)
                    {
                        blockScales[g * Block] = scales[g];
                    }
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

    /// <summary>Writes column <paramref name="j"/> of block <paramref name="b"/> as nibbles (<paramref name="stored"/>: K
    /// values 0–15) — in the VNNI layout (<see cref="VnniNibble"/>), or column j in the low half of byte j (j &lt; 16) or the
    /// high half of byte j − 16.</summary>
    private void StoreNibbles(int b, int j, byte* stored)
    {
        long k = Inputs;
        byte* levels = (byte*)_levels + ((long)b * k * (Block / 2));
        for (long c = 0; c < k; c++)
        {
            if (_int8)
            {
                var (offset, shift) = VnniNibble(c, j);
                levels[offset] |= (byte)(stored[c] << shift);
            }
            else
            {
                levels[(c * (Block / 2)) + (j % 16)] |= (byte)(stored[c] << (j < 16 ? 0 : 4));
            }
        }
    }

    /// <summary>
    /// Packs a GGUF file's Q4_K rows as they are (<see cref="WeightQuantization.Q4_K"/>): <paramref name="parts"/> stacked as
    /// <c>cat</c> would, each part's rows read through its q/k head permutation (llama.cpp's adjacent-pair RoPE order back to
    /// Hugging Face's), then taken in <paramref name="order"/> (null: as they come). Null where this CPU lacks AVX-512 or a
    /// part is not Q4_K rows of whole super-blocks.
    /// </summary>
    /// <remarks>Per block of 32 outputs: the levels as nibbles (Q4_0's layouts, the level itself); per group of 32 inputs
    /// 64 bytes, the 32 outputs' 6-bit sub-scales then their sub-minimums; per super-block of 256 inputs 64 floats, the 32
    /// outputs' d then their dmin (<see cref="Q4KScales"/>): 4.75 bits a weight, and the kernels form scale = d · sub-scale
    /// and min = dmin · sub-min, exact in f32 as llama.cpp's own products.</remarks>
    public static PackedMatrix? TryFromBlocks(IReadOnlyList<(nint Data, GgmlType Type, int Rows, int PermuteHeads)> parts, int k, long[]? order)
    {
        if (!Supported || parts.Count == 0 || k % 256 != 0 || parts.Any(p => p.Type != GgmlType.Q4_K))
        {
            return null;
        }

        long rowBytes = (long)k / 256 * 144;
        var sources = new List<nint>();
        foreach (var (data, _, rows, heads) in parts)
        {
            for (int r = 0; r < rows; r++)
            {
                // Within a head of hd rows, Hugging Face row j·hd/2 + i is stored row 2i + j.
                int hd = heads > 0 ? rows / heads : 0, within = heads > 0 ? r % hd : 0;
                long stored = heads > 0 ? (r - within) + (2 * (within % (hd / 2))) + (within / (hd / 2)) : r;
                sources.Add(data + (nint)(stored * rowBytes));
            }
        }

        if (order is not null)
        {
            sources = [.. order.Select(i => sources[(int)i])];
        }

        int n = sources.Count, blocks = (n + Block - 1) / Block, groups = k / QuantBlocks.Size, supers = k / 256;
        long blockFloats = Q4KScales(k);
        nuint levelBytes = (nuint)((long)blocks * (Block / 2) * k), scaleBytes = (nuint)(blocks * blockFloats * sizeof(float));
        var m = new PackedMatrix(k, n, WeightQuantization.Q4_K, (sbyte*)NativeMemory.AlignedAlloc(levelBytes, 64), (float*)NativeMemory.AlignedAlloc(scaleBytes, 64))
        {
            _int8 = Int8Activations,
        };
        NativeMemory.Clear(m._levels, levelBytes);   // padding columns of the last block: d and dmin 0
        NativeMemory.Clear(m._scales, scaleBytes);
        Parallel.For(0, blocks, () => new float[2 * supers], (b, _, buffer) =>
        {
            fixed (float* d = buffer)
            {
                byte* levels = stackalloc byte[k + (2 * groups)];
                byte* subScales = levels + k, subMins = subScales + groups;
                float* region = m._scales + (b * blockFloats);
                byte* perGroup = (byte*)region;
                float* perSuper = region + (groups * 16);
                for (int j = 0; j < Block && (b * Block) + j < n; j++)
                {
                    GgmlBlocks.Q4KRow((byte*)sources[(b * Block) + j], k, levels, subScales, subMins, d, d + supers);
                    m.StoreNibbles(b, j, levels);
                    for (int g = 0; g < groups; g++)
                    {
                        perGroup[(g * 64) + j] = subScales[g];
                        perGroup[(g * 64) + 32 + j] = subMins[g];
                    }

                    for (int sb = 0; sb < supers; sb++)
                    {
                        perSuper[(sb * 64) + j] = d[sb];
                        perSuper[(sb * 64) + 32 + j] = d[supers + sb];
                    }
                }
            }

            return buffer;
        }, _ => { });
        return m;
    }

    /// <summary>Floats of a Q4_K block's scale region for <paramref name="k"/> inputs: 64 bytes a group, 64 floats a
    /// super-block.</summary>
    private static long Q4KScales(int k) => ((long)k / QuantBlocks.Size * 16) + ((long)k / 256 * 64);

    /// <summary>Floats of one block's scale region: 32 a group (Q8_0, Q4_0), or <see cref="Q4KScales"/>.</summary>
    private long BlockScales => _quantization == WeightQuantization.Q4_K ? Q4KScales(Inputs) : (long)Inputs / QuantBlocks.Size * Block;

    /// <summary>A Q4_K group's scales and minimums for 16 outputs from <paramref name="from"/>, out of its block's scale
    /// region (group <paramref name="group"/> of <paramref name="groups"/>): d · sub-scale and dmin · sub-min, exact f32
    /// products.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<float> Scale, Vector512<float> Min) Q4KGroup(float* region, int group, int groups, int from)
    {
        byte* g = (byte*)region + (group * 64) + from;
        float* super = region + (groups * 16) + (group / 8 * 64) + from;
        Vector512<float> scales = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(g)));
        Vector512<float> mins = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(g + 32)));
        return (scales * Vector512.Load(super), mins * Vector512.Load(super + 32));
    }

    /// <summary>Packs <paramref name="parts"/> as <see cref="TryCreateFromRows(Tensor[], bool)"/> does, or with a
    /// <paramref name="quantization"/> as <see cref="TryQuantize"/> does where the rows are whole blocks of 32 (a weight
    /// whose rows are not keeps its values).</summary>
    public static PackedMatrix? TryPack(Tensor[] parts, bool round, WeightQuantization quantization) =>
        quantization != WeightQuantization.None && parts.Length > 0 && parts[0].dim() == 2 && QuantBlocks.Fits(parts[0].shape[1])
            ? TryQuantize(quantization, parts)
            : TryCreateFromRows(parts, round);

    /// <summary>Bytes of a block's row of 32 levels.</summary>
    private static int LevelBytes(WeightQuantization kind) => kind is WeightQuantization.Q4_0 or WeightQuantization.Q4_K ? Block / 2 : Block;

    /// <summary>A stored row of <paramref name="count"/> values (f32, bf16 or f16) as f32 (16-bit ones through the
    /// kernels' vector widening: a scalar half conversion costs ≈ 10 ns a value, a minute for an 8B f16 checkpoint).</summary>
    private static void ReadRow(nint start, ScalarType type, int count, float* row)
    {
        if (type == ScalarType.Float32)
        {
            new ReadOnlySpan<float>((float*)start, count).CopyTo(new Span<float>(row, count));
        }
        else
        {
            CpuKernels.Widen((ushort*)start, type, row, count);
        }
    }

    /// <summary>A block format as a type, so that the JIT compiles one micro-kernel per format (<see cref="Tile"/>).</summary>
    private interface IBlockFormat
    {
        /// <summary>Gets the bytes of a block's row of 32 values.</summary>
        static abstract int RowBytes { get; }

        /// <summary>Gets whether the values are levels with a scale per group of 32 inputs (else the values themselves).</summary>
        static abstract bool Grouped { get; }

        /// <summary>Gets whether <see cref="Widen"/> gives level + 8 (Q4_0's stored form), the 8 taken off once per group
        /// as −8 · Σ x (<see cref="SumGroups"/>).</summary>
        static abstract bool Offset { get; }

        /// <summary>Gets the bit mask <see cref="Widen"/> takes.</summary>
        static abstract Vector512<uint> Mask { get; }

        /// <summary>Gets whether the format is Q4_K's (value = scale · level − min, both formed from the block's compact
        /// scales, <see cref="Q4KGroup"/>): min · Σ x comes off each group's product (<see cref="SumGroups"/>).</summary>
        static abstract bool HasMin { get; }

        /// <summary>The rows of two blocks at <paramref name="p0"/> and <paramref name="p1"/> as f32 values (levels, + 8
        /// where <see cref="Offset"/>), columns 0–15 and 16–31 of each, exactly, given <see cref="Mask"/> and the f16
        /// blocks' <paramref name="scale"/>.</summary>
        static abstract (Vector512<float> W0, Vector512<float> W1, Vector512<float> W2, Vector512<float> W3) Widen(byte* p0, byte* p1, Vector512<uint> mask, Vector512<float> scale);
    }

    /// <summary>16-bit blocks in <typeparamref name="TFormat"/> (bf16 or f16).</summary>
    private readonly struct HalfBlocks<TFormat> : IBlockFormat
        where TFormat : struct, IHalfFormat
    {
        public static int RowBytes => Block * sizeof(ushort);

        public static bool Grouped => false;

        public static bool Offset => false;

        public static bool HasMin => false;

        public static Vector512<uint> Mask => TFormat.Mask;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> W0, Vector512<float> W1, Vector512<float> W2, Vector512<float> W3) Widen(byte* p0, byte* p1, Vector512<uint> mask, Vector512<float> scale)
        {
            var (w0, w1) = TFormat.Widen(Vector512.Load((uint*)p0), mask, scale);
            var (w2, w3) = TFormat.Widen(Vector512.Load((uint*)p1), mask, scale);
            return (w0, w1, w2, w3);
        }
    }

    /// <summary>Q8_0: a byte a level, sign-extended.</summary>
    private readonly struct Q8Levels : IBlockFormat
    {
        public static int RowBytes => Block;

        public static bool Grouped => true;

        public static bool Offset => false;

        public static bool HasMin => false;

        public static Vector512<uint> Mask => default;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> W0, Vector512<float> W1, Vector512<float> W2, Vector512<float> W3) Widen(byte* q0, byte* q1, Vector512<uint> mask, Vector512<float> scale) =>
            (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)q0))),
             Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)q0 + 16))),
             Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)q1))),
             Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)q1 + 16))));
    }

    /// <summary>Q4_0: two levels a byte (column j's + 8 low, column 16 + j's high), zero-extended and split; the 8 comes
    /// off per group (<see cref="Offset"/>): four subtractions fewer per 64 values; Q4_0 / Q8_0 time at four and eight
    /// rows 0.94–1.07 against 1.11–1.17 with the subtractions (two interleaved runs each, <c>--kernel-formats</c>).</summary>
    private readonly struct Q4Levels : IBlockFormat
    {
        public static int RowBytes => Block / 2;

        public static bool Grouped => true;

        public static bool Offset => true;

        public static bool HasMin => false;

        public static Vector512<uint> Mask => Vector512.Create(15u);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> W0, Vector512<float> W1, Vector512<float> W2, Vector512<float> W3) Widen(byte* q0, byte* q1, Vector512<uint> mask, Vector512<float> scale)
        {
            Vector512<int> low = mask.AsInt32();
            Vector512<int> a = Avx512F.ConvertToVector512Int32(Vector128.Load(q0)), b = Avx512F.ConvertToVector512Int32(Vector128.Load(q1));
            return (Avx512F.ConvertToVector512Single(a & low), Avx512F.ConvertToVector512Single(Vector512.ShiftRightLogical(a, 4)),
                Avx512F.ConvertToVector512Single(b & low), Avx512F.ConvertToVector512Single(Vector512.ShiftRightLogical(b, 4)));
        }
    }

    /// <summary>Q4_K: the levels as stored (no offset); scales and minimums formed per group from the block's sub-scales
    /// and super-block scales (<see cref="HasMin"/>, <see cref="Q4KGroup"/>).</summary>
    private readonly struct Q4MinLevels : IBlockFormat
    {
        public static int RowBytes => Block / 2;

        public static bool Grouped => true;

        public static bool Offset => false;

        public static bool HasMin => true;

        public static Vector512<uint> Mask => Vector512.Create(15u);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> W0, Vector512<float> W1, Vector512<float> W2, Vector512<float> W3) Widen(byte* q0, byte* q1, Vector512<uint> mask, Vector512<float> scale) =>
            Q4Levels.Widen(q0, q1, mask, scale);
    }

    /// <summary>−8 · Σ x (Q4_0's offset levels) or −Σ x (Q4_K's minimums) over each group of 32 inputs of each row of the
    /// current call (f32 adds in input order from zero; the product exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SumGroups()
    {
        int groups = Inputs / QuantBlocks.Size;
        if (_sumRows < _rows)
        {
            NativeMemory.AlignedFree(_sums);
            _sumRows = Math.Max(_rows, 2 * _sumRows);
            _sums = (float*)NativeMemory.AlignedAlloc((nuint)((long)_sumRows * groups * sizeof(float)), 64);
        }

        for (int r = 0; r < _rows; r++)
        {
            float* x = _x + ((long)r * Inputs);
            for (int g = 0; g < groups; g++)
            {
                float sum = 0;
                for (int c = g * QuantBlocks.Size; c < (g + 1) * QuantBlocks.Size; c++)
                {
                    sum += x[c];
                }

                _sums[(r * groups) + g] = (_quantization == WeightQuantization.Q4_K ? -1 : -8) * sum;
            }
        }
    }

    /// <summary>A row's 64 totals at <paramref name="y"/> plus its group sums — plus −8 · Σ x where the levels are offset
    /// (one f32 add) — times the group's scales (fused; the first group's from zero); then, with minimums
    /// (<paramref name="n0"/> to <paramref name="n3"/>), plus min · (−Σ x), fused.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scale4<TFormat>(float* y, Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> e0, Vector512<float> e1, Vector512<float> e2, Vector512<float> e3, bool first, float* sums, int group,
        Vector512<float> n0, Vector512<float> n1, Vector512<float> n2, Vector512<float> n3)
        where TFormat : struct, IBlockFormat
    {
        if (TFormat.Offset)
        {
            var offset = Vector512.Create(sums[group]);
            (a0, a1, a2, a3) = (a0 + offset, a1 + offset, a2 + offset, a3 + offset);
        }

        Vector512<float> zero = Vector512<float>.Zero;
        Vector512.FusedMultiplyAdd(a0, e0, first ? zero : Vector512.Load(y)).Store(y);
        Vector512.FusedMultiplyAdd(a1, e1, first ? zero : Vector512.Load(y + 16)).Store(y + 16);
        Vector512.FusedMultiplyAdd(a2, e2, first ? zero : Vector512.Load(y + 32)).Store(y + 32);
        Vector512.FusedMultiplyAdd(a3, e3, first ? zero : Vector512.Load(y + 48)).Store(y + 48);
        if (TFormat.HasMin)
        {
            var minus = Vector512.Create(sums[group]);
            Vector512.FusedMultiplyAdd(n0, minus, Vector512.Load(y)).Store(y);
            Vector512.FusedMultiplyAdd(n1, minus, Vector512.Load(y + 16)).Store(y + 16);
            Vector512.FusedMultiplyAdd(n2, minus, Vector512.Load(y + 32)).Store(y + 32);
            Vector512.FusedMultiplyAdd(n3, minus, Vector512.Load(y + 48)).Store(y + 48);
        }
    }
}

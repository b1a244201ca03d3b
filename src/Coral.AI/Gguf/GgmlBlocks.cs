using System.Runtime.CompilerServices;

namespace Coral.AI;

/// <summary>
/// ggml's storage types as bytes: the size of a tensor of each type, and its values as f32 — the numbers llama.cpp
/// multiplies by (its dequantize_row_* arithmetic in f32: a block's scale times its level, minus a block minimum where the
/// type has one). F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (the types of
/// the usual Q2_K / Q3_K_M / Q4_K_M / Q5_K_M / Q6_K files) and IQ4_NL, IQ4_XS are read; other types (the 1–3-bit IQ types,
/// TQ) are named in the error.
/// </summary>
internal static unsafe class GgmlBlocks
{
    /// <summary>Elements per block and bytes per block of <paramref name="type"/>; (0, 0) for a type Coral does not know.</summary>
    public static (int Elements, int Bytes) Block(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 or GgmlType.BF16 => (1, 2),
        GgmlType.Q4_0 => (32, 18),
        GgmlType.Q4_1 => (32, 20),
        GgmlType.Q5_0 => (32, 22),
        GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34),
        GgmlType.Q2_K => (256, 84),
        GgmlType.Q3_K => (256, 110),
        GgmlType.Q4_K => (256, 144),
        GgmlType.Q5_K => (256, 176),
        GgmlType.Q6_K => (256, 210),
        GgmlType.IQ4_NL => (32, 18),
        GgmlType.IQ4_XS => (256, 136),
        _ => (0, 0),
    };

    /// <summary>Whether <see cref="Dequantize"/> reads <paramref name="type"/>.</summary>
    public static bool Readable(GgmlType type) => Block(type).Elements > 0;

    /// <summary>The bytes of a tensor of <paramref name="elements"/> values; refuses a type Coral does not know and a count
    /// that is not whole blocks.</summary>
    public static long Bytes(GgmlType type, long elements, string path, string name)
    {
        var (per, bytes) = Block(type);
        if (per == 0)
        {
            throw new CoralModelException(path, name, $"is stored as ggml type {(uint)type}, which Coral cannot read (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS).");
        }

        if (elements % per != 0)
        {
            throw new CoralModelException(path, name, $"has {elements} values: not whole {type} blocks of {per}.");
        }

        return elements / per * bytes;
    }

    /// <summary>Writes the values of <paramref name="blocks"/> whole blocks at <paramref name="source"/> to
    /// <paramref name="destination"/>.</summary>
    public static void Dequantize(GgmlType type, byte* source, long blocks, float* destination)
    {
        var (per, bytes) = Block(type);
        for (long b = 0; b < blocks; b++)
        {
            byte* x = source + (b * bytes);
            float* y = destination + (b * per);
            switch (type)
            {
                case GgmlType.F32:
                    *y = *(float*)x;
                    break;
                case GgmlType.F16:
                    *y = Half(x);
                    break;
                case GgmlType.BF16:
                    *y = BitConverter.Int32BitsToSingle(*(ushort*)x << 16);
                    break;
                case GgmlType.Q8_0:
                {
                    float d = Half(x);
                    for (int j = 0; j < 32; j++)
                    {
                        y[j] = ((sbyte*)(x + 2))[j] * d;
                    }

                    break;
                }

                case GgmlType.Q4_0 or GgmlType.Q4_1:
                {
                    // Element j in the low nibble of byte j, element j + 16 in its high nibble.
                    bool offset = type == GgmlType.Q4_1;
                    float d = Half(x), m = offset ? Half(x + 2) : 0;
                    byte* qs = x + (offset ? 4 : 2);
                    for (int j = 0; j < 16; j++)
                    {
                        int lo = qs[j] & 0xF, hi = qs[j] >> 4;
                        y[j] = offset ? (lo * d) + m : (lo - 8) * d;
                        y[j + 16] = offset ? (hi * d) + m : (hi - 8) * d;
                    }

                    break;
                }

                case GgmlType.Q5_0 or GgmlType.Q5_1:
                {
                    // As Q4, with each element's fifth bit in a 32-bit mask (bit j for element j).
                    bool offset = type == GgmlType.Q5_1;
                    float d = Half(x), m = offset ? Half(x + 2) : 0;
                    uint qh = Unsafe.ReadUnaligned<uint>(x + (offset ? 4 : 2));
                    byte* qs = x + (offset ? 8 : 6);
                    for (int j = 0; j < 16; j++)
                    {
                        int lo = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
                        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                        y[j] = offset ? (lo * d) + m : (lo - 16) * d;
                        y[j + 16] = offset ? (hi * d) + m : (hi - 16) * d;
                    }

                    break;
                }

                case GgmlType.Q4_K or GgmlType.Q5_K:
                {
                    // 8 sub-blocks of 32 with 6-bit scales and minimums (12 bytes), 4-bit levels two sub-blocks to 32
                    // bytes (low nibbles the first, high the second); Q5_K adds each level's fifth bit in qh (bit 2s for
                    // sub-block 2s, 2s + 1 for the next).
                    bool five = type == GgmlType.Q5_K;
                    float d = Half(x), dmin = Half(x + 2);
                    byte* scales = x + 4, qh = x + 16, qs = x + (five ? 48 : 16);
                    for (int pair = 0; pair < 4; pair++)
                    {
                        for (int half = 0; half < 2; half++)
                        {
                            int s = (2 * pair) + half;
                            var (sc, mn) = ScaleMin(s, scales);
                            float ds = d * sc, ms = dmin * mn;
                            for (int l = 0; l < 32; l++)
                            {
                                int q = half == 0 ? qs[(32 * pair) + l] & 0xF : qs[(32 * pair) + l] >> 4;
                                if (five && (qh[l] & (1 << s)) != 0)
                                {
                                    q += 16;
                                }

                                y[(32 * s) + l] = (ds * q) - ms;
                            }
                        }
                    }

                    break;
                }

                case GgmlType.Q2_K:
                {
                    // 16 groups of 16 with a 4-bit scale (low nibble) and 4-bit minimum (high) each, 2-bit levels four to a
                    // byte: two halves of 128, each 32 bytes whose bit pairs 0–1, 2–3, 4–5, 6–7 are four runs of 32 values
                    // (bytes 0–15 one group, 16–31 the next); d and dmin (f16) last.
                    byte* scales = x, qs = x + 16;
                    float d = Half(x + 80), dmin = Half(x + 82);
                    int group = 0;
                    for (int n = 0; n < 2; n++)
                    {
                        byte* q = qs + (32 * n);
                        for (int shift = 0; shift < 8; shift += 2)
                        {
                            for (int part = 0; part < 2; part++, group++)
                            {
                                float dl = d * (scales[group] & 0xF), ml = dmin * (scales[group] >> 4);
                                for (int l = 0; l < 16; l++)
                                {
                                    y[(16 * group) + l] = (dl * ((q[(16 * part) + l] >> shift) & 3)) - ml;
                                }
                            }
                        }
                    }

                    break;
                }

                case GgmlType.Q3_K:
                {
                    // 16 groups of 16 with 6-bit scales (12 bytes: low 4 bits in bytes 0–7, high 2 bits in bytes 8–11),
                    // offset by 32; 2-bit levels laid out as Q2_K's; a third bit per value in hmask (bit j of byte l for
                    // value l of run j), clear meaning minus 4; d (f16) last.
                    byte* hmask = x, qs = x + 32, packed = x + 96;
                    float d = Half(x + 108);
                    int group = 0;
                    for (int n = 0; n < 2; n++)
                    {
                        byte* q = qs + (32 * n);
                        for (int run = 0; run < 4; run++)
                        {
                            int shift = 2 * run, bit = 1 << ((4 * n) + run);
                            for (int part = 0; part < 2; part++, group++)
                            {
                                float dl = d * (Q3KScale(group, packed) - 32);
                                for (int l = 0; l < 16; l++)
                                {
                                    int i = (16 * part) + l;
                                    int level = ((q[i] >> shift) & 3) - ((hmask[i] & bit) != 0 ? 0 : 4);
                                    y[(16 * group) + l] = dl * level;
                                }
                            }
                        }
                    }

                    break;
                }

                case GgmlType.IQ4_NL:
                {
                    // As Q4_0's layout, each 4-bit index naming one of 16 non-uniform levels.
                    float d = Half(x);
                    for (int j = 0; j < 16; j++)
                    {
                        y[j] = d * Iq4Levels[x[2 + j] & 0xF];
                        y[j + 16] = d * Iq4Levels[x[2 + j] >> 4];
                    }

                    break;
                }

                case GgmlType.IQ4_XS:
                {
                    // 8 groups of 32, each with a 6-bit scale offset by 32 (low 4 bits in scales_l's nibbles, high 2 bits
                    // in scales_h's bit pairs) and IQ4_NL's indices (16 bytes a group).
                    float d = Half(x);
                    ushort high = Unsafe.ReadUnaligned<ushort>(x + 2);
                    byte* low = x + 4, qs = x + 8;
                    for (int g = 0; g < 8; g++)
                    {
                        int scale = ((low[g / 2] >> (4 * (g % 2))) & 0xF) | (((high >> (2 * g)) & 3) << 4);
                        float dl = d * (scale - 32);
                        for (int j = 0; j < 16; j++)
                        {
                            y[(32 * g) + j] = dl * Iq4Levels[qs[(16 * g) + j] & 0xF];
                            y[(32 * g) + j + 16] = dl * Iq4Levels[qs[(16 * g) + j] >> 4];
                        }
                    }

                    break;
                }

                case GgmlType.Q6_K:
                {
                    // Two halves of 128: low 4 bits in ql (64 bytes a half), high 2 bits in qh (32 bytes a half), 16
                    // int8 scales (one per 16 values), the f16 scale last.
                    float d = Half(x + 208);
                    sbyte* sc = (sbyte*)(x + 192);
                    for (int n = 0; n < 2; n++)
                    {
                        byte* ql = x + (64 * n), qh = x + 128 + (32 * n);
                        float* yn = y + (128 * n);
                        sbyte* scn = sc + (8 * n);
                        for (int l = 0; l < 32; l++)
                        {
                            int i = l / 16;
                            int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                            int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                            yn[l] = d * scn[i] * q1;
                            yn[l + 32] = d * scn[i + 2] * q2;
                            yn[l + 64] = d * scn[i + 4] * q3;
                            yn[l + 96] = d * scn[i + 6] * q4;
                        }
                    }

                    break;
                }

                default:
                    throw new NotSupportedException($"ggml type {type} cannot be read.");
            }
        }
    }

    /// <summary>
    /// One row of <paramref name="count"/> values of a Q4_K tensor as its parts: the 4-bit levels (0–15, a byte each), per
    /// group of 32 its 6-bit sub-scale and sub-minimum (<paramref name="subScales"/>, <paramref name="subMins"/>), per
    /// super-block of 256 its d and dmin — value = d · sub-scale · level − dmin · sub-min, exactly what
    /// <see cref="Dequantize"/> computes (both products exact in f32).
    /// </summary>
    public static void Q4KRow(byte* row, int count, byte* levels, byte* subScales, byte* subMins, float* d, float* dmin)
    {
        for (int sb = 0; sb < count / 256; sb++)
        {
            byte* x = row + (sb * 144);
            (d[sb], dmin[sb]) = (Half(x), Half(x + 2));
            for (int s = 0; s < 8; s++)
            {
                int g = (sb * 8) + s;
                (int sc, int mn) = ScaleMin(s, x + 4);
                (subScales[g], subMins[g]) = ((byte)sc, (byte)mn);
                byte* qs = x + 16 + (32 * (s / 2));
                for (int l = 0; l < 32; l++)
                {
                    levels[(g * 32) + l] = (byte)(s % 2 == 0 ? qs[l] & 0xF : qs[l] >> 4);
                }
            }
        }
    }

    /// <summary>The 16 levels an IQ4_NL / IQ4_XS index names (ggml's kvalues_iq4nl).</summary>
    private static ReadOnlySpan<sbyte> Iq4Levels => [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

    private static float Half(byte* p) => (float)BitConverter.UInt16BitsToHalf(Unsafe.ReadUnaligned<ushort>(p));

    /// <summary>Group <paramref name="g"/>'s 6-bit scale (0–63) from Q3_K's 12 packed bytes: the low 4 bits are nibbles of
    /// bytes 0–7 (groups 0–7 the low nibbles, 8–15 the high), the high 2 bits bit pairs of bytes 8–11 (byte 8 + g mod 4,
    /// pair g / 4).</summary>
    private static int Q3KScale(int g, byte* q) => ((g < 8 ? q[g] & 0xF : q[g - 8] >> 4) | (((q[8 + (g % 4)] >> (2 * (g / 4))) & 3) << 4));

    /// <summary>Sub-block <paramref name="j"/>'s 6-bit scale and minimum from a K-quant's 12 packed bytes.</summary>
    private static (int Scale, int Min) ScaleMin(int j, byte* q) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));
}

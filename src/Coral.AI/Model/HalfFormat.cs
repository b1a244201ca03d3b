using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Coral.AI;

/// <summary>The 16-bit formats the CPU kernels read weights in (<see cref="IHalfFormat"/>): each widens to f32 exactly.</summary>
internal static class HalfFormat
{
    /// <summary>bfloat16: the high half of an f32's bits (one shift, or one mask). Two operations for 32 values.</summary>
    public readonly struct BFloat16 : IHalfFormat
    {
        public static Vector512<uint> Mask => Vector512.Create(0xFFFF0000u);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> Low, Vector512<float> High) Widen(Vector512<uint> words, Vector512<uint> mask, Vector512<float> scale) =>
            (Vector512.ShiftLeft(words, 16).AsSingle(), (words & mask).AsSingle());
    }

    /// <summary>IEEE float16, finite values (infinities and NaNs are refused where weights are packed), or halves stored
    /// with another exponent bias (<see cref="PackedMatrix.F16Bias"/>): a half at the top of its word, shifted
    /// arithmetically by 3, has its sign at bit 31 and its exponent and fraction at an f32's positions (bits 28–30,
    /// copies of the sign, are masked off); times 2^(127 − bias) — 2¹¹² for a half's own bias 15, which also turns a
    /// subnormal half into the normal float it is — that is its value. Exact: a power-of-two scaling of a value that stays
    /// in f32's normal range. Seven operations for 32 values.</summary>
    public readonly struct Float16 : IHalfFormat
    {
        public static Vector512<uint> Mask => Vector512.Create(0x8FFFE000u);

        /// <summary>Gets the scale of halves with their own bias: 2¹¹² = 2^(127 − 15) in every lane.</summary>
        public static Vector512<float> Scale => ScaleFor(15);

        /// <summary>The scale of halves stored with exponent bias <paramref name="bias"/> (0–127): 2^(127 − bias) in every lane.</summary>
        public static Vector512<float> ScaleFor(int bias) => Vector512.Create(BitConverter.Int32BitsToSingle((254 - bias) << 23));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> Low, Vector512<float> High) Widen(Vector512<uint> words, Vector512<uint> mask, Vector512<float> scale)
        {
            Vector512<int> keep = mask.AsInt32();
            Vector512<int> low = Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(words, 16).AsInt32(), 3) & keep;
            Vector512<int> high = Vector512.ShiftRightArithmetic(words.AsInt32(), 3) & keep;
            return (low.AsSingle() * scale, high.AsSingle() * scale);
        }
    }
}

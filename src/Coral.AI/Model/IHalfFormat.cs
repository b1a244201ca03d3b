using System.Runtime.Intrinsics;

namespace Coral.AI;

/// <summary>A 16-bit weight format as a type (<see cref="HalfFormat"/>), so that the JIT compiles one micro-kernel per
/// format (<see cref="PackedMatrix"/>).</summary>
internal interface IHalfFormat
{
    /// <summary>Gets the bit mask <see cref="Widen"/> takes (a kernel loads it once, before its loop: the JIT re-broadcast
    /// such constants in every iteration).</summary>
    static abstract Vector512<uint> Mask { get; }

    /// <summary>A packed block's row of 32 values (word j: column j in its low half, column 16 + j in its high half) as
    /// f32 columns 0–15 and 16–31, exactly, given <see cref="Mask"/> and the format's scale (f16: 2^(127 − exponent
    /// bias); bf16: unused).</summary>
    static abstract (Vector512<float> Low, Vector512<float> High) Widen(Vector512<uint> words, Vector512<uint> mask, Vector512<float> scale);
}

using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// The Q8_0 weight format of llama.cpp (GGML type 8): each row of a weight [out, in] in blocks of 32 consecutive inputs,
/// a block stored as one f16 scale d and 32 int8 levels q, its values q·d. A block's d is max|w|/127 rounded to f16 and
/// its levels round(w · (1/(max|w|/127))), half away from zero — llama.cpp's reference quantizer, so a Q8_0 GGUF that
/// <see cref="GgufExporter"/> writes holds the very values the <see cref="PackedMatrix"/> Q8_0 blocks multiply by.
/// </summary>
/// <remarks>A value q·d is exact in f32 (|q| ≤ 127 has 7 significant bits, an f16 scale 11): a Q8_0 model is the model
/// whose weights are those values, whatever computes it.</remarks>
internal static unsafe class Q8Blocks
{
    /// <summary>Inputs per block.</summary>
    public const int Size = 32;

    /// <summary>Bytes of a block in a GGUF file: the f16 scale, then the 32 levels.</summary>
    public const int GgufBytes = 2 + Size;

    /// <summary>Quantizes <paramref name="count"/> values (a multiple of <see cref="Size"/>) into
    /// <paramref name="levels"/> and one scale per block (an f16 value, as f32) into <paramref name="scales"/>; false
    /// when a value is not finite or a scale overflows f16 (nothing a trained weight holds).</summary>
    public static bool Quantize(float* values, int count, sbyte* levels, float* scales)
    {
        for (int b = 0; b < count / Size; b++)
        {
            float* w = values + (b * Size);
            float amax = 0;
            for (int j = 0; j < Size; j++)
            {
                float a = MathF.Abs(w[j]);
                if (!float.IsFinite(a))
                {
                    return false;
                }

                amax = MathF.Max(amax, a);
            }

            float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
            var half = (Half)d;
            if (Half.IsInfinity(half))
            {
                return false;
            }

            scales[b] = (float)half;
            for (int j = 0; j < Size; j++)
            {
                levels[(b * Size) + j] = (sbyte)MathF.Round(w[j] * id, MidpointRounding.AwayFromZero);
            }
        }

        return true;
    }

    /// <summary>Whether a weight with rows of <paramref name="inputs"/> values can be stored as Q8_0 (whole blocks).</summary>
    public static bool Fits(long inputs) => inputs > 0 && inputs % Size == 0;

    /// <summary>The Q8_0 values of <paramref name="weight"/> [.., in] (any float dtype, CPU or not) as an f32 tensor of its
    /// shape: the weight the kernels' Q8_0 blocks multiply by, for the paths that multiply dequantized f32 (libtorch).</summary>
    /// <exception cref="ArgumentException">The rows are not whole blocks, or a value is not finite.</exception>
    public static Tensor Dequantize(Tensor weight)
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = weight.to(ScalarType.Float32, torch.CPU).contiguous();
        long k = w.shape[^1];
        if (!Fits(k))
        {
            throw new ArgumentException($"Q8_0 needs rows of a multiple of {Size} values, not {k}.", nameof(weight));
        }

        Tensor result = torch.empty_like(w);
        float* src = CpuKernels.Pointer(w), dst = CpuKernels.Pointer(result);
        long rows = w.numel() / k;
        int bad = 0;
        Parallel.For(0, rows, r =>
        {
            sbyte* q = stackalloc sbyte[(int)k];
            float* s = stackalloc float[(int)k / Size];
            if (!Quantize(src + (r * k), (int)k, q, s))
            {
                Interlocked.Exchange(ref bad, 1);
                return;
            }

            for (long j = 0; j < k; j++)
            {
                dst[(r * k) + j] = q[j] * s[j / Size];
            }
        });
        if (bad != 0)
        {
            throw new ArgumentException("Q8_0 cannot store a weight with a value that is not finite.", nameof(weight));
        }

        return result.to(weight.device).MoveToOuterDisposeScope();
    }

    /// <summary><paramref name="weight"/> as the forward multiplies by it under <paramref name="quantization"/>: its Q8_0
    /// values (<see cref="Dequantize"/>, f32) where its rows are whole blocks, else itself (a new handle; the caller
    /// disposes both).</summary>
    public static Tensor Apply(Tensor weight, WeightQuantization quantization) =>
        quantization == WeightQuantization.Q8_0 && Fits(weight.shape[^1]) ? Dequantize(weight) : weight.alias();

    /// <summary>The GGUF bytes of <paramref name="weight"/> [.., in] as Q8_0 blocks, row after row.</summary>
    /// <exception cref="ArgumentException">The rows are not whole blocks, or a value is not finite.</exception>
    public static byte[] Gguf(Tensor weight)
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = weight.to(ScalarType.Float32, torch.CPU).contiguous();
        long k = w.shape[^1], rows = w.numel() / k;
        if (!Fits(k))
        {
            throw new ArgumentException($"Q8_0 needs rows of a multiple of {Size} values, not {k}.", nameof(weight));
        }

        long blocks = k / Size;
        var bytes = new byte[rows * blocks * GgufBytes];
        float* src = CpuKernels.Pointer(w);
        int bad = 0;
        fixed (byte* start = bytes)
        {
            byte* dst0 = start;
            Parallel.For(0, rows, r =>
            {
                sbyte* q = stackalloc sbyte[(int)k];
                float* s = stackalloc float[(int)blocks];
                if (!Quantize(src + (r * k), (int)k, q, s))
                {
                    Interlocked.Exchange(ref bad, 1);
                    return;
                }

                byte* dst = dst0 + (r * blocks * GgufBytes);
                for (long b = 0; b < blocks; b++, dst += GgufBytes)
                {
                    *(Half*)dst = (Half)s[b];
                    new ReadOnlySpan<byte>(q + (b * Size), Size).CopyTo(new Span<byte>(dst + 2, Size));
                }
            });
        }

        if (bad != 0)
        {
            throw new ArgumentException("Q8_0 cannot store a weight with a value that is not finite.", nameof(weight));
        }

        return bytes;
    }
}

using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// llama.cpp's block formats for quantized weights: each row of a weight [out, in] in blocks of 32 consecutive inputs, a
/// block one f16 scale d and 32 signed levels, its values level·d. Q8_0 (GGML type 8): levels −127…127,
/// d = max|w|/127, levels round(w/d) half away from zero. Q4_0 (GGML type 2): levels −8…7, d = m/−8 for the block's
/// m of largest magnitude (the first of equals), levels min(15, ⌊w/d + 8.5⌋) − 8. Both as llama.cpp's reference
/// quantizers compute them (w times 1/d in f32; d rounded to f16 after), so the GGUF that <see cref="GgufExporter"/>
/// writes holds the very values the <see cref="PackedMatrix"/> blocks multiply by.
/// </summary>
/// <remarks>A value level·d is exact in f32 (a level has at most 7 significant bits, an f16 scale 11): a quantized
/// model is the model whose weights are those values, whatever computes it.</remarks>
internal static unsafe class QuantBlocks
{
    /// <summary>Inputs per block.</summary>
    public const int Size = 32;

    /// <summary>Bytes of a block in a GGUF file: the f16 scale, then the levels (Q8_0: a byte each; Q4_0: two per byte,
    /// level + 8, the block's j-th input in the low half of byte j and its (16 + j)-th in the high half).</summary>
    public static int GgufBytes(WeightQuantization kind) => kind == WeightQuantization.Q4_0 ? 2 + (Size / 2) : 2 + Size;

    /// <summary>The GGML tensor type of <paramref name="kind"/>'s blocks.</summary>
    public static uint GgmlType(WeightQuantization kind) => kind == WeightQuantization.Q4_0 ? 2u : 8u;

    /// <summary>Quantizes <paramref name="count"/> values (a multiple of <see cref="Size"/>) into signed
    /// <paramref name="levels"/> and one scale per block (an f16 value, as f32) into <paramref name="scales"/>; false
    /// when a value is not finite or a scale overflows f16 (nothing a trained weight holds).</summary>
    public static bool Quantize(WeightQuantization kind, float* values, int count, sbyte* levels, float* scales)
    {
        for (int b = 0; b < count / Size; b++)
        {
            float* w = values + (b * Size);
            float amax = 0, max = 0;
            for (int j = 0; j < Size; j++)
            {
                float a = MathF.Abs(w[j]);
                if (!float.IsFinite(a))
                {
                    return false;
                }

                if (amax < a)
                {
                    (amax, max) = (a, w[j]);
                }
            }

            float d = kind == WeightQuantization.Q4_0 ? max / -8f : amax / 127f, id = d != 0 ? 1f / d : 0f;
            var half = (Half)d;
            if (Half.IsInfinity(half))
            {
                return false;
            }

            scales[b] = (float)half;
            sbyte* q = levels + (b * Size);
            for (int j = 0; j < Size; j++)
            {
                q[j] = kind == WeightQuantization.Q4_0
                    ? (sbyte)(Math.Min(15, (int)((w[j] * id) + 8.5f)) - 8)
                    : (sbyte)MathF.Round(w[j] * id, MidpointRounding.AwayFromZero);
            }
        }

        return true;
    }

    /// <summary>Whether a weight with rows of <paramref name="inputs"/> values can be stored in blocks (whole ones).</summary>
    public static bool Fits(long inputs) => inputs > 0 && inputs % Size == 0;

    /// <summary><paramref name="weight"/> as the forward multiplies by it under <paramref name="quantization"/>: its
    /// quantized values (<see cref="Dequantize"/>, f32) where its rows are whole blocks, else itself (a new handle; the
    /// caller disposes both).</summary>
    /// <exception cref="CoralModelException">A value is not finite: names <paramref name="file"/> and <paramref name="tensor"/>.</exception>
    public static Tensor Apply(Tensor weight, WeightQuantization quantization, string file, string tensor)
    {
        if (quantization == WeightQuantization.None || !Fits(weight.shape[^1]))
        {
            return weight.alias();
        }

        try
        {
            return Dequantize(weight, quantization);
        }
        catch (ArgumentException e)
        {
            throw new CoralModelException(file, tensor, $"cannot be quantized to {quantization}: {e.Message}", e);
        }
    }

    /// <summary>The quantized values of <paramref name="weight"/> [.., in] (any float dtype, CPU or not) as an f32
    /// tensor of its shape: the weight the kernels' blocks multiply by, for the paths that multiply f32 (libtorch).</summary>
    /// <exception cref="ArgumentException">The rows are not whole blocks, or a value is not finite.</exception>
    public static Tensor Dequantize(Tensor weight, WeightQuantization kind)
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = weight.to(ScalarType.Float32, torch.CPU).contiguous();
        Tensor result = torch.empty_like(w);
        float* dst = CpuKernels.Pointer(result);
        long k = w.shape[^1];
        ForEachRow(w, kind, (r, q, s) =>
        {
            for (long j = 0; j < k; j++)
            {
                dst[(r * k) + j] = q[j] * s[j / Size];
            }
        });
        return result.to(weight.device).MoveToOuterDisposeScope();
    }

    /// <summary>The GGUF bytes of <paramref name="weight"/> [.., in] as <paramref name="kind"/> blocks, row after row.</summary>
    /// <exception cref="ArgumentException">The rows are not whole blocks, or a value is not finite.</exception>
    public static byte[] Gguf(Tensor weight, WeightQuantization kind)
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = weight.to(ScalarType.Float32, torch.CPU).contiguous();
        long k = w.shape[^1], blocks = k / Size;
        int size = GgufBytes(kind);
        var bytes = new byte[w.numel() / k * blocks * size];
        fixed (byte* start = bytes)
        {
            byte* dst0 = start;
            ForEachRow(w, kind, (r, q, s) =>
            {
                byte* dst = dst0 + (r * blocks * size);
                for (long b = 0; b < blocks; b++, dst += size)
                {
                    *(Half*)dst = (Half)s[b];
                    sbyte* l = q + (b * Size);
                    for (int j = 0; j < size - 2; j++)
                    {
                        dst[2 + j] = kind == WeightQuantization.Q4_0 ? (byte)((l[j] + 8) | ((l[j + (Size / 2)] + 8) << 4)) : (byte)l[j];
                    }
                }
            });
        }

        return bytes;
    }

    /// <summary>Quantizes each row of <paramref name="w"/> (f32, CPU, contiguous) and hands its levels and scales to
    /// <paramref name="row"/>, rows in parallel.</summary>
    private static void ForEachRow(Tensor w, WeightQuantization kind, RowAction row)
    {
        long k = w.shape[^1];
        if (!Fits(k))
        {
            throw new ArgumentException($"{kind} needs rows of a multiple of {Size} values, not {k}.", nameof(w));
        }

        float* src = CpuKernels.Pointer(w);
        int bad = 0;
        Parallel.For(0, w.numel() / k, r =>
        {
            sbyte* q = stackalloc sbyte[(int)k];
            float* s = stackalloc float[(int)k / Size];
            if (!Quantize(kind, src + (r * k), (int)k, q, s))
            {
                Interlocked.Exchange(ref bad, 1);
                return;
            }

            row(r, q, s);
        });
        if (bad != 0)
        {
            throw new ArgumentException($"{kind} cannot store a weight with a value that is not finite.", nameof(w));
        }
    }

    private delegate void RowAction(long row, sbyte* levels, float* scales);
}

using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class PackedMatrixTests
{
    private const int K = 70, N = 101;   // N is not a multiple of the 32-column block, and the blocks split unevenly

    /// <summary>Without AVX-512 nothing is packed (the models keep libtorch's GEMMs): checks that, and says so.</summary>
    private static bool NeedsAvx512()
    {
        if (!PackedMatrix.Supported)
        {
            using var scope = torch.NewDisposeScope();
            Assert.Null(PackedMatrix.TryCreate(torch.ones(4, 40)));
        }

        return PackedMatrix.Supported;
    }

    private static (PackedMatrix Matrix, float[] W) Random(int seed)
    {
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator((ulong)seed);
        Tensor w = torch.randn([K, N], generator: gen).to(ScalarType.BFloat16).to(ScalarType.Float32);
        return (PackedMatrix.TryCreate(w)!, TorchTestHelpers.ToArray(w));
    }

    private static unsafe float[] Multiply(PackedMatrix m, float[] x, int rows, int stride = 0)
    {
        int ld = stride == 0 ? N : stride;
        var y = new float[rows * ld];
        Array.Fill(y, float.NaN);
        fixed (float* xp = x, yp = y)
        {
            m.Multiply(xp, rows, yp, stride);
        }

        return y;
    }

    private static float[] Inputs(int rows, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, rows * K).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
    }

    /// <summary>Runs <paramref name="test"/> on a random packed matrix and its values [K, N] (where AVX-512 packs).</summary>
    private static void WithMatrix(int seed, Action<PackedMatrix, float[]> test)
    {
        if (!NeedsAvx512())
        {
            return;
        }

        var (m, w) = Random(seed);
        using (m)
        {
            test(m, w);
        }
    }

    [Fact]
    public void Multiply_MatchesADoubleReference() => WithMatrix(1, (m, w) =>
    {
        foreach (int rows in new[] { 1, 2, 3, 4, 5, 7, 9, 13 })
        {
            float[] x = Inputs(rows, rows), y = Multiply(m, x, rows);
            for (int r = 0; r < rows; r++)
            {
                for (int n = 0; n < N; n++)
                {
                    double expected = 0;
                    for (int k = 0; k < K; k++)
                    {
                        expected += (double)x[r * K + k] * w[k * N + n];
                    }

                    Assert.True(Math.Abs(y[r * N + n] - expected) < 1e-4, $"{rows} rows: y[{r}, {n}] = {y[r * N + n]}, expected {expected}");
                }
            }
        }
    });

    [Fact]
    public void EveryRow_HasTheSameBits_AtEveryRowCount_AndOutputStride() => WithMatrix(2, (m, _) =>
    {
        // What lossless tree verification rests on: a row computes the same bits alone and among any number of rows.
        float[] x = Inputs(17, 3);
        float[][] alone = Enumerable.Range(0, 17).Select(r => Multiply(m, x[(r * K)..((r + 1) * K)], 1)).ToArray();
        foreach (int rows in new[] { 2, 3, 4, 5, 6, 8, 11, 16, 17 })
        {
            float[] y = Multiply(m, x[..(rows * K)], rows);
            float[] strided = Multiply(m, x[..(rows * K)], rows, N + 7);
            for (int r = 0; r < rows; r++)
            {
                Assert.Equal(alone[r], y[(r * N)..((r + 1) * N)]);
                Assert.Equal(alone[r], strided[(r * (N + 7))..((r * (N + 7)) + N)]);
                Assert.All(strided[((r * (N + 7)) + N)..((r + 1) * (N + 7))], v => Assert.True(float.IsNaN(v), "wrote past a row"));
            }
        }
    });

    [Fact]
    public void AWeightWithAValueBf16CannotHold_IsNotPacked()
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = torch.ones(4, 40);
        Assert.Equal(PackedMatrix.Supported, PackedMatrix.TryCreate(w) is { } packed && DisposeAndTrue(packed));
        w[2, 33] = torch.tensor(1f + MathF.Pow(2, -20));
        Assert.Null(PackedMatrix.TryCreate(w));

        static bool DisposeAndTrue(PackedMatrix p)
        {
            p.Dispose();
            return true;
        }
    }

    /// <summary>Packing from output rows ([out, in], as checkpoints store weights; bf16 rows copied, f32 rows holding bf16
    /// values, several parts stacked as torch.cat would) gives the matrix TryCreate makes from the transposed [K, N] copy:
    /// the same products bit for bit at every row count. Values bf16 cannot hold, and f16 rows among others, pack nothing.</summary>
    [Fact]
    public void FromRows_EqualsThePackedTranspose_AndRefusesWhatBf16CannotHold()
    {
        if (!NeedsAvx512())
        {
            return;
        }

        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator(77);
        Tensor rows = torch.randn([N, K], generator: gen).to(ScalarType.BFloat16);              // [out, in]
        Tensor top = rows.narrow(0, 0, 40).contiguous(), bottom = rows.narrow(0, 40, N - 40).to(ScalarType.Float32).contiguous();
        using PackedMatrix reference = PackedMatrix.TryCreate(rows.to(ScalarType.Float32).t().contiguous())!;
        using PackedMatrix fromBf16 = PackedMatrix.TryCreateFromRows(rows)!;
        using PackedMatrix mixed = PackedMatrix.TryCreateFromRows(top, bottom)!;
        Assert.Equal((K, N), (mixed.Inputs, mixed.Outputs));
        foreach (int r in new[] { 1, 2, 3, 4, 7 })
        {
            float[] x = Inputs(r, 100 + r), expected = Multiply(reference, x, r);
            Assert.Equal(expected, Multiply(fromBf16, x, r));
            Assert.Equal(expected, Multiply(mixed, x, r));
        }

        Tensor notBf16 = bottom.clone();
        notBf16[3, 5] = torch.tensor(1.0f + 1e-6f);
        Assert.Null(PackedMatrix.TryCreateFromRows(top, notBf16));

        // Rounding (a drafter's weights): f32 values pack as libtorch rounds them to bf16 (nearest, ties to even).
        Tensor f32 = torch.randn([N, K], generator: gen);
        f32[0, 0] = torch.tensor(BitConverter.Int32BitsToSingle(0x3F808000));   // a tie: 1.00390625 → 1.0 (even)
        f32[0, 1] = torch.tensor(BitConverter.Int32BitsToSingle(0x3F818000));   // a tie: → 1.015625 (even, upwards)
        using PackedMatrix rounded = PackedMatrix.TryCreateFromRows([f32], round: true)!;
        using PackedMatrix expectedRounding = PackedMatrix.TryCreateFromRows(f32.to(ScalarType.BFloat16))!;
        float[] xr = Inputs(3, 300);
        Assert.Equal(Multiply(expectedRounding, xr, 3), Multiply(rounded, xr, 3));
        Assert.Null(PackedMatrix.TryCreateFromRows([f32], round: false));
        Assert.Null(PackedMatrix.TryCreateFromRows(top, bottom.to(ScalarType.Float16)));
        Assert.Null(PackedMatrix.TryCreateFromRows(rows.t()));                                   // not contiguous
        Assert.Null(PackedMatrix.TryCreateFromRows(top, torch.zeros(3, K + 1, ScalarType.BFloat16)));   // inputs differ
    }

    /// <summary>f16 rows (a float16 checkpoint's) pack into an f16 matrix: every product is the documented f32 fused
    /// multiply-add chain over the f16 values widened exactly — bit for bit against a scalar reference, at every row count
    /// — whether the values keep a half's own exponent bias (they span more binades than any other bias holds: ±65504
    /// beside 6e-8, subnormals kept) or are stored with the bias that leaves none subnormal (a trained weight's range,
    /// with subnormal halves among them), and with signed zeros. f16 parts mixed with other dtypes, and infinities or
    /// NaNs, pack nothing.</summary>
    [Theory]
    [InlineData(true, 15)]     // extreme values: a half's own bias
    [InlineData(false, 25)]    // the smallest subnormal (2^-24) and values below 2^6: rebiased so that 2^-24 is normal
    public void F16Rows_PackExactly_AsTheFusedChainOverTheirValues(bool extremes, int expectedBias)
    {
        if (!NeedsAvx512())
        {
            return;
        }

        using var scope = torch.NewDisposeScope();
        Tensor f32 = torch.randn([N, K], generator: new torch.Generator(91)) * 0.05;
        float[] special = extremes
            ? [6e-8f, -6e-8f, 3e-5f, -1e-6f, 6.1035e-5f, -0f, 0f, 65504f, -65504f, 1e-4f, 2.5e-7f, -3.3e-6f]
            : [6e-8f, -6e-8f, 3e-5f, -1e-6f, 6.1035e-5f, -0f, 0f, 40f, -63.9f, 1e-4f, 2.5e-7f, -3.3e-6f];
        for (int i = 0; i < special.Length; i++)
        {
            f32[(i * 9) % N, (i * 7) % K] = torch.tensor(special[i]);   // spread over blocks, both halves of a block's words
            f32[(i * 9 + 17) % N, K - 1 - i] = torch.tensor(special[i]);
        }

        Tensor f16 = f32.to(ScalarType.Float16);
        float[] w = TorchTestHelpers.ToArray(f16.to(ScalarType.Float32));   // [N, K]: the f16 values, exactly
        Tensor top = f16.narrow(0, 0, 40).contiguous(), bottom = f16.narrow(0, 40, N - 40).contiguous();
        using PackedMatrix m = PackedMatrix.TryCreateFromRows(top, bottom)!;
        Assert.Equal((ScalarType.Float16, K, N, expectedBias), (m.Format, m.Inputs, m.Outputs, m.ExponentBias));
        using PackedMatrix own = PackedMatrix.TryCreateFromRows([top, bottom], round: false, rebias: false)!;
        Assert.Equal(15, own.ExponentBias);
        foreach (int r in new[] { 1, 2, 3, 4, 5, 7 })
        {
            float[] x = Inputs(r, 500 + r);
            var expected = new float[r * N];
            for (int i = 0; i < r; i++)
            {
                for (int n = 0; n < N; n++)
                {
                    float acc = 0f;
                    for (int k = 0; k < K; k++)
                    {
                        acc = MathF.FusedMultiplyAdd(w[n * K + k], x[i * K + k], acc);
                    }

                    expected[i * N + n] = acc;
                }
            }

            Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), Multiply(m, x, r).Select(BitConverter.SingleToInt32Bits));
            Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), Multiply(own, x, r).Select(BitConverter.SingleToInt32Bits));
        }

        Assert.Null(PackedMatrix.TryCreateFromRows(top, bottom.to(ScalarType.BFloat16)));   // f16 among bf16
        foreach (float bad in new[] { float.PositiveInfinity, float.NegativeInfinity, float.NaN })
        {
            Tensor broken = bottom.clone();
            broken[5, 9] = torch.tensor(bad).to(ScalarType.Float16);
            Assert.Null(PackedMatrix.TryCreateFromRows(top, broken));
        }
    }

    /// <summary>Every finite half, stored with another exponent bias, decodes to its own value (exactly), as the kernels
    /// read it: sign, 5-bit exponent e and fraction f mean 1.f · 2^(e − bias), or zero; and the bias packing chooses holds
    /// a weight's exponent range with no subnormal, or is a half's own where none can.</summary>
    [Fact]
    public void Rebias_KeepsEveryHalfsValue_AndTheChosenBiasHoldsTheRange()
    {
        foreach (int bias in new[] { 0, 10, 25, 40 })
        {
            for (int h = 0; h < 0x10000; h++)
            {
                int e = (h >> 10) & 0x1F, f = h & 0x3FF;
                if (e == 0x1F)
                {
                    continue;   // infinities and NaNs are never packed
                }

                int exponent = e != 0 ? e - 15 : f == 0 ? 0 : System.Numerics.BitOperations.Log2((uint)f) - 24;
                if ((e != 0 || f != 0) && (exponent + bias < 1 || exponent + bias > 31))
                {
                    continue;   // this bias cannot hold it (F16Bias never picks such a bias)
                }

                ushort r = PackedMatrix.Rebias((ushort)h, bias);
                int re = (r >> 10) & 0x1F, rf = r & 0x3FF;
                double value = re == 0 ? (rf == 0 ? 0 : double.NaN) : (1 + (rf / 1024.0)) * Math.Pow(2, re - bias);
                value = (r & 0x8000) != 0 ? -value : value;
                Assert.True(BitConverter.DoubleToInt64Bits(value) == BitConverter.DoubleToInt64Bits((double)BitConverter.UInt16BitsToHalf((ushort)h)),
                    $"bias {bias}: half 0x{h:X4} came back as {value}");
            }
        }

        Assert.Equal(15, PackedMatrix.F16Bias(-14, 15));    // no subnormal: a half's own bias
        Assert.Equal(25, PackedMatrix.F16Bias(-24, 5));     // the smallest subnormal becomes exponent 1
        Assert.Equal(15, PackedMatrix.F16Bias(-24, 15));    // 40 binades: none holds them all
        Assert.Equal(15, PackedMatrix.F16Bias(int.MaxValue, int.MinValue));   // all zero
        Assert.Equal(20, PackedMatrix.F16Bias(-19, 11));
    }
}

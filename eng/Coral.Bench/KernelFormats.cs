using System.Diagnostics;
using Coral.AI;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// <c>--kernel-formats [--rows 1,4] [--mb 512]</c>: the packed GEMM over the same weights (N(0, 0.02²), as a trained
/// model's) stored as bf16, as f16 with the exponent bias packing chooses (no subnormal value), and as f16 with its own
/// bias (its ≈ 0.2% subnormal halves kept): several matrices of Llama-3.2-1B's gate|up shape whose total exceeds the
/// last-level cache, as a decode step streams them. Interleaved repetitions, medians: all read the same bytes, so what
/// the f16 forms take beyond bf16 is their widening (seven operations for 32 values against two) and, for the last,
/// the microcode assists of multiplying subnormal floats. Q8_0 blocks (int8 levels, a scale per 32 inputs) read 56% of
/// bf16's bytes and take two widening operations per 16 values; Q4_0 (4-bit levels) 31%, and five per 32 values. Q8_0
/// and Q4_0 with int8 activations (AVX-VNNI, where the CPU has it) read the same bytes and multiply them without widening.
/// </summary>
internal static class KernelFormats
{
    public static unsafe void Run(int[] rowCounts, int megabytes)
    {
        const int K = 2048, N = 16384;   // gate|up of Llama-3.2-1B: 64 MiB of 16-bit values each
        int count = Math.Max(1, megabytes / (K * N * 2 >> 20));
        var bf16 = new PackedMatrix[count];
        var f16 = new PackedMatrix[count];
        var raw = new PackedMatrix[count];
        var q8 = new PackedMatrix[count];
        var q8i = new PackedMatrix[count];
        var q4 = new PackedMatrix[count];
        var q4i = new PackedMatrix[count];
        bool int8 = PackedMatrix.Int8Activations;
        using (var scope = torch.NewDisposeScope())
        {
            for (int i = 0; i < count; i++)
            {
                Tensor rows = torch.randn([N, K], generator: new Generator((ulong)i)) * 0.02;
                bf16[i] = PackedMatrix.TryCreateFromRows(rows.to(ScalarType.BFloat16).contiguous())
                    ?? throw new InvalidOperationException("This CPU packs nothing (AVX-512 needed).");
                f16[i] = PackedMatrix.TryCreateFromRows(rows.to(ScalarType.Float16).contiguous())!;
                raw[i] = PackedMatrix.TryCreateFromRows([rows.to(ScalarType.Float16).contiguous()], round: false, rebias: false)!;
                PackedMatrix.Int8Activations = false;
                q8[i] = PackedMatrix.TryQuantize(WeightQuantization.Q8_0, rows.to(ScalarType.BFloat16).contiguous())!;
                PackedMatrix.Int8Activations = PackedMatrix.Int8Supported;
                q8i[i] = PackedMatrix.TryQuantize(WeightQuantization.Q8_0, rows.to(ScalarType.BFloat16).contiguous())!;
                q4i[i] = PackedMatrix.TryQuantize(WeightQuantization.Q4_0, rows.to(ScalarType.BFloat16).contiguous())!;
                PackedMatrix.Int8Activations = false;
                q4[i] = PackedMatrix.TryQuantize(WeightQuantization.Q4_0, rows.to(ScalarType.BFloat16).contiguous())!;
                PackedMatrix.Int8Activations = int8;
            }
        }

        int maxRows = rowCounts.Max();
        float* x = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(maxRows * K * 4), 64);
        float* y = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(maxRows * N * 4), 64);
        var random = new Random(3);
        for (int i = 0; i < maxRows * K; i++)
        {
            x[i] = (float)(random.NextDouble() - 0.5);
        }

        Console.WriteLine($"{count} matrices [{K} x {N}] ({count * (long)K * N * 2 >> 20} MiB of 16-bit values per pass), threads {CpuParallel.Threads}; f16 exponent bias {f16[0].ExponentBias}; medians of 15 interleaved passes");
        Console.WriteLine($"q8_0 int8: {(q8i[0].UsesInt8Activations ? "int8 activations (AVX-VNNI)" : "not supported here: f32 activations again")}");
        Console.WriteLine("| rows | bf16 ms | f16 ms | f16, own bias ms | q8_0 ms | q8_0 int8 ms | q4_0 ms | q4_0 int8 ms | f16 / bf16 | f16 own bias / bf16 | q8_0 / bf16 | q8_0 int8 / bf16 | q4_0 / bf16 | q4_0 int8 / bf16 | bf16 GB/s | q8_0 int8 GB/s | q4_0 int8 GB/s |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (int rows in rowCounts)
        {
            PackedMatrix[][] forms = [bf16, f16, raw, q8, q8i, q4, q4i];
            var times = forms.Select(_ => new List<double>()).ToArray();
            for (int rep = 0; rep < 16; rep++)
            {
                for (int j = 0; j < forms.Length; j++)
                {
                    int form = (j + rep) % forms.Length;   // each form first in turn
                    var clock = Stopwatch.StartNew();
                    foreach (PackedMatrix m in forms[form])
                    {
                        m.Multiply(x, rows, y);
                    }

                    if (rep > 0)
                    {
                        times[form].Add(clock.Elapsed.TotalMilliseconds);
                    }
                }
            }

            double ma = Median(times[0]), mb = Median(times[1]), mc = Median(times[2]), md = Median(times[3]), mi = Median(times[4]), me = Median(times[5]), mj = Median(times[6]);
            Console.WriteLine($"| {rows} | {ma:F2} | {mb:F2} | {mc:F2} | {md:F2} | {mi:F2} | {me:F2} | {mj:F2} | {mb / ma:F2} | {mc / ma:F2} | {md / ma:F2} | {mi / ma:F2} | {me / ma:F2} | {mj / ma:F2} | {count * (double)K * N * 2 / (ma / 1000) / 1e9:F1} | {count * q8i[0].Bytes / (mi / 1000) / 1e9:F1} | {count * q4i[0].Bytes / (mj / 1000) / 1e9:F1} |");
        }

        Array.ForEach(bf16, m => m.Dispose());
        Array.ForEach(f16, m => m.Dispose());
        Array.ForEach(raw, m => m.Dispose());
        Array.ForEach(q8, m => m.Dispose());
        Array.ForEach(q8i, m => m.Dispose());
        Array.ForEach(q4, m => m.Dispose());
        Array.ForEach(q4i, m => m.Dispose());
    }

    private static double Median(List<double> v)
    {
        v.Sort();
        return v[v.Count / 2];
    }
}

using System.Diagnostics;
using System.Globalization;
using Coral.AI;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// <c>--profile &lt;hf-dir&gt;</c>: where a plain step and a tree verification spend their time on this CPU. After a
/// 128-token context, medians of repeated runs of: the decoder alone (1 and T rows, causal or tree mask), the LM head
/// (1 and T rows), the logits read back, and a whole plain step / verification, in f32 and bf16.
/// </summary>
internal static class CostProfile
{
    public static void Run(string model, int[] sizes)
    {
        foreach (ScalarType dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            using var engine = InferenceEngine.Load(model, torch.CPU, dtype, 512);
            TransformerModel m = engine.Model;
            int context = 128;
            long[] prefix = Enumerable.Range(0, context).Select(i => (long)(i * 7 % m.Config.VocabSize)).ToArray();
            using var inference = torch.inference_mode();
            using (torch.NewDisposeScope())
            {
                m.Forward(prefix, engine.Cache);
            }

            Console.WriteLine($"{dtype}: {m.Config.NumLayers} layers, d={m.Config.HiddenSize}, vocab {m.Config.VocabSize}, context {context}, threads {torch.get_num_threads()}");
            Console.WriteLine("| rows | decoder ms | per layer ms | head ms | read-back ms | whole step ms |");
            Console.WriteLine("| --- | --- | --- | --- | --- | --- |");
            var buffer = new float[sizes.Max() * m.Config.VocabSize];
            foreach (int t in sizes)
            {
                long[] ids = prefix.Take(t).ToArray();
                long[] positions = Enumerable.Range(context, t).Select(i => (long)i).ToArray();
                Tensor? mask = t == 1 ? null : torch.ones(t, t, ScalarType.Bool).tril();
                Tensor Decoder()
                {
                    engine.Cache.Length = context;
                    return m.Forward(ids, engine.Cache, positions, mask);
                }

                using Tensor hidden = Decoder().DetachFromDisposeScope();
                using Tensor logits = m.Logits(hidden).DetachFromDisposeScope();
                double decoder = Median(() => Decoder());
                double head = Median(() => m.Logits(hidden));
                double read = Median(() => Read(logits, buffer));
                double whole = Median(() => Read(m.Logits(Decoder()), buffer));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {t} | {decoder:F2} | {decoder / m.Config.NumLayers:F3} | {head:F2} | {read:F2} | {whole:F2} |"));
                mask?.Dispose();
            }

            Console.WriteLine();
        }
    }

    /// <summary>The parts of one layer at demo-like shapes (d, heads from the model), 1 and T rows: attention in the three
    /// forms the engine uses (f32 SDPA without a mask, f32 SDPA with a bool mask, f64 batch-invariant) and one fused
    /// gate/up Linear in f32 and bf16.</summary>
    public static void Parts(string model, int[] sizes)
    {
        using var engine = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 512);
        ModelConfig c = engine.Model.Config;
        int kv = c.NumKvHeads, group = c.NumHeads / c.NumKvHeads, context = 128;
        long hd = c.HeadDim;
        using var inference = torch.inference_mode();
        Console.WriteLine("| rows | SDPA f32 no mask | SDPA f32 bool mask | attention f64 masked | Linear f32 [d→2ff] | Linear bf16 [d→2ff] | RmsNorm |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- |");
        using Tensor w32 = torch.randn(2 * c.IntermediateSize, c.HiddenSize), w16 = w32.to(ScalarType.BFloat16), norm = torch.ones(c.HiddenSize);
        using Tensor head32 = torch.randn(c.VocabSize, c.HiddenSize), head32t = head32.t().contiguous();
        using Tensor head16 = head32.to(ScalarType.BFloat16), head16t = head16.t().contiguous();
        foreach (int t in sizes)
        {
            using Tensor h = torch.randn(t, c.HiddenSize), h16 = h.to(ScalarType.BFloat16);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  head rows {t}: f32 linear {Median(() => TorchSharp.torch.nn.functional.linear(h, head32)):F2} ms, f32 pre-transposed {Median(() => h.matmul(head32t)):F2} ms, bf16 linear {Median(() => TorchSharp.torch.nn.functional.linear(h16, head16)):F2} ms, bf16 pre-transposed {Median(() => h16.matmul(head16t)):F2} ms"));
        }

        foreach (int t in sizes)
        {
            int s = context + t;
            using Tensor q = torch.randn(1, kv, group * t, hd), k = torch.randn(1, kv, s, hd), v = torch.randn(1, kv, s, hd);
            using Tensor k64 = k.to(ScalarType.Float64), v64 = v.to(ScalarType.Float64);
            using Tensor mask = torch.ones(group * t, s, ScalarType.Bool).tril(context);
            using Tensor x = torch.randn(t, c.HiddenSize);
            double plain = Median(() => TorchSharp.torch.nn.functional.scaled_dot_product_attention(q, k, v));
            double masked = Median(() => TorchSharp.torch.nn.functional.scaled_dot_product_attention(q, k, v, mask));
            double f64 = Median(() => DecoderLayer.Attention(q, k64, v64, mask, 1.0 / Math.Sqrt(hd)));
            double l32 = Median(() => DecoderLayer.Linear(x, w32, null));
            double l16 = Median(() => DecoderLayer.Linear(x, w16, null));
            double rms = Median(() => DecoderLayer.RmsNorm(x, norm, 1e-5));
            using Tensor w16t = w16.t().contiguous(), w32t = w32.t().contiguous(), x16 = x.to(ScalarType.BFloat16);
            double mm16 = Median(() => x16.matmul(w16t));
            double lin16 = Median(() => TorchSharp.torch.nn.functional.linear(x16, w16));
            double mm32 = Median(() => x.matmul(w32t));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  rows {t}: bf16 linear (no casts) {lin16 * 1000:F0} µs, bf16 x·Wᵀ pre-transposed {mm16 * 1000:F0} µs, f32 x·Wᵀ pre-transposed {mm32 * 1000:F0} µs"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {t} | {plain * 1000:F0} µs | {masked * 1000:F0} µs | {f64 * 1000:F0} µs | {l32 * 1000:F0} µs | {l16 * 1000:F0} µs | {rms * 1000:F0} µs |"));
        }

        Console.WriteLine();
    }

    private static void Read(Tensor logits, float[] buffer) =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(logits.contiguous().bytes).CopyTo(buffer);

    private static double Median(Action action, int repeats = 31)
    {
        var times = new double[repeats];
        for (int i = -2; i < repeats; i++)
        {
            using var scope = torch.NewDisposeScope();
            long start = Stopwatch.GetTimestamp();
            action();
            if (i >= 0)
            {
                times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
        }

        Array.Sort(times);
        return times[repeats / 2];
    }
}

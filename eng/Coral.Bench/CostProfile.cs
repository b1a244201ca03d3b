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

    private static void Read(Tensor logits, float[] buffer) =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(logits.contiguous().bytes).CopyTo(buffer);

    private static double Median(Action action, int repeats = 15)
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

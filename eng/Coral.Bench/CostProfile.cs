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
    public static void Run(string model, int[] sizes, int[]? only = null)
    {
        // The engine forms, measured interleaved (one repetition of every form in turn) so that the machine's drift
        // spreads evenly over them: f32 on the CPU kernels with packed bf16-valued weights (plain, and speculative with a
        // bf16 head), the kernels with libtorch's GEMMs (CORAL_PACKED_WEIGHTS=0), the libtorch path (CORAL_CPU_KERNELS=0),
        // and bf16.
        var forms = new (string Name, ScalarType DType, bool Invariant, ScalarType? Head, bool Kernels, bool Packed)[]
        {
            ("f32, CPU kernels, packed weights (plain engine, the CPU default)", ScalarType.Float32, false, null, true, true),
            ("f32 + bf16 head, CPU kernels, packed weights (speculative, the CPU default)", ScalarType.Float32, true, ScalarType.BFloat16, true, true),
            ("f32, CPU kernels, libtorch GEMMs (plain)", ScalarType.Float32, false, null, true, false),
            ("f32 + bf16 head, CPU kernels, libtorch GEMMs (speculative)", ScalarType.Float32, true, ScalarType.BFloat16, true, false),
            ("f32, libtorch path, f32 SDPA (plain)", ScalarType.Float32, false, null, false, false),
            ("bf16, f64 attention (speculative)", ScalarType.BFloat16, true, null, true, false),
        };
        if (only is not null)
        {
            // A subset alone: six engines' weights (≈ 190 MB) crowd this CPU's cache, which slows every form's memory-bound
            // parts and hides what the compute-bound ones (extra rows) cost.
            forms = only.Select(i => forms[i]).ToArray();
        }

        int context = 128;
        var engines = forms.Select(f => InferenceEngine.Load(model, torch.CPU, f.DType, 512, headType: f.Head, cpuKernels: f.Kernels, packedWeights: f.Packed)).ToArray();
        var caches = engines.Select((e, i) => e.Model.CreateCache(512, forms[i].Invariant)).ToArray();
        try
        {
            ModelConfig c = engines[0].Model.Config;
            long[] prefix = Enumerable.Range(0, context).Select(i => (long)(i * 7 % c.VocabSize)).ToArray();
            using var inference = torch.inference_mode();
            for (int f = 0; f < forms.Length; f++)
            {
                using var scope = torch.NewDisposeScope();
                engines[f].Model.Forward(prefix, caches[f]);
            }

            Console.WriteLine($"{c.NumLayers} layers, d={c.HiddenSize}, vocab {c.VocabSize}, context {context}, threads {torch.get_num_threads()}; medians of 31 interleaved repetitions");
            Console.WriteLine("| form | rows | decoder ms | per layer ms | head ms | screened head ms | whole step ms |");
            Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- |");
            var buffer = new float[sizes.Max() * c.VocabSize];
            foreach (int t in sizes)
            {
                long[] ids = prefix.Take(t).ToArray();
                long[] positions = Enumerable.Range(context, t).Select(i => (long)i).ToArray();
                using Tensor? mask = t == 1 ? null : torch.ones(t, t, ScalarType.Bool).tril();
                var actions = new List<Action>();
                for (int f = 0; f < forms.Length; f++)
                {
                    TransformerModel m = engines[f].Model;
                    KvCache cache = caches[f];
                    Tensor Decoder()
                    {
                        cache.Length = context;
                        return m.Forward(ids, cache, positions, mask);
                    }

                    Tensor hidden = Decoder().DetachFromDisposeScope();
                    actions.Add(() => Decoder());
                    actions.Add(() => m.Logits(hidden));
                    var tokens = new int[t];
                    actions.Add(() => m.TryArgMax(hidden, tokens));   // the greedy tokens through the int8 screen (false without one)
                    actions.Add(() => Read(m.Logits(Decoder()), buffer));
                }

                double[] medians = Interleaved(actions);
                for (int f = 0; f < forms.Length; f++)
                {
                    double decoder = medians[4 * f], head = medians[(4 * f) + 1], screened = medians[(4 * f) + 2], whole = medians[(4 * f) + 3];
                    string screen = engines[f].Model.Screen is null ? "–" : screened.ToString("F2", CultureInfo.InvariantCulture);
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {forms[f].Name} | {t} | {decoder:F2} | {decoder / c.NumLayers:F3} | {head:F2} | {screen} | {whole:F2} |"));
                }
            }

            Console.WriteLine();
        }
        finally
        {
            foreach (IDisposable d in caches.Concat<IDisposable>(engines))
            {
                d.Dispose();
            }
        }
    }

    /// <summary>
    /// <c>--profile &lt;hf-dir&gt; --draft &lt;drafter&gt;</c>: one draft step (drafter forward, head, top-k) over 1 and
    /// <paramref name="rows"/>-node frontiers, routed and through the full head, with exact logits and with the int8
    /// screens' approximations (<see cref="DraftModel.ApproximateLogits"/>), interleaved: medians of 9 rounds of the
    /// engine's own measurement (each a median of 9 steps).
    /// </summary>
    public static void Draft(string model, string drafter, int rows)
    {
        using var engine = InferenceEngine.Load(model, torch.CPU, ScalarType.Float32, 512, draftFolder: drafter, headType: ScalarType.BFloat16);
        TorchDevices.YieldTorchThreads(engine.Model);   // as the engine's hosts do: libtorch's workers would hold the helpers' cores
        DraftModel draft = engine.Drafter!.Model;
        var forms = new List<(string Name, int Rows, int RouterTopK, bool Int8)>();
        foreach (int r in new[] { 1, rows }.Distinct())
        {
            foreach (int routerTopK in draft.Router is null ? new[] { 0 } : new[] { -1, 0 })
            {
                foreach (bool int8 in new[] { false, true })
                {
                    forms.Add(($"{r} row(s), {(routerTopK == 0 ? "full head" : "routed")}, {(int8 ? "int8 approximate" : "exact")}", r, routerTopK, int8));
                }
            }
        }

        var times = forms.Select(_ => new List<double>()).ToArray();
        for (int round = -6; round < 9; round++)
        {
            for (int f = 0; f < forms.Count; f++)
            {
                draft.ApproximateLogits = forms[f].Int8;
                double ms = engine.MeasureDraftStep(forms[f].Rows, forms[f].RouterTopK);
                if (round >= 0)
                {
                    times[f].Add(ms);   // the first rounds let the tiered JIT finish with the code these forms run
                }
            }
        }

        Console.WriteLine($"draft step ms (medians of 9 interleaved rounds), router int8 groups: {draft.Router?.HasInt8Groups}, target screen: {engine.Model.Screen is not null}");
        Console.WriteLine("| form | draft step ms |");
        Console.WriteLine("| --- | --- |");
        for (int f = 0; f < forms.Count; f++)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {forms[f].Name} | {times[f].Order().ElementAt(4):F3} |"));
        }

        Console.WriteLine();
    }

    /// <summary>Medians of <paramref name="repeats"/> rounds in which every action runs once, in turn.</summary>
    private static double[] Interleaved(IReadOnlyList<Action> actions, int repeats = 31)
    {
        var times = actions.Select(_ => new double[repeats]).ToArray();
        for (int i = -2; i < repeats; i++)
        {
            for (int a = 0; a < actions.Count; a++)
            {
                using var scope = torch.NewDisposeScope();
                long start = Stopwatch.GetTimestamp();
                actions[a]();
                if (i >= 0)
                {
                    times[a][i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                }
            }
        }

        return times.Select(t => t.Order().ElementAt(repeats / 2)).ToArray();
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

    /// <summary>
    /// Which GEMM forms give every row the same bits whatever the row count (1..<paramref name="maxRows"/>), at the
    /// model's projection shapes: the property tree verification needs to equal one-token steps exactly.
    /// </summary>
    public static void Invariance(string model, int maxRows)
    {
        ModelConfig c = ModelConfig.Load(Path.Combine(model, "config.json"));
        long d = c.HiddenSize, ff = c.IntermediateSize, qkv = (c.NumHeads + 2L * c.NumKvHeads) * c.HeadDim;
        using var inference = torch.inference_mode();
        Console.WriteLine($"| shape | dtype | F.linear [out, in] | x·W [in, out] |");
        Console.WriteLine("| --- | --- | --- | --- |");
        foreach ((long i, long o) in new[] { (d, qkv), (d, d), (d, 2 * ff), (ff, d), (d, (long)c.VocabSize) })
        {
            foreach (ScalarType dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var scope = torch.NewDisposeScope();
                torch.manual_seed(1);
                Tensor w = torch.randn(o, i).div(Math.Sqrt(i)).to(dtype), wt = w.t().contiguous(), x = torch.randn(maxRows, i).to(dtype);
                string First(Func<Tensor, Tensor> f)
                {
                    Tensor all = f(x);
                    var differ = Enumerable.Range(1, maxRows - 1).Where(m => !f(x.narrow(0, 0, m)).eq(all.narrow(0, 0, m)).all().item<bool>()).ToList();
                    return differ.Count == 0 ? "invariant" : $"{differ.Count} row counts differ from {maxRows}: {string.Join(",", differ.Take(8))}{(differ.Count > 8 ? ",…" : "")}";
                }

                Console.WriteLine($"| {i}→{o} | {dtype} | {First(r => TorchSharp.torch.nn.functional.linear(r, w))} | {First(r => r.matmul(wt))} |");
            }
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

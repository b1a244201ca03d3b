using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// A mixture-of-experts MLP (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, Granite-MoE): a router scores the experts per token, the
/// softmax's top k are chosen (their weights renormalised where configured), each chosen expert's SwiGLU runs on the token,
/// and the weighted outputs are added in expert order, as transformers adds them; Qwen2-MoE's shared expert runs on every
/// token after them, weighted by a sigmoid gate.
/// </summary>
/// <remarks>
/// Batch invariance (a verified tree's rows equal one-token steps bit for bit): routing is per row; the rows routed to
/// one expert are multiplied together, which on <see cref="PackedMatrix"/> gives each row the same bits at any row count
/// and on libtorch's f32 GEMMs in whole blocks of rows (each expert's routed rows padded to a multiple of four); each row adds its experts' outputs
/// in expert order whatever else the batch holds.
/// </remarks>
internal sealed unsafe class ExpertMlp : IDisposable
{
    private readonly Tensor _router;                     // [E, d] f32
    private readonly float* _routerP;
    private readonly PackedMatrix[]? _gateUpP, _downP;   // per expert, packed (the CPU kernel path)
    private readonly Tensor[]? _gateUp, _down;           // per expert, as DecoderLayer keeps projections (the libtorch path)
    private readonly int _experts, _k, _d, _ff, _sharedFf;   // _sharedFf: the shared expert's width (Qwen2-MoE), 0 for none
    private readonly Tensor? _sharedGate;                // [d] f32: the shared expert's sigmoid gate
    private readonly float* _sharedGateP;
    private Tensor? _router64, _sharedGate64;            // f64 copies for the libtorch path's routing, made on its first call
    private readonly bool _normalize;
    private float[] _scratch = [];                      // the kernel path's buffers: logits, chosen weights, gathered rows, gate|up, product, output

    /// <remarks>With a shared expert, the weight arrays hold it last (index <see cref="ModelConfig.NumExperts"/>).</remarks>
    private ExpertMlp(ModelConfig c, Tensor router, PackedMatrix[]? gateUpP, PackedMatrix[]? downP, Tensor[]? gateUp, Tensor[]? down, Tensor? sharedGate)
    {
        (_router, _gateUpP, _downP, _gateUp, _down, _sharedGate) = (router, gateUpP, downP, gateUp, down, sharedGate);
        (_experts, _k, _d, _ff, _normalize) = (c.NumExperts, c.ExpertsPerToken, c.HiddenSize, c.ExpertIntermediateSize, c.NormalizeTopK);
        _sharedFf = sharedGate is null ? 0 : c.SharedExpertIntermediateSize;
        _routerP = router.device_type == DeviceType.CPU ? CpuKernels.Pointer(router) : null;
        _sharedGateP = sharedGate is not null && sharedGate.device_type == DeviceType.CPU ? CpuKernels.Pointer(sharedGate) : null;
    }

    /// <summary>Gets whether the experts are packed (the CPU kernel path can run this block).</summary>
    public bool Packed => _gateUpP is not null;

    /// <summary>Gets the experts' packed projections (none when unpacked).</summary>
    internal IEnumerable<PackedMatrix> PackedWeights => (_gateUpP ?? []).Concat(_downP ?? []);

    /// <summary>Loads the router (<c>mlp.gate.weight</c>) and the experts (<c>mlp.experts.E.{gate,up,down}_proj.weight</c>;
    /// Mixtral's names: <see cref="ModelConfig.ExpertWeightName"/>) under <paramref name="prefix"/>: packed straight from the stored rows when <paramref name="pack"/> and every expert's
    /// values allow it (null otherwise: the caller then loads the layer for libtorch), else as <paramref name="project"/>
    /// lays a projection out in <paramref name="dtype"/>; <paramref name="quantization"/> (Q8_0, Q4_0) quantizes the
    /// experts (packed blocks, or their quantized values in f32).</summary>
    public static ExpertMlp? Load(CheckpointReader reader, string prefix, ModelConfig c, ScalarType dtype, Device device, bool pack, bool round,
        Func<Tensor, Tensor> project, WeightQuantization quantization = WeightQuantization.None)
    {
        long d = c.HiddenSize, ff = c.ExpertIntermediateSize;
        string E(int e, string name) => c.ExpertWeightName(prefix, e, name);
        var (stackedGateUp, stackedDown) = ModelConfig.StackedExpertNames(prefix);
        // Packing reads the stored 16-bit rows as they are (f32 ones as f32); libtorch takes the compute dtype.
        ScalarType Stored(string name) => reader.StoredType(name) is ScalarType.BFloat16 or ScalarType.Float16 ? reader.StoredType(name) : ScalarType.Float32;
        Tensor router = reader.Take(c.RouterName(prefix), [c.NumExperts, d], ScalarType.Float32, device);
        // Qwen2-MoE's shared expert, run on every token behind a sigmoid gate: loaded as one more expert, last.
        int shared = c.SharedExpertIntermediateSize > 0 ? 1 : 0;
        long fs = c.SharedExpertIntermediateSize;
        Tensor? sharedGate = null;
        if (shared == 1)
        {
            using Tensor row = reader.Take(ModelConfig.SharedExpertGateName(prefix), [1, d], ScalarType.Float32, device);
            sharedGate = row.reshape(d);
        }

        string S(string name) => ModelConfig.SharedExpertWeightName(prefix, name);
        // Granite-MoE's stacked experts, read once ([E, 2ff, d] and [E, d, ff]); an expert is then one slice of each. (A
        // model imported from GGUF names its experts one by one, as Mixtral's; a checkpoint that names neither is told
        // its stacked tensor is missing.)
        bool stacked = c.StackedExperts && !reader.Contains(E(0, "gate"));
        Tensor? gateUp3 = stacked ? reader.Take(stackedGateUp, [c.NumExperts, 2 * ff, d], pack ? Stored(stackedGateUp) : dtype, pack ? torch.CPU : device) : null;
        Tensor? down3 = stacked ? reader.Take(stackedDown, [c.NumExperts, d, ff], pack ? Stored(stackedDown) : dtype, pack ? torch.CPU : device) : null;
        try
        {
            // Expert e's gate|up parts and down rows (the caller's dispose scope owns them).
            (Tensor[] GateUp, Tensor Down) Expert(int e, Func<string, ScalarType> type, Device where) => e == c.NumExperts
                ? ([reader.Take(S("gate"), [fs, d], type(S("gate")), where), reader.Take(S("up"), [fs, d], type(S("up")), where)],
                    reader.Take(S("down"), [d, fs], type(S("down")), where))
                : stacked
                ? ([gateUp3!.select(0, e)], down3!.select(0, e))
                : ([reader.Take(E(e, "gate"), [ff, d], type(E(e, "gate")), where), reader.Take(E(e, "up"), [ff, d], type(E(e, "up")), where)],
                    reader.Take(E(e, "down"), [d, ff], type(E(e, "down")), where));
            // A GGUF file's Q4_K experts stay the file's blocks where Q8_0 would be made (as the dense projections do).
            PackedMatrix? Blocks(string[] names, long k) =>
                quantization == WeightQuantization.Q8_0 && !stacked && names.Select(reader.Q4Blocks).ToArray() is var b && b.All(x => x is not null)
                    ? PackedMatrix.TryFromBlocks([.. b.Select(x => x!.Value)], (int)k, null)
                    : null;
            if (pack)
            {
                var gateUp = new PackedMatrix?[c.NumExperts + shared];
                var down = new PackedMatrix?[c.NumExperts + shared];
                bool ok = true;
                for (int e = 0; e < c.NumExperts + shared && ok; e++)
                {
                    using var scope = torch.NewDisposeScope();
                    string Name(string kind) => e == c.NumExperts ? S(kind) : E(e, kind);
                    gateUp[e] = Blocks([Name("gate"), Name("up")], d);
                    down[e] = Blocks([Name("down")], e == c.NumExperts ? fs : ff);
                    if (gateUp[e] is null || down[e] is null)
                    {
                        var (parts, downRows) = Expert(e, Stored, torch.CPU);
                        gateUp[e] ??= PackedMatrix.TryPack(parts, round, quantization);
                        down[e] ??= PackedMatrix.TryPack([downRows], round, quantization);
                    }

                    ok = gateUp[e] is not null && down[e] is not null;
                }

                if (ok)
                {
                    return new ExpertMlp(c, router, gateUp!, down!, null, null, sharedGate);
                }

                Array.ForEach(gateUp, m => m?.Dispose());
                Array.ForEach(down, m => m?.Dispose());
                router.Dispose();
                sharedGate?.Dispose();
                return null;
            }

            var gu = new Tensor[c.NumExperts + shared];
            var dn = new Tensor[c.NumExperts + shared];
            for (int e = 0; e < c.NumExperts + shared; e++)
            {
                using var scope = torch.NewDisposeScope();
                var (parts, downRows) = Expert(e, _ => dtype, device);
                string expert = e == c.NumExperts ? "shared expert" : $"expert {e}";
                gu[e] = project(QuantBlocks.Apply(parts.Length == 1 ? parts[0] : torch.cat(parts), quantization, reader.Folder, $"{prefix}mlp ({expert}: gate|up)")).MoveToOuterDisposeScope();
                dn[e] = project(QuantBlocks.Apply(downRows, quantization, reader.Folder, $"{prefix}mlp ({expert}: down)")).MoveToOuterDisposeScope();
            }

            return new ExpertMlp(c, router, null, null, gu, dn, sharedGate);
        }
        finally
        {
            gateUp3?.Dispose();
            down3?.Dispose();
        }
    }

    /// <summary>The block on x [R, d] (f32) by libtorch: the routed rows of each expert in one GEMM (f32 experts' padded to
    /// whole blocks of rows), the weighted outputs added into the result in expert order.</summary>
    public Tensor Forward(Tensor x, Func<Tensor, Tensor, Tensor> project)
    {
        int rows = (int)x.shape[0];
        // Router logits through f64, rounded to f32: a row's bits then do not depend on how many rows share the GEMM (short
        // of an exact rounding tie), so routing is batch-invariant here too.
        _router64 ??= _router.to(ScalarType.Float64).DetachFromDisposeScope();   // kept past the step's dispose scope
        using Tensor x64 = x.to(ScalarType.Float64), logits = F.linear(x64, _router64).to(ScalarType.Float32).cpu();
        var (weights, chosen) = Route(logits);
        var (start, byExpert, byExpertWeights) = Bucket(chosen, weights);
        Tensor y = torch.zeros_like(x);
        for (int e = 0; e < _experts; e++)
        {
            int[] routed = byExpert[start[e]..start[e + 1]];
            float[] w = byExpertWeights[start[e]..start[e + 1]];
            if (routed.Length == 0)
            {
                continue;
            }

            // f32 experts run on libtorch's f32 GEMMs: the routed rows padded to whole blocks (TransformerModel.InvariantRows).
            int padded = _gateUp![e].dtype == ScalarType.Float32 ? TransformerModel.InvariantRows(routed.Length) : routed.Length;
            long[] index = [.. routed.Select(r => (long)r), .. Enumerable.Repeat((long)routed[^1], padded - routed.Length)];
            using var scope = torch.NewDisposeScope();
            Tensor out_ = Expert(x.index_select(0, torch.tensor(index, device: x.device)), e).narrow(0, 0, routed.Length);
            y.index_add_(0, torch.tensor(routed.Select(r => (long)r).ToArray(), device: x.device),
                out_ * torch.tensor(w, device: x.device).unsqueeze(1), 1);
        }

        if (_sharedGate is not null)
        {
            // Every row through the shared expert, weighted by sigmoid(x·g) (through f64 as the router), added last.
            using var scope = torch.NewDisposeScope();
            _sharedGate64 ??= _sharedGate.to(ScalarType.Float64).DetachFromDisposeScope();
            Tensor gate = x64.matmul(_sharedGate64).to(ScalarType.Float32).sigmoid().unsqueeze(1);
            y.add_(Expert(x, _experts) * gate);
        }

        return y;

        // Expert e's SwiGLU on rows xe, in f32.
        Tensor Expert(Tensor xe, int e)
        {
            Tensor gateUp = project(xe, _gateUp![e]);
            Tensor[] parts = (gateUp.dtype == ScalarType.Float32 ? gateUp : gateUp.to(ScalarType.Float32)).chunk(2, -1);
            Tensor down = project(F.silu(parts[0]) * parts[1], _down![e]);
            return down.dtype == ScalarType.Float32 ? down : down.to(ScalarType.Float32);
        }
    }

    /// <summary>The block on <paramref name="rows"/> rows of x [rows, d] into y [rows, d] (overwritten), on the packed experts.</summary>
    public void ForwardCpu(float* x, int rows, float* y)
    {
        int d = _d, ff = Math.Max(_ff, _sharedFf);
        long need = ((long)rows * _experts) + ((long)rows * d * 2) + ((long)rows * ff * 3);   // logits, gathered and output rows, gate|up and product
        if (_scratch.Length < need)
        {
            _scratch = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 2L * _scratch.Length), pinned: true);
        }

        float* logits = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_scratch));
        float* gathered = logits + ((long)rows * _experts), gateUp = gathered + ((long)rows * d), act = gateUp + (2L * rows * ff), output = act + ((long)rows * ff);
        for (int r = 0; r < rows; r++)
        {
            var row = new ReadOnlySpan<float>(x + ((long)r * d), d);
            for (int e = 0; e < _experts; e++)
            {
                logits[((long)r * _experts) + e] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(_routerP + ((long)e * d), d));
            }
        }

        var (weights, chosen) = Route(new ReadOnlySpan<float>(logits, rows * _experts), rows);
        var (start, byExpert, byExpertWeights) = Bucket(chosen, weights);
        new Span<float>(y, rows * d).Clear();
        for (int e = 0; e < _experts; e++)
        {
            int first = start[e], n = start[e + 1] - first;
            if (n == 0)
            {
                continue;
            }

            for (int i = 0; i < n; i++)
            {
                new ReadOnlySpan<float>(x + ((long)byExpert[first + i] * d), d).CopyTo(new Span<float>(gathered + ((long)i * d), d));
            }

            RunExpert(e, gathered, n, _ff, gateUp, act, output);
            for (int i = 0; i < n; i++)
            {
                var target = new Span<float>(y + ((long)byExpert[first + i] * d), d);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(output + ((long)i * d), d), byExpertWeights[first + i], target, target);
            }
        }

        if (_sharedGateP != null)
        {
            // Every row through the shared expert, weighted by sigmoid(x·g), added last.
            RunExpert(_experts, x, rows, _sharedFf, gateUp, act, output);
            for (int r = 0; r < rows; r++)
            {
                float g = 1f / (1f + MathF.Exp(-TensorPrimitives.Dot(new ReadOnlySpan<float>(x + ((long)r * d), d), new ReadOnlySpan<float>(_sharedGateP, d))));
                var target = new Span<float>(y + ((long)r * d), d);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(output + ((long)r * d), d), g, target, target);
            }
        }
    }

    /// <summary>Packed expert e's SwiGLU (width <paramref name="ff"/>) on <paramref name="n"/> rows of x into output, through
    /// the gate|up and product buffers.</summary>
    private void RunExpert(int e, float* x, int n, int ff, float* gateUp, float* act, float* output)
    {
        _gateUpP![e].Multiply(x, n, gateUp);
        CpuKernels.SiluMul(gateUp, act, n, ff);
        _downP![e].Multiply(act, n, output);
    }

    /// <summary>Each row's chosen experts and their weights from router logits [rows, E] (a CPU tensor).</summary>
    private (float[] Weights, int[] Chosen) Route(Tensor logits)
    {
        using Tensor contiguous = logits.to(ScalarType.Float32).contiguous();
        return Route(MemoryMarshal.Cast<byte, float>(contiguous.bytes), (int)logits.shape[0]);
    }

    /// <summary>Softmax over the experts in f32, the k largest (the lower index first on ties), renormalised to sum to one
    /// where configured.</summary>
    private (float[] Weights, int[] Chosen) Route(ReadOnlySpan<float> logits, int rows)
    {
        var weights = new float[rows * _k];
        var chosen = new int[rows * _k];
        var p = new float[_experts];
        for (int r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> l = logits.Slice(r * _experts, _experts);
            float max = TensorPrimitives.Max(l);
            TensorPrimitives.Subtract(l, max, p);
            TensorPrimitives.Exp(p, p);
            TensorPrimitives.Divide(p, TensorPrimitives.Sum(p), p);
            for (int j = 0; j < _k; j++)
            {
                int best = -1;
                for (int e = 0; e < _experts; e++)
                {
                    if (p[e] >= 0 && (best < 0 || p[e] > p[best]))
                    {
                        best = e;
                    }
                }

                (chosen[(r * _k) + j], weights[(r * _k) + j]) = (best, p[best]);
                p[best] = -1;   // taken
            }

            if (_normalize)
            {
                var w = weights.AsSpan(r * _k, _k);
                TensorPrimitives.Divide(w, TensorPrimitives.Sum(w), w);
            }
        }

        return (weights, chosen);
    }

    /// <summary>The routed rows grouped by expert, each group in row order (a counting sort): expert e's rows are
    /// <c>Rows[Start[e]..Start[e + 1]]</c>, their weights likewise.</summary>
    private (int[] Start, int[] Rows, float[] Weights) Bucket(int[] chosen, float[] weights)
    {
        var start = new int[_experts + 1];
        foreach (int e in chosen)
        {
            start[e + 1]++;
        }

        for (int e = 0; e < _experts; e++)
        {
            start[e + 1] += start[e];
        }

        int[] fill = (int[])start.Clone();
        var rows = new int[chosen.Length];
        var w = new float[chosen.Length];
        for (int i = 0; i < chosen.Length; i++)
        {
            int at = fill[chosen[i]]++;
            (rows[at], w[at]) = (i / _k, weights[i]);
        }

        return (start, rows, w);
    }

    public void Dispose()
    {
        _router.Dispose();
        _sharedGate?.Dispose();
        _router64?.Dispose();
        _sharedGate64?.Dispose();
        foreach (PackedMatrix m in (_gateUpP ?? []).Concat(_downP ?? []))
        {
            m.Dispose();
        }

        foreach (Tensor t in (_gateUp ?? []).Concat(_down ?? []))
        {
            t.Dispose();
        }
    }
}

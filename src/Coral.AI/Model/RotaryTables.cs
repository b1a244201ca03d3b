using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// Precomputed RoPE tables [maxPositions, hd] in the rotate_half convention, with rotate_half's sign folded into the sine
/// table so that RoPE is <c>x·cos + roll(x, hd/2)·sinSigned</c>; and the attention masks every forward builds.
/// </summary>
internal sealed unsafe class RotaryTables : IDisposable
{
    private readonly Tensor _cos;
    private readonly Tensor _sinSigned;
    private readonly float[]? _cosRows;        // on CPU the same tables on the pinned heap, for CpuKernels
    private readonly float[]? _sinSignedRows;

    public RotaryTables(ModelConfig c, int maxPositions, Device device, bool applyScaling = true)
    {
        int hd = c.HeadDim, half = hd / 2;
        double[] inv = InverseFrequencies(c, applyScaling);
        // LongRoPE: positions from the pretraining context on take the long factors (as vLLM builds its tables;
        // transformers switches every position to them once a sequence grows past that context).
        int longFrom = applyScaling && c.RopeScaling is { Kind: RopeScalingKind.LongRope } lr ? lr.OriginalMaxPositions : int.MaxValue;
        double[] beyond = longFrom < maxPositions ? InverseFrequencies(c, applyScaling, beyondOriginal: true) : inv;
        float scale = (float)AttentionFactor(c, applyScaling);
        bool cpu = device.type == DeviceType.CPU;
        float[] cos = GC.AllocateUninitializedArray<float>(maxPositions * hd, pinned: cpu);
        float[] sin = GC.AllocateUninitializedArray<float>(maxPositions * hd, pinned: cpu);
        for (int p = 0; p < maxPositions; p++)
        {
            for (int i = 0; i < half; i++)
            {
                // Pairs past the rotary dimensions (partial rotation: the loader put the passed-through dimensions
                // there, ModelConfig.RotaryOrder) keep their values: cos 1, sin 0.
                float angle = i < inv.Length ? (float)p * (float)(p < longFrom ? inv : beyond)[i] : 0f;
                float cv = i < inv.Length ? MathF.Cos(angle) * scale : 1f, sv = i < inv.Length ? MathF.Sin(angle) * scale : 0f;
                cos[p * hd + i] = cv;
                cos[p * hd + half + i] = cv;
                sin[p * hd + i] = -sv;
                sin[p * hd + half + i] = sv;
            }
        }

        _cos = OnDevice(torch.tensor(cos, [maxPositions, hd]), device);
        _sinSigned = OnDevice(torch.tensor(sin, [maxPositions, hd]), device);
        if (cpu)
        {
            (_cosRows, _sinSignedRows) = (cos, sin);
        }
        MaxPositions = maxPositions;
    }

    public int MaxPositions { get; }

    /// <summary>Gets the address of the pinned [maxPositions, hd] cosine table.</summary>
    public float* CosPointer => Address(_cosRows);

    /// <summary>Gets the address of the pinned [maxPositions, hd] signed sine table.</summary>
    public float* SinSignedPointer => Address(_sinSignedRows);

    /// <summary>The table on the device as one handle (<c>to(device)</c> returns a second handle even on the CPU).</summary>
    private static Tensor OnDevice(Tensor table, Device device)
    {
        if (device.type == DeviceType.CPU)
        {
            return table;
        }

        using (table)
        {
            return table.to(device);
        }
    }

    private static float* Address(float[]? pinned) => pinned is null
        ? throw new InvalidOperationException("The rotary tables are kept in host memory only for CPU models.")
        : (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));

    /// <summary>
    /// What the layers of one CPU-kernel forward share (<see cref="DecoderLayer.ForwardCpu"/>) for T new tokens after
    /// <paramref name="start"/> slots run as <paramref name="rows"/> rows (T, or T padded to whole f32 GEMM blocks): each
    /// row's position (its slot index, or the explicit one; rows past T repeat the first token's) and the [T, start + T]
    /// mask of <see cref="Mask"/> as an array.
    /// </summary>
    public CpuStep KernelStep(int start, int t, int rows, long[]? positions, Tensor? treeMask, int? slidingWindow)
    {
        var p = new int[rows];
        for (int r = 0; r < rows; r++)
        {
            long position = positions is null ? start + (r < t ? r : 0) : positions[r < t ? r : 0];
            p[r] = position < 0 || position >= MaxPositions
                ? throw new InvalidOperationException($"Position {position} is outside the rotary table (0..{MaxPositions - 1}).")
                : (int)position;
        }

        bool[]? mask = null;
        using (Tensor? m = Mask(t, start, 1, treeMask, positions, slidingWindow, torch.CPU))
        {
            if (m is not null)
            {
                using var values = m.data<bool>();
                mask = values.ToArray();
            }
        }

        return new CpuStep(rows, t, start, p, mask, this);
    }

    /// <summary>The RotaryDim/2 rotary inverse frequencies, with the configured scaling (linear, llama3, YaRN, LongRoPE) applied
    /// when asked; for LongRoPE those of positions within the pretraining context, or with <paramref name="beyondOriginal"/>
    /// those past it.</summary>
    public static double[] InverseFrequencies(ModelConfig c, bool applyScaling, bool beyondOriginal = false)
    {
        int hd = c.RotaryDim, half = hd / 2;   // over the rotated dimensions (all of the head unless partial)
        var inv = new double[half];
        for (int i = 0; i < half; i++)
        {
            inv[i] = (float)(1.0 / Math.Pow(c.RopeTheta, (2.0 * i) / hd));   // float32, as transformers computes it
        }

        if (!applyScaling || c.RopeScaling is not { } s)
        {
            return inv;
        }

        switch (s.Kind)
        {
            case RopeScalingKind.Linear:
                for (int i = 0; i < half; i++)
                {
                    inv[i] /= s.Factor;
                }

                break;
            case RopeScalingKind.Llama3:
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                for (int i = 0; i < half; i++)
                {
                    double wavelen = 2 * Math.PI / inv[i];
                    if (wavelen > lowWavelen)
                    {
                        inv[i] /= s.Factor;
                    }
                    else if (wavelen >= highWavelen)
                    {
                        double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                        inv[i] = (1 - smooth) * inv[i] / s.Factor + smooth * inv[i];
                    }
                }

                break;
            case RopeScalingKind.LongRope:
                IReadOnlyList<double> factors = beyondOriginal ? s.LongFactors : s.ShortFactors;
                for (int i = 0; i < half; i++)
                {
                    // 1 / (factor · base^(2i/hd)) in float32, as transformers computes it.
                    inv[i] = (float)(1.0 / ((float)factors[i] * (float)Math.Pow(c.RopeTheta, (2.0 * i) / hd)));
                }

                break;
            case RopeScalingKind.Yarn:
                // Dimensions that turn fewer than beta_slow times over the pretraining context are interpolated (the
                // frequency divided by the factor), more than beta_fast times extrapolated (kept), a linear ramp between.
                double Dimension(double rotations) =>
                    hd * Math.Log(s.OriginalMaxPositions / (rotations * 2 * Math.PI)) / (2 * Math.Log(c.RopeTheta));
                double low = Dimension(s.BetaFast), high = Dimension(s.BetaSlow);
                if (s.Truncate)
                {
                    (low, high) = (Math.Floor(low), Math.Ceiling(high));
                }

                (low, high) = (Math.Max(low, 0), Math.Min(high, hd - 1));
                if (low == high)
                {
                    high += 0.001;   // no division by zero
                }

                for (int i = 0; i < half; i++)
                {
                    double extrapolate = 1 - Math.Clamp((i - low) / (high - low), 0, 1);
                    inv[i] = (inv[i] / s.Factor * (1 - extrapolate)) + (inv[i] * extrapolate);
                }

                break;
        }

        return inv;
    }

    /// <summary>The factor on cos and sin (YaRN's attention factor; 1 for the other scalings or when not asked).</summary>
    public static double AttentionFactor(ModelConfig c, bool applyScaling) =>
        applyScaling && c.RopeScaling is { } s ? s.AttentionFactor : 1.0;

    /// <summary>Gets [T, 1, hd] cos and signed sin for positions start..start+T-1, or for explicit positions.</summary>
    public (Tensor Cos, Tensor SinSigned) At(int start, int t, long[]? positions)
    {
        if (positions is null)
        {
            if (start + t > MaxPositions)
            {
                throw new InvalidOperationException($"Position {start + t} exceeds the rotary table ({MaxPositions}).");
            }

            return (_cos.narrow(0, start, t).unsqueeze(1), _sinSigned.narrow(0, start, t).unsqueeze(1));
        }

        if (positions.Length > 0 && positions.Max() >= MaxPositions)
        {
            throw new InvalidOperationException($"Position {positions.Max()} exceeds the rotary table ({MaxPositions}).");
        }

        using Tensor pos = torch.tensor(positions, device: _cos.device);
        return (_cos.index_select(0, pos).unsqueeze(1), _sinSigned.index_select(0, pos).unsqueeze(1));
    }

    /// <summary>
    /// The [group·T, start+T] bool mask for T new tokens after <paramref name="start"/> cached slots: null for one token
    /// that sees everything; causal (and windowed) for a block; for a tree, <paramref name="treeMask"/> [T, M] (M ≥ T)
    /// covers the last M slots (the T new ones and the M − T cached before them) and every earlier slot is visible.
    /// </summary>
    public static Tensor? Mask(int t, int start, int group, Tensor? treeMask, long[]? positions, int? slidingWindow, Device device)
    {
        int total = start + t;
        Tensor mask;
        if (treeMask is not null)
        {
            long covered = treeMask.shape[1];
            mask = torch.cat([torch.ones([t, total - covered], ScalarType.Bool, device), treeMask.to(device)], 1);
            if (slidingWindow is int window && covered == t)
            {
                // Key j is visible to query i only while pos(i) - pos(j) < window; cached slots hold position = slot.
                Tensor q = positions is null ? torch.arange(start, total, device: device) : torch.tensor(positions, device: device);
                Tensor k = torch.cat([torch.arange(start, device: device), q]);
                mask = mask.logical_and((q.unsqueeze(1) - k.unsqueeze(0)).lt(window));
            }
        }
        else
        {
            bool windowed = slidingWindow is int w && total > w;
            if (t == 1 && !windowed)
            {
                return null;
            }

            mask = torch.ones([t, total], ScalarType.Bool, device).tril(start);
            if (windowed)
            {
                mask = mask.triu(start - slidingWindow!.Value + 1);
            }
        }

        return group == 1 ? mask : mask.repeat(group, 1);
    }

    /// <summary>A bool mask (true = attend) as an additive one of <paramref name="dtype"/>: 0 where it attends, −∞ elsewhere
    /// (what SDPA and <see cref="DecoderLayer.Attention"/> add to the scores).</summary>
    public static Tensor Additive(Tensor mask, ScalarType dtype) =>
        torch.zeros(mask.shape, dtype, mask.device).masked_fill_(mask.logical_not(), double.NegativeInfinity);

    public void Dispose()
    {
        _cos.Dispose();
        _sinSigned.Dispose();
    }
}

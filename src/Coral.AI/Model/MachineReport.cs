using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// What this machine offers the engine, for <c>coral info</c> without a model and for bug reports: the processor and its
/// instruction sets, which CPU paths are on (kernels, packed weights, int8 activations, the screened head), CUDA, and a
/// measured fact the exactness of speculation rests on — in how large blocks libtorch's f32 GEMM gives a row the same bits
/// at any row count (<see cref="TransformerModel.InvariantRows"/> pads to <see cref="TransformerModel.InvariantRowBlock"/>).
/// </summary>
internal static class MachineReport
{
    /// <summary>The report's lines: a label and a value each.</summary>
    public static IReadOnlyList<(string Label, string Value)> Lines()
    {
        int block = F32GemmRowBlock();
        return
        [
            ("runtime", $"{RuntimeInformation.FrameworkDescription}, {RuntimeInformation.RuntimeIdentifier}, {Environment.ProcessorCount} logical processors"),
            ("torchsharp", typeof(torch).Assembly.GetName().Version?.ToString() ?? "unknown"),
            ("cpu", CpuName()),
            ("isa", string.Join(", ", Features().Select(f => $"{f.Name} {(f.On ? "yes" : "no")}"))),
            ("cpu paths", $"kernels {OnOff(CpuKernels.Enabled)} (CORAL_CPU_KERNELS), packed weights {OnOff(PackedMatrix.Enabled)} (AVX-512; CORAL_PACKED_WEIGHTS), "
                + $"int8 activations {OnOff(PackedMatrix.Int8Supported)} (AVX-VNNI), screened head {OnOff(ScreenedHead.Enabled)}, {CpuParallel.Threads} kernel threads"),
            ("f32 gemm", block <= TransformerModel.InvariantRowBlock
                ? $"rows agree at any row count in blocks of {block} (Coral pads to {TransformerModel.InvariantRowBlock}: exact)"
                : $"rows agree only in blocks of {block}, more than Coral's {TransformerModel.InvariantRowBlock}: speculation on f32-stored weights may not be token-exact here"),
            ("cuda", torch.cuda.is_available() ? $"{torch.cuda.device_count()} device(s)" : "not available (no CUDA libtorch, or no NVIDIA driver)"),
        ];
    }

    /// <summary>
    /// The smallest block (1, 2, 4, 8, 16; 32 if none) such that an f32 GEMM's first t rows, run as t rounded up to whole
    /// blocks (the last row repeated), equal the same rows of a 40-row GEMM for every t from 1 to 20, at two shapes.
    /// </summary>
    public static int F32GemmRowBlock()
    {
        using var scope = torch.NewDisposeScope();
        var generator = new Generator(2);
        (int In, int Out)[] shapes = [(256, 768), (64, 192)];
        var inputs = shapes.Select(s => (W: torch.randn([s.In, s.Out], generator: generator), X: torch.randn([40, s.In], generator: generator))).ToArray();
        var references = inputs.Select(p => p.X.matmul(p.W)).ToArray();
        foreach (int block in new[] { 1, 2, 4, 8, 16 })
        {
            bool agree = true;
            for (int s = 0; s < inputs.Length && agree; s++)
            {
                var (w, x) = inputs[s];
                for (int t = 1; t <= 20 && agree; t++)
                {
                    int rows = (t + block - 1) / block * block;
                    Tensor padded = torch.cat([x.narrow(0, 0, t), x.narrow(0, t - 1, 1).expand(rows - t, -1)], 0);
                    agree = padded.matmul(w).narrow(0, 0, t).eq(references[s].narrow(0, 0, t)).all().item<bool>();
                }
            }

            if (agree)
            {
                return block;
            }
        }

        return 32;
    }

    private static string OnOff(bool on) => on ? "on" : "off";

    private static IEnumerable<(string Name, bool On)> Features()
    {
        yield return ("AVX2", Avx2.IsSupported);
        yield return ("FMA", Fma.IsSupported);
        yield return ("AVX-512F", Avx512F.IsSupported);
        yield return ("AVX-VNNI", AvxVnni.IsSupported);
        if (X86Base.IsSupported)
        {
            (_, _, _, int edx) = X86Base.CpuId(7, 0);
            (int eax1, _, _, _) = X86Base.CpuId(7, 1);
            yield return ("AVX-512 BF16", (eax1 & (1 << 5)) != 0);
            yield return ("AMX", (edx & (1 << 24)) != 0);
        }
    }

    private static string CpuName()
    {
        try
        {
            string? line = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal)) : null;
            return line is null ? RuntimeInformation.ProcessArchitecture.ToString() : line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException)
        {
            return RuntimeInformation.ProcessArchitecture.ToString();
        }
    }
}

using System.Runtime.Intrinsics.X86;

namespace Coral.AI.Training;

/// <summary>
/// Resolves a trainer's <c>--matmul</c> choice: <c>f32</c>, <c>bf16</c>, or <c>auto</c> — bf16 GEMMs where the CPU
/// has AMX tiles for them, f32 elsewhere.
/// </summary>
/// <remarks>Measured on two 2-vCPU Xeons of this project (the demo target's pretraining step, 16 × 256 tokens, same
/// weights and data): with AMX (amx_bf16 in the CPU flags) bf16 ran 2,560 tokens/s against ≈ 1,700 for f32; on a VM of
/// the same CPU family whose hypervisor hides AMX (avx512_bf16 only) bf16 ran 740 tokens/s against 1,000 for f32 —
/// oneDNN's avx512_bf16 kernels took 60% of the step, slower than MKL's f32 GEMM; the drafter trainer there ran
/// 397–413 tokens/s in bf16 against 485–555 in f32. So bf16 pays only with AMX.</remarks>
internal static class MatmulPrecision
{
    /// <summary>Whether <paramref name="choice"/> (<c>f32</c>, <c>bf16</c> or <c>auto</c>) means bf16 GEMMs here.</summary>
    /// <exception cref="ArgumentException">Another value.</exception>
    public static bool UseBf16(string choice) => choice switch
    {
        "f32" => false,
        "bf16" => true,
        "auto" => HasAmxBf16(),
        _ => throw new ArgumentException($"--matmul must be f32, bf16 or auto, not '{choice}'.", nameof(choice)),
    };

    /// <summary>Whether this CPU has AMX bf16 tiles that the OS lets programs use.</summary>
    /// <remarks>On Linux the kernel's flag list (it names amx_bf16 only when the CPU has it and the kernel enables
    /// the tile state); elsewhere CPUID leaf 7 EDX bits 22 (AMX-BF16) and 24 (AMX-TILE).</remarks>
    public static bool HasAmxBf16()
    {
        if (OperatingSystem.IsLinux())
        {
            try
            {
                return CpuInfoHasFlag(File.ReadAllText("/proc/cpuinfo"), "amx_bf16");
            }
            catch (IOException)
            {
                return false;
            }
            catch (UnauthorizedAccessException)
            {
                return false;
            }
        }

        if (!X86Base.IsSupported)
        {
            return false;
        }

        (_, _, _, int edx) = X86Base.CpuId(7, 0);
        return (edx & (1 << 22)) != 0 && (edx & (1 << 24)) != 0;
    }

    /// <summary>Whether the first <c>flags</c> line of a <c>/proc/cpuinfo</c> text lists <paramref name="flag"/> as a
    /// whole word (<c>avx512_bf16</c> is not <c>amx_bf16</c>).</summary>
    internal static bool CpuInfoHasFlag(string cpuinfo, string flag)
    {
        foreach (string line in cpuinfo.Split('\n'))
        {
            int colon = line.IndexOf(':');
            if (colon < 0 || line[..colon].Trim() != "flags")
            {
                continue;
            }

            return line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Contains(flag);
        }

        return false;
    }
}

using System.Runtime.InteropServices;

namespace Coral.AI.Training;

/// <summary>
/// Keeps freed native memory in the process heap for the next allocation, for training loops that allocate and free the
/// same large libtorch tensors every step.
/// </summary>
/// <remarks>glibc serves allocations over 32 MB with a fresh <c>mmap</c> and unmaps them when freed, so every step of a
/// trainer pays page faults and kernel page clearing for each large block again (the [2,048 × 50k] cross-entropy block,
/// activations, gradients): 26% of a pretraining step's samples were in the kernel (perf, demo shape). Turning mmap
/// off for allocations (<c>M_MMAP_MAX</c> = 0) and trimming off (<c>M_TRIM_THRESHOLD</c> = 2 GB) keeps the memory once
/// touched: a step measured 1.52–1.59 s against 1.77–1.79 s (interleaved runs of one probe). The price is that the
/// process keeps its peak memory until it exits, which suits a training command and not a server, so only the
/// training commands call it.</remarks>
internal static partial class NativeHeap
{
    private const int TrimThreshold = -1, MmapMax = -4;

    /// <summary>Applies the setting on Linux with glibc; returns whether it took effect (false elsewhere).</summary>
    public static bool KeepFreedMemory()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            return Mallopt(MmapMax, 0) == 1 && Mallopt(TrimThreshold, int.MaxValue) == 1;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;   // not glibc (musl has no mallopt)
        }
    }

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int parameter, int value);
}

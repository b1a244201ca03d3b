using System.Runtime.InteropServices;
using Coral.AI.Training;

namespace Coral.AI.Tests;

public class NativeHeapTests
{
    /// <summary>glibc's mallinfo2 (all size_t): hblks is the number of chunks allocated by mmap.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, OrdBlks, SmBlks, HBlks, HBlkHd, UsmBlks, FsmBlks, UordBlks, FordBlks, KeepCost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 Mallinfo2();

    [Fact]
    public unsafe void KeepFreedMemory_TakesEffectOnLinuxGlibc_LargeAllocationsComeFromTheHeap()
    {
        Assert.Equal(OperatingSystem.IsLinux(), NativeHeap.KeepFreedMemory());
        Assert.Equal(OperatingSystem.IsLinux(), NativeHeap.KeepFreedMemory());   // idempotent
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        // 40 MB is over glibc's largest mmap threshold (32 MB): by default it is always a fresh mmap (hblks + 1);
        // with the setting it comes from the heap, and stays there when freed.
        nuint mapped = Mallinfo2().HBlks;
        byte* block = (byte*)NativeMemory.Alloc(40u << 20);
        try
        {
            block[0] = 1;
            block[(40 << 20) - 1] = 2;
            Assert.Equal(mapped, Mallinfo2().HBlks);
        }
        finally
        {
            NativeMemory.Free(block);
        }

        using var big = TorchSharp.torch.ones(64L << 20, TorchSharp.torch.ScalarType.Int8);   // libtorch's allocations still work
        Assert.Equal(64L << 20, big.sum().item<long>());
    }
}

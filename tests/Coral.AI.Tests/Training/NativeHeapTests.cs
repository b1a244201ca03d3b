using Coral.AI.Training;

namespace Coral.AI.Tests;

public class NativeHeapTests
{
    [Fact]
    public void KeepFreedMemory_TakesEffectOnLinuxGlibc_AndLargeAllocationsStillWork()
    {
        Assert.Equal(OperatingSystem.IsLinux(), NativeHeap.KeepFreedMemory());
        Assert.Equal(OperatingSystem.IsLinux(), NativeHeap.KeepFreedMemory());   // idempotent
        using var big = TorchSharp.torch.ones(64L << 20, TorchSharp.torch.ScalarType.Int8);   // 64 MB: over glibc's mmap threshold
        Assert.Equal(64L << 20, big.sum().item<long>());
    }
}

using Coral.AI.Training;

namespace Coral.AI.Tests;

public class MatmulPrecisionTests
{
    // Abridged flag lines of the two CPUs this project trained on: the same Xeon family, once with AMX exposed and once
    // under a hypervisor that hides it (avx512_bf16 only; bf16 GEMMs were slower than f32 there).
    private const string WithAmx = """
        processor	: 0
        model name	: Intel(R) Xeon(R) Processor
        flags		: fpu avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
        vmx flags	: vnmi
        """;

    private const string WithoutAmx = """
        processor	: 0
        model name	: Intel(R) Xeon(R) Processor
        flags		: fpu avx2 avx512f avx_vnni avx512_bf16 avx512_vnni avx512_fp16
        vmx flags	: amx_bf16
        """;

    [Fact]
    public void CpuInfo_FlagIsAWholeWordOfTheFlagsLine()
    {
        Assert.True(MatmulPrecision.CpuInfoHasFlag(WithAmx, "amx_bf16"));
        Assert.False(MatmulPrecision.CpuInfoHasFlag(WithoutAmx, "amx_bf16"));   // avx512_bf16 is not amx_bf16; "vmx flags" is not "flags"
        Assert.True(MatmulPrecision.CpuInfoHasFlag(WithoutAmx, "avx512_bf16"));
        Assert.False(MatmulPrecision.CpuInfoHasFlag(WithoutAmx, "bf16"));
        Assert.False(MatmulPrecision.CpuInfoHasFlag("", "amx_bf16"));
    }

    [Fact]
    public void Choice_F32Bf16Auto_OthersRejectedNamingTheChoices()
    {
        Assert.False(MatmulPrecision.UseBf16("f32"));
        Assert.True(MatmulPrecision.UseBf16("bf16"));
        Assert.Equal(MatmulPrecision.HasAmxBf16(), MatmulPrecision.UseBf16("auto"));
        var ex = Assert.Throws<ArgumentException>(() => MatmulPrecision.UseBf16("fp8"));
        Assert.Contains("'fp8'", ex.Message);
        Assert.Contains("auto", ex.Message);
        if (OperatingSystem.IsLinux())
        {
            Assert.Equal(File.ReadAllText("/proc/cpuinfo").Split('\n').First(l => l.StartsWith("flags", StringComparison.Ordinal)).Split(' ').Contains("amx_bf16"),
                MatmulPrecision.HasAmxBf16());
        }
    }
}

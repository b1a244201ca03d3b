using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class TorchDevicesTests
{
    /// <summary>DType null ("auto"): float32 on CPU whatever the checkpoint (16-bit ones run packed with f32 arithmetic);
    /// on CUDA the checkpoint's own 16-bit dtype (an f16 Llama-2 is not rounded to bf16), else bf16; a requested dtype
    /// wins; f16 compute is refused on CPU.</summary>
    [Fact]
    public void AutoDType_IsF32OnCpu_AndTheCheckpointsOwn16BitTypeOnCuda()
    {
        Device cuda = new(DeviceType.CUDA, 0);
        Assert.Equal(ScalarType.Float32, TorchDevices.ResolveDType(null, torch.CPU, ScalarType.Float16));
        Assert.Equal(ScalarType.Float16, TorchDevices.ResolveDType(null, cuda, ScalarType.Float16));
        Assert.Equal(ScalarType.BFloat16, TorchDevices.ResolveDType("auto", cuda, ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, TorchDevices.ResolveDType(null, cuda, ScalarType.Float32));
        Assert.Equal(ScalarType.BFloat16, TorchDevices.ResolveDType(null, cuda));
        Assert.Equal(ScalarType.Float32, TorchDevices.ResolveDType("float32", cuda, ScalarType.Float16));
        Assert.Throws<ArgumentException>(() => TorchDevices.ResolveDType("float16", torch.CPU));
        Assert.Throws<ArgumentException>(() => TorchDevices.ResolveDType("float8", cuda));
    }

    /// <summary>The stored dtype is read from config.json (torch_dtype, or transformers 5's dtype); absent or unreadable
    /// is null.</summary>
    [Fact]
    public void StoredDType_IsReadFromTheConfig()
    {
        Assert.Equal(ScalarType.Float16, ModelConfig.StoredDType(Path.Combine(TransformerModelTests.ModelFor("qwen2-f16"), "config.json")));
        Assert.Equal(ScalarType.BFloat16, ModelConfig.StoredDType(Path.Combine(TransformerModelTests.ModelFor("qwen2-bf16"), "config.json")));
        Assert.Equal(ScalarType.Float32, ModelConfig.StoredDType(Path.Combine(TransformerModelTests.ModelFor("qwen2"), "config.json")));
        string folder = ModelZoo.TempFolder("dtype-v5");
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"dtype": "float16"}""");
        Assert.Equal(ScalarType.Float16, ModelConfig.StoredDType(Path.Combine(folder, "config.json")));
        Assert.Null(ModelConfig.StoredDType(Path.Combine(folder, "missing.json")));
    }
}

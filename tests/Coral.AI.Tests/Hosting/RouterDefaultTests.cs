using TorchSharp;
using Xunit;

namespace Coral.AI.Tests;

/// <summary>An unset RouterTopK: the router's own groups on CPU, the full LM head on a GPU (docs/gpu.md).</summary>
public sealed class RouterDefaultTests
{
    [Fact]
    public void DefaultRouterTopK_RoutesOnCpu_NotOnAGpu()
    {
        Assert.Equal(-1, CoralModelHost.DefaultRouterTopK(torch.CPU));
        Assert.Equal(0, CoralModelHost.DefaultRouterTopK(new torch.Device(DeviceType.CUDA, 0)));
        Assert.Equal(0, CoralModelHost.DefaultRouterTopK(new torch.Device(DeviceType.CUDA, 1)));
    }

    [Theory]
    [InlineData(null, -1)]   // unset on CPU: the checkpoint's router
    [InlineData(0, 0)]       // off
    [InlineData(3, 3)]       // as asked
    public async Task Host_TakesTheDefaultOrTheOption(int? option, int expected)
    {
        string target = TransformerModelTests.ModelFor("llama");
        string draft = DrafterZoo.Copy(target, "router-default", new DraftInitOptions { RouterGroups = 4, RouterTopK = 2, Seed = 4 });
        using var host = CoralModelHost.Load(new CoralChatClientOptions
        {
            ModelPath = target, DraftModelPath = draft, ContextLength = 128, RouterTopK = option, TreeTotalTokens = 8,
        });
        InferenceEngine engine = await host.GetEngineAsync(CancellationToken.None);
        Assert.Equal(expected, engine.Tree.RouterTopK);
    }
}

using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Coral.AI.Tests;

public class DependencyInjectionTests
{
    private static string Model => TransformerModelTests.ModelFor("qwen2");

    [Fact]
    public async Task AddCoralChatClient_ResolvesAWarmSharedClient_AndHealthTurnsHealthy()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddCoralChatClient(o => { o.ModelPath = Model; o.DType = "float32"; o.ContextLength = 128; }).UseFunctionInvocation();
        builder.Services.AddHealthChecks().AddCoral();
        using IHost host = builder.Build();
        await host.StartAsync();
        var client = host.Services.GetRequiredService<IChatClient>();
        Assert.NotNull(client.GetService<CoralChatClient>());
        var model = host.Services.GetRequiredService<CoralModelHost>();
        Assert.NotEqual(CoralModelState.NotStarted, model.State);
        await model.WaitUntilReadyAsync(default);
        var health = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, health.Status);
        var r = await client.GetResponseAsync("hello", new ChatOptions { MaxOutputTokens = 3 });
        Assert.Equal(3, r.Usage!.OutputTokenCount);
        await host.StopAsync();
    }

    [Fact]
    public async Task ConfigurationSection_BindsOptions()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Coral:ModelPath"] = Model,
            ["Coral:DType"] = "float32",
            ["Coral:ContextLength"] = "96",
            ["Coral:DefaultMaxOutputTokens"] = "2",
        });
        builder.Services.AddCoralChatClient(builder.Configuration.GetSection("Coral"));
        using IHost host = builder.Build();
        await host.StartAsync();
        var r = await host.Services.GetRequiredService<IChatClient>().GetResponseAsync("hi");
        Assert.Equal(2, r.Usage!.OutputTokenCount);
        Assert.Equal(96, host.Services.GetRequiredService<CoralModelHost>().Options.ContextLength);
        await host.StopAsync();
    }

    [Fact]
    public async Task InvalidOptions_FailAtStart_WithAClearMessage()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddCoralChatClient(o => o.ModelPath = "/no/such/model");
        using IHost host = builder.Build();
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains("/no/such/model", ex.Message);
        Assert.Contains("ModelPath", ex.Message);
    }

    [Theory]
    [InlineData("cuda:x", "Device")]
    [InlineData("cpu", "DType")]
    public async Task BadDeviceOrDType_FailAtStart(string device, string field)
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddCoralChatClient(o => { o.ModelPath = Model; o.Device = device; o.DType = field == "DType" ? "float16" : null; });
        using IHost host = builder.Build();
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains(field, ex.Message);
    }

    [Theory]
    [InlineData(float.NaN, null, null)]
    [InlineData(float.PositiveInfinity, null, null)]
    [InlineData(-0.5f, null, null)]
    [InlineData(null, 0f, null)]
    [InlineData(null, float.NaN, null)]
    [InlineData(null, null, -1)]
    public void BadSamplingDefaults_AreRefused(float? temperature, float? topP, int? topK)
    {
        string? error = CoralChatClientOptionsValidator.Check(new CoralChatClientOptions
        {
            ModelPath = Model, DefaultTemperature = temperature, DefaultTopP = topP, DefaultTopK = topK,
        });
        Assert.NotNull(error);
        Assert.Contains("DefaultTemperature must be a finite number", error);
    }

    [Fact]
    public async Task CudaWithoutBackend_FailsFast_NamingThePackage_AndHealthIsUnhealthy()
    {
        Assert.False(TorchSharp.torch.cuda.is_available(), "this test documents the CPU-only build");
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddCoralChatClient(o => { o.ModelPath = Model; o.Device = "cuda"; });
        builder.Services.AddHealthChecks().AddCoral();
        using IHost host = builder.Build();
        await host.StartAsync();
        var client = host.Services.GetRequiredService<IChatClient>();
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => client.GetResponseAsync("hi"));
        Assert.Contains("TorchSharp-cuda-linux", ex.Message);
        var health = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Unhealthy, health.Status);
        await host.StopAsync();
    }

    [Fact]
    public async Task KeyedClients_HaveTheirOwnHosts()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddKeyedCoralChatClient("a", o => { o.ModelPath = Model; o.ModelId = "model-a"; o.ContextLength = 64; });
        builder.Services.AddKeyedCoralChatClient("b", o => { o.ModelPath = TransformerModelTests.ModelFor("llama"); o.ModelId = "model-b"; o.ContextLength = 64; });
        using IHost host = builder.Build();
        await host.StartAsync();
        var a = host.Services.GetRequiredKeyedService<IChatClient>("a");
        var b = host.Services.GetRequiredKeyedService<IChatClient>("b");
        Assert.Equal("model-a", a.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.Equal("model-b", b.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.NotSame(host.Services.GetRequiredKeyedService<CoralModelHost>("a"), host.Services.GetRequiredKeyedService<CoralModelHost>("b"));
        Assert.Null(host.Services.GetService<IChatClient>());
        await host.StopAsync();
    }

    [Fact]
    public void NullArguments_Throw()
    {
        var services = new ServiceCollection();
        Assert.Throws<ArgumentNullException>(() => services.AddCoralChatClient((Action<CoralChatClientOptions>)null!));
        Assert.Throws<ArgumentNullException>(() => ((IServiceCollection)null!).AddCoralChatClient(o => { }));
        Assert.Throws<ArgumentException>(() => new CoralModelHost(new CoralChatClientOptions()));
    }
}

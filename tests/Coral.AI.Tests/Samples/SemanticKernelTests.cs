using System.ComponentModel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;

namespace Coral.AI.Tests;

public class SemanticKernelTests
{
    public sealed class Dictionary
    {
        public int Calls { get; private set; }

        [KernelFunction("define")]
        [Description("Looks up the definition of a word.")]
        public string Define([Description("the word")] string word)
        {
            Calls++;
            return $"{word}: a word in the dictionary.";
        }
    }

    private static Kernel BuildKernel(Dictionary plugin)
    {
        IKernelBuilder builder = Kernel.CreateBuilder();
        builder.AddCoralChatClient(o => { o.ModelPath = TransformerModelTests.ModelFor("qwen2"); o.ContextLength = 1024; o.DType = "float32"; });
        builder.Plugins.AddFromObject(plugin, "dictionary");
        return builder.Build();
    }

    [Fact]
    public async Task InvokePrompt_ReachesCoral_WithExecutionSettings()
    {
        Kernel kernel = BuildKernel(new Dictionary());
        var settings = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["temperature"] = 0, ["max_tokens"] = 6, ["speculative"] = false } };
        FunctionResult a = await kernel.InvokePromptAsync("What is a {{$word}}?", new KernelArguments(settings) { ["word"] = "whale" });
        FunctionResult b = await kernel.InvokePromptAsync("What is a {{$word}}?", new KernelArguments(settings) { ["word"] = "whale" });
        Assert.False(string.IsNullOrEmpty(a.ToString()));
        Assert.Equal(a.ToString(), b.ToString());   // temperature 0 flowed through
        Assert.NotNull(kernel.Services.GetRequiredService<IChatClient>().GetService<CoralChatClient>());
    }

    [Fact]
    public async Task EmbeddingGenerator_OnTheKernel_SharesTheChatModel()
    {
        IKernelBuilder builder = Kernel.CreateBuilder();
        builder.AddCoralChatClient(o => { o.ModelPath = TransformerModelTests.ModelFor("qwen2"); o.ContextLength = 256; o.DType = "float32"; }, "coral");
        builder.AddCoralEmbeddingGenerator("coral");
        Kernel kernel = builder.Build();
        var generator = kernel.Services.GetRequiredKeyedService<IEmbeddingGenerator<string, Embedding<float>>>("coral");
        Assert.Same(kernel.Services.GetRequiredKeyedService<CoralModelHost>("coral"), generator.GetService(typeof(CoralModelHost)));
        GeneratedEmbeddings<Embedding<float>> e = await generator.GenerateAsync(["whale", "coral"]);
        Assert.Equal(2, e.Count);
        Assert.All(e, v => Assert.Equal(1.0, Math.Sqrt(v.Vector.ToArray().Sum(x => (double)x * x)), 5));
    }

    [Fact]
    public async Task RequiredFunctionChoice_InvokesThePlugin()
    {
        var plugin = new Dictionary();
        Kernel kernel = BuildKernel(plugin);
        var settings = new PromptExecutionSettings
        {
            FunctionChoiceBehavior = FunctionChoiceBehavior.Required([kernel.Plugins["dictionary"]["define"]], autoInvoke: true),
            ExtensionData = new Dictionary<string, object> { ["temperature"] = 0, ["max_tokens"] = 300 },
        };
        await kernel.InvokePromptAsync("Define 'coral'.", new KernelArguments(settings));
        Assert.True(plugin.Calls >= 1);
    }
}

public class AgentSampleTests
{
    [Fact]
    public async Task NonInteractiveRun_PrintsThePluginCallAndTheAnswer()
    {
        var stdout = new StringWriter();
        int code = await Coral.Samples.Agent.AgentApp.RunAsync(
            ["--model", TransformerModelTests.ModelFor("qwen2"), "--prompt", "What does coral mean?", "--force-tool", "--max-tokens", "200"], stdout, TextReader.Null);
        Assert.Equal(0, code);
        string output = stdout.ToString();
        Assert.Contains("[plugin] define(word: ", output);
        Assert.Contains("[agent] ", output);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Loading keeps no tensor it does not own. TorchSharp returns a new handle even where an operation is a no-op
/// (<c>to(device)</c> on the same device, <c>to(dtype)</c> to the same dtype, <c>t()</c>): an intermediate handle that is
/// not disposed keeps its storage alive until the garbage collector finalizes it, which in a server may be never. Before
/// this was checked, a Llama-3.2-1B-shaped bf16 checkpoint (2.5 GB) held 16 GB of native memory after loading, 6 GB after
/// a forced collection. Every tensor a load creates is disposed by the time the engine is: the live count returns to where
/// it was.
/// </summary>
public class LoadMemoryTests
{
    /// <summary>Tensors this thread has created and not disposed (TorchSharp counts per thread: what other threads do —
    /// an earlier test's background work, the finalizer — cannot move it). Loading and generating run on the test's
    /// thread.</summary>
    private static long LiveTensors => DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;

    [Theory]
    [InlineData("llama", false)]                  // f32 weights: the kernel path's transposed f32 projections
    [InlineData("llama-tied-scaled-bf16", false)] // bf16-valued weights: packed layers and head, int8 screen
    [InlineData("qwen2-bf16", false)]             // biases; untied head
    [InlineData("qwen3-bf16", false)]             // q/k norms
    [InlineData("llama", true)]                   // with a drafter and its router (f32 groups)
    [InlineData("llama-tied-scaled-bf16", true)]  // a drafter with packed router groups and their int8 copies
    [InlineData("qwen2-f16", false)]              // f16 weights: packed in f16, an f16 head and table
    [InlineData("llama-tied-scaled-f16", true)]   // f16 router groups
    [InlineData("gemma3-bf16", false)]            // Gemma: sandwich norms, a second rotary table for the sliding layers
    [InlineData("gemma2", true)]                  // (f32 weights) with a drafter
    [InlineData("qwen3moe-bf16", false)]          // packed experts, the router
    [InlineData("granitemoe", false)]             // stacked experts sliced for libtorch (f32 weights)
    [InlineData("mixtral-bf16", true)]            // experts with a drafter
    [InlineData("qwen2moe-bf16", false)]          // a shared expert and its gate
    [InlineData("qwen2moe", false)]               // the same on libtorch (f32 weights)
    public void LoadingAndDisposing_LeavesNoTensorBehind(string arch, bool withDrafter)
    {
        string target = TransformerModelTests.ModelFor(arch);
        string? drafter = withDrafter ? DrafterZoo.Random(target, "load-memory-" + arch, new DraftInitOptions { Seed = 5, RouterGroups = 4 }) : null;
        long before = LiveTensors;
        using (InferenceEngine engine = drafter is null ? InferenceEngine.Load(target, CPU, ScalarType.Float32, 64) : DrafterZoo.Engine(target, drafter, 64))
        {
            Assert.True(LiveTensors > before);
        }

        Assert.Equal(before, LiveTensors);
    }

    /// <summary>Requests leave nothing behind either: after a first request has built what an engine keeps (caches, tuned
    /// shapes), further requests — greedy and sampled, speculative with a drafter, with prompt lookup — do not grow the
    /// live tensor count of this thread.</summary>
    [Theory]
    [InlineData("llama-tied-scaled-bf16", false)]
    [InlineData("llama", true)]
    [InlineData("llama-tied-scaled-bf16", true)]
    [InlineData("qwen3moe", false)]               // experts on libtorch: per-expert GEMMs in each step's scope
    public void Requests_LeaveNoTensorBehind(string arch, bool withDrafter)
    {
        string target = TransformerModelTests.ModelFor(arch);
        string? drafter = withDrafter ? DrafterZoo.Random(target, "request-memory-" + arch, new DraftInitOptions { Seed = 5, RouterGroups = 4 }) : null;
        using InferenceEngine engine = drafter is null ? InferenceEngine.Load(target, CPU, ScalarType.Float32, 128) : DrafterZoo.Engine(target, drafter, 128);
        int[] prompt = [5, 9, 14, 5, 9, 14, 5, 9];
        void Run(int seed)
        {
            GenerationResult greedy = engine.Generate(new GenerationRequest(prompt, SamplingParameters.Greedy, 12, []), null, CancellationToken.None);
            GenerationResult sampled = engine.Generate(new GenerationRequest(prompt, new SamplingParameters { Temperature = 1f, Seed = seed }, 12, []), null, CancellationToken.None);
            Assert.InRange(greedy.TokenIds.Count, 2, 12);    // the requests really decoded
            Assert.InRange(sampled.TokenIds.Count, 2, 12);
        }

        Run(1);
        long settled = LiveTensors;
        Run(2);
        Run(3);
        Assert.Equal(settled, LiveTensors);
    }
}

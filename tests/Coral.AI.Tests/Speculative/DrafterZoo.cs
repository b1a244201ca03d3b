using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>Drafters for the test targets: random ones (EAGLE layout) and a "copy" drafter that proposes repeating the
/// current token, which a tied-embedding random target accepts often (long accepted paths, compaction, stops mid-tree).</summary>
internal static class DrafterZoo
{
    public static string Random(string target, string name, DraftInitOptions? options = null)
    {
        string folder = ModelZoo.TempFolder("draft-" + name);
        DraftCheckpoint.CreateRandom(target, folder, options ?? new DraftInitOptions { Seed = 3 });
        return folder;
    }

    public static string Copy(string target, string name, DraftInitOptions? options = null)
    {
        string folder = Random(target, name, (options ?? new DraftInitOptions()) with { Scale = 0f, FcBias = false });
        string file = Path.Combine(folder, "model.safetensors");
        List<KeyValuePair<string, Tensor>> tensors;
        using (var reader = new CheckpointReader(folder))
        {
            tensors = reader.Names.Select(n => new KeyValuePair<string, Tensor>(n, reader.Take(n, reader.ShapeOf(n), ScalarType.Float32).clone())).ToList();
        }

        int i = tensors.FindIndex(kv => kv.Key == "fc.weight");
        long d = tensors[i].Value.shape[0];
        tensors[i] = new("fc.weight", torch.cat([torch.eye(d), torch.zeros(d, d)], 1));   // u = E(token)
        SafetensorsWriter.Write(file, tensors);
        return folder;
    }

    /// <summary>An engine with a drafter as the host builds it: f32 layers verify with a bf16 LM head on CPU.</summary>
    public static InferenceEngine Engine(string target, string drafter, int context = 512, ScalarType dtype = ScalarType.Float32,
        WeightQuantization quantization = WeightQuantization.None, ScalarType kvCacheType = ScalarType.Float32) =>
        InferenceEngine.Load(target, torch.CPU, dtype, context, draftFolder: drafter, headType: TorchDevices.ResolveHeadType(dtype, torch.CPU, speculative: true),
            quantization: quantization, kvCacheType: kvCacheType);
}

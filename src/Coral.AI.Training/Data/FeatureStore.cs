using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>One stored sequence: ids [T] (int64), hidden states [T, d] (bf16), loss mask [T] (uint8).</summary>
internal sealed record FeatureSequence(Tensor InputIds, Tensor HiddenState, Tensor LossMask);

/// <summary>Reads a folder written by <see cref="FeatureExtractor"/>, shard by shard.</summary>
internal static class FeatureStore
{
    public static IEnumerable<FeatureSequence> Read(string folder)
    {
        string manifestPath = Path.Combine(folder, FeatureExtractor.ManifestName);
        JsonObject manifest = ModelConfig.ReadJsonObject(manifestPath);
        foreach (JsonNode? shard in manifest["shards"] as JsonArray ?? throw new CoralModelException(manifestPath, "shards", "missing."))
        {
            string file = Path.Combine(folder, shard!["file"]!.GetValue<string>());
            int count = shard["sequences"]!.GetValue<int>();
            using var reader = SafetensorsFile.Open(file);
            for (int i = 0; i < count; i++)
            {
                Tensor Get(string name) => reader.Entries.ContainsKey($"{i}.{name}")
                    ? reader.Get($"{i}.{name}").clone()
                    : throw new CoralModelException(file, $"{i}.{name}", "missing from the shard.");
                yield return new FeatureSequence(Get("input_ids"), Get("hidden_state"), Get("loss_mask"));
            }
        }
    }
}

using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>One stored sequence: ids [T] (int64), hidden states [T, d] (bf16), loss mask [T] (uint8).</summary>
internal sealed record FeatureSequence(Tensor InputIds, Tensor HiddenState, Tensor LossMask);

/// <summary>Reads a folder written by <see cref="FeatureExtractor"/>, shard by shard.</summary>
internal static class FeatureStore
{
    /// <summary>
    /// Packs consecutive sequences end to end into sequences of at most <paramref name="maxTokens"/> tokens (a longer one
    /// stays alone), so that a training step sees hundreds of tokens instead of one short chat turn. At a seam the pair
    /// (last feature of one, first token of the next) is spurious, so the first token's mask is cleared there.
    /// </summary>
    public static List<FeatureSequence> Pack(IReadOnlyList<FeatureSequence> sequences, int maxTokens)
    {
        var packed = new List<FeatureSequence>();
        var group = new List<FeatureSequence>();
        long length = 0;
        void Flush()
        {
            if (group.Count == 1)
            {
                packed.Add(group[0]);
            }
            else if (group.Count > 1)
            {
                var masks = group.Select((g, i) =>
                {
                    Tensor m = g.LossMask.clone();
                    if (i > 0)
                    {
                        m[0] = 0;
                    }

                    return m;
                }).ToArray();
                packed.Add(new FeatureSequence(torch.cat(group.Select(g => g.InputIds).ToArray(), 0),
                    torch.cat(group.Select(g => g.HiddenState).ToArray(), 0), torch.cat(masks, 0)));
            }

            group.Clear();
            length = 0;
        }

        foreach (FeatureSequence s in sequences)
        {
            long t = s.InputIds.shape[0];
            if (length + t > maxTokens)
            {
                Flush();
            }

            group.Add(s);
            length += t;
        }

        Flush();
        return packed;
    }

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

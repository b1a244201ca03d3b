using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>
/// Runs the target once over the training data and stores, per sequence, the token ids, the target's final (post-norm)
/// hidden states in bf16 and the loss mask, in safetensors shards with a <c>manifest.json</c>. Resumable: a shard is
/// written whole and then recorded in the manifest, so a rerun continues after the last complete shard.
/// </summary>
internal static class FeatureExtractor
{
    public const string ManifestName = "manifest.json";

    /// <summary>
    /// The features folder for <paramref name="data"/>: <paramref name="data"/> itself when it is one (it has a manifest),
    /// else <paramref name="extractInto"/> after extracting the training data file there (resuming a partial run).
    /// </summary>
    public static string Ensure(InferenceEngine target, string data, string extractInto, int maxLength = 1024, TextWriter? progress = null)
    {
        if (File.Exists(Path.Combine(data, ManifestName)))
        {
            return data;
        }

        Run(target, data, extractInto, maxLength, progress: progress);
        return extractInto;
    }

    /// <summary>Extracts features; returns the number of sequences in the store.</summary>
    public static int Run(InferenceEngine target, string dataPath, string outFolder, int maxLength = 1024, int sequencesPerShard = 64,
        int? limit = null, TextWriter? progress = null, SamplingParameters? regenerate = null, int regenerateMaxTokens = 256)
    {
        Directory.CreateDirectory(outFolder);
        string manifestPath = Path.Combine(outFolder, ManifestName);
        JsonObject manifest = File.Exists(manifestPath)
            ? (JsonObject)JsonNode.Parse(File.ReadAllText(manifestPath))!
            : new JsonObject
            {
                ["format"] = "coral-features-v1",
                ["target_hidden_size"] = target.Model.Config.HiddenSize,
                ["target_vocab_size"] = target.Model.Config.VocabSize,
                ["max_length"] = maxLength,
                ["sequences_per_shard"] = sequencesPerShard,
                ["shards"] = new JsonArray(),
            };
        if (manifest["target_hidden_size"]!.GetValue<int>() != target.Model.Config.HiddenSize)
        {
            throw new InvalidDataException($"{manifestPath}: 'target_hidden_size' is {manifest["target_hidden_size"]} but the target has {target.Model.Config.HiddenSize}; use a new output folder.");
        }

        var shards = (JsonArray)manifest["shards"]!;
        int done = shards.Sum(s => s!["sequences"]!.GetValue<int>());
        Func<List<Microsoft.Extensions.AI.ChatMessage>, string>? reply = regenerate is null ? null : history =>
        {
            GenerationRequest request = ChatPromptFormatter.Render(target.Tokenizer.Config, history, null)
                .ToRequest(target.Tokenizer, regenerate, regenerateMaxTokens, null);
            target.ResetCache();
            return target.Generate(request, null, CancellationToken.None).Text;
        };
        List<TrainingExample> examples = TrainingDataReader.Read(dataPath, target.Tokenizer, maxLength, reply)
            .Take(limit ?? int.MaxValue).Skip(done).ToList();
        var clock = Stopwatch.StartNew();
        int tokens = 0;
        for (int first = 0; first < examples.Count; first += sequencesPerShard)
        {
            var batch = examples.Skip(first).Take(sequencesPerShard).ToList();
            string shardName = $"shard-{shards.Count:D5}.safetensors";
            using (var scope = torch.NewDisposeScope())
            {
                var tensors = new List<KeyValuePair<string, Tensor>>();
                for (int i = 0; i < batch.Count; i++)
                {
                    TrainingExample e = batch[i];
                    tensors.Add(new($"{i}.input_ids", torch.tensor(e.Ids.Select(x => (long)x).ToArray())));
                    tensors.Add(new($"{i}.hidden_state", Hidden(target, e.Ids).to(ScalarType.BFloat16)));
                    tensors.Add(new($"{i}.loss_mask", torch.tensor(e.LossMask)));
                    tokens += e.Ids.Length;
                }

                SafetensorsWriter.Write(Path.Combine(outFolder, shardName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            }

            shards.Add(new JsonObject
            {
                ["file"] = shardName,
                ["sequences"] = batch.Count,
                ["tokens"] = batch.Sum(b => b.Ids.Length),
                ["loss_tokens"] = batch.Sum(b => b.LossMask.Count(m => m != 0)),
            });
            File.WriteAllText(manifestPath, manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            int completed = Math.Min(first + batch.Count, examples.Count);
            double rate = tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            double eta = (examples.Count - completed) * (clock.Elapsed.TotalSeconds / completed);
            progress?.WriteLine($"[features] {done + completed}/{done + examples.Count} sequences, {rate:F0} tokens/s, ETA {TimeSpan.FromSeconds(eta):hh\\:mm\\:ss}");
        }

        return done + examples.Count;
    }

    /// <summary>The target's post-norm hidden states [T, d] for a sequence (prefilled in chunks, cache reset first).</summary>
    internal static Tensor Hidden(InferenceEngine target, int[] ids)
    {
        using var inference = torch.inference_mode();
        target.ResetCache();
        var parts = new List<Tensor>();
        for (int start = 0; start < ids.Length; start += target.PrefillChunk)
        {
            long[] chunk = ids.Skip(start).Take(target.PrefillChunk).Select(x => (long)x).ToArray();
            parts.Add(target.Model.Forward(chunk, target.Cache).clone());
        }

        target.ResetCache();
        return torch.cat(parts, 0);
    }
}

using System.Text;
using System.Text.Json.Nodes;
using Coral.AI.Training;

namespace Coral.AI.TestModels;

/// <summary>
/// Test tokenizers: a SentencePiece-style BPE (Metaspace + byte fallback) trained on a sample text. Byte-level BPE
/// tokenizers come from <see cref="ByteLevelTokenizer"/>.
/// </summary>
public static class TokenizerFactory
{
    /// <summary>
    /// Builds a Llama-2 style tokenizer.json: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, 256 byte tokens, then characters and
    /// <paramref name="mergeCount"/> merges learned from <paramref name="sample"/>; Prepend/Replace normalizer, byte fallback,
    /// BOS by TemplateProcessing.
    /// </summary>
    public static JsonObject SentencePiece(string sample, int mergeCount)
    {
        const char Space = '\u2581';
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++)
        {
            vocab[$"<0x{b:X2}>"] = 3 + b;
        }

        int next = 259;
        string normalized = Space + sample.Replace(' ', Space);
        foreach (char ch in normalized.Distinct().OrderBy(c => c))
        {
            if (!char.IsSurrogate(ch) && !vocab.ContainsKey(ch.ToString()))
            {
                vocab[ch.ToString()] = next++;
            }
        }

        // Learn merges over words (split before each '▁'), most frequent pair first, ties by text order.
        var words = new List<List<string>>();
        int start = 0;
        for (int i = 1; i <= normalized.Length; i++)
        {
            if (i == normalized.Length || normalized[i] == Space)
            {
                words.Add(normalized[start..i].Select(c => c.ToString()).ToList());
                start = i;
            }
        }

        var merges = new JsonArray();
        for (int m = 0; m < mergeCount; m++)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var w in words)
            {
                for (int i = 0; i + 1 < w.Count; i++)
                {
                    counts[(w[i], w[i + 1])] = counts.GetValueOrDefault((w[i], w[i + 1])) + 1;
                }
            }

            if (counts.Count == 0)
            {
                break;
            }

            var best = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1 + "\0" + kv.Key.Item2, StringComparer.Ordinal).First().Key;
            string merged = best.Item1 + best.Item2;
            if (!vocab.ContainsKey(merged))
            {
                vocab[merged] = next++;
            }

            merges.Add(new JsonArray(best.Item1, best.Item2));
            foreach (var w in words)
            {
                for (int i = 0; i + 1 < w.Count; i++)
                {
                    if (w[i] == best.Item1 && w[i + 1] == best.Item2)
                    {
                        w[i] = merged;
                        w.RemoveAt(i + 1);
                    }
                }
            }
        }

        return new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(ByteLevelTokenizer.AddedToken(0, "<unk>"), ByteLevelTokenizer.AddedToken(1, "<s>"), ByteLevelTokenizer.AddedToken(2, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = Space.ToString() },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = Space.ToString() }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = ByteLevelTokenizer.BosTemplate("<s>", 1),
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = Space.ToString() }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
    }

    internal static string Utf8(byte[] b) => Encoding.UTF8.GetString(b);
}

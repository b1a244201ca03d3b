using System.Text.Json.Nodes;

namespace Coral.AI.Tests;

/// <summary>
/// Byte-level tokenizers with the pre-tokenizers real models ship (SmolLM's digits, Mistral Nemo's tekken regex, GPT-4o's,
/// DeepSeek-V3's three splits, GPT-2's prefix space) and every split behaviour, on the test vocabulary: token ids checked
/// against Hugging Face tokenizers (the Rust library) reading the same tokenizer.json.
/// </summary>
public class PreTokenizerTests
{
    /// <summary>A vocabulary entry no merge reaches: with <c>ignore_merges</c> the word is that one token.</summary>
    private const string Unreachable = "Ġzqzqzq";

    private static readonly string[] Texts =
    [
        .. HfTokenizerTests.Samples,
        "CamelCaseWords like HTTPServer and iPhone, DON'T SHOUT; they'RE here.",
        "Numbers 1, 12, 123, 1234, 12345 and ４５ (full width), 3.14159 and 1/2/3\npaths a/b/c/\n\n",
        "日本語のテキストと中文混合 with English, ひらがな カタカナ",
        "Punctuation!!! ... ?! «quotes» — dashes – (brackets) [x] {y} <z> $5 +1 =2 ^3 |4 ~5 `6`",
        "the word zqzqzq alone, zqzqzqs and Zqzqzq",
        "   indented\n\tcode(x)  {  return x*2; }\r\n",
    ];

    public static TheoryData<string> Variants =>
    [
        "smollm", "gpt2-prefix-space", "tekken", "gpt-4o", "deepseek-v3", "digits-contiguous", "punctuation", "whitespace",
        "whitespace-split", "merged-with-previous", "merged-with-next", "contiguous", "removed", "inverted", "string-pattern",
        "llama3-ignore-merges",
    ];

    [Theory]
    [MemberData(nameof(Variants))]
    public void Encode_MatchesHuggingFaceTokenizers(string variant)
    {
        string folder = WriteVariant(variant, out bool ignoreMerges);
        var ours = HfTokenizer.Load(folder);
        using var oracle = new Tokenizers.DotNet.Tokenizer(Path.Combine(folder, "tokenizer.json"));
        foreach (string text in Texts)
        {
            int[] expected = [.. oracle.Encode(text).Select(x => (int)x)];
            List<int> actual = ours.Encode(text);
            Assert.True(expected.SequenceEqual(actual),
                $"{variant}: '{text}'\n expected [{string.Join(",", expected)}]\n actual   [{string.Join(",", actual)}]");
            bool changesText = variant is "whitespace" or "whitespace-split" or "removed" or "gpt2-prefix-space";
            if (!changesText && !text.Contains("<|", StringComparison.Ordinal) && !text.Contains("_of_turn>", StringComparison.Ordinal))
            {
                Assert.Equal(text, ours.Decode(actual));
            }
        }

        int pieces = ours.Encode(" zqzqzq", addSpecialTokens: false).Count;
        Assert.True(ignoreMerges ? pieces == 1 : pieces > 1, $"{pieces} tokens for ' zqzqzq'");
    }

    /// <summary>Added tokens' lstrip / rstrip (Phi-3's chat tokens take the newline after them) and single_word, as
    /// Hugging Face matches them.</summary>
    [Fact]
    public void AddedTokenFlags_MatchHuggingFaceTokenizers()
    {
        string folder = WriteVariant("llama3-ignore-merges", out _);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        JsonArray added = root["added_tokens"]!.AsArray();
        foreach (JsonNode? token in added)
        {
            string content = token!["content"]!.GetValue<string>();
            token["lstrip"] = content is "<|start_header_id|>" or "<|end_header_id|>";
            token["rstrip"] = content is "<|eot_id|>" or "<|end_header_id|>";
        }

        int next = added.Max(t => t!["id"]!.GetValue<int>()) + 1;
        added.Add(new JsonObject
        {
            ["id"] = next, ["content"] = "cat", ["single_word"] = true, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = false,
        });
        File.WriteAllText(path, root.ToJsonString());
        var ours = HfTokenizer.Load(folder);
        using var oracle = new Tokenizers.DotNet.Tokenizer(path);
        string[] texts =
        [
            "Hi <|start_header_id|>  user <|end_header_id|>\n\nhello<|eot_id|>   next",
            "a cat, concatenate, cat_x, cat9, (cat) and cat.",
            "cat", "  <|end_header_id|>  ", "<|eot_id|>\n<|eot_id|>\n", "x\t <|start_header_id|>", "<|start_header_id|><|end_header_id|>",
        ];
        foreach (string text in texts)
        {
            int[] expected = [.. oracle.Encode(text).Select(x => (int)x)];
            List<int> actual = ours.Encode(text);
            Assert.True(expected.SequenceEqual(actual), $"'{text}'\n expected [{string.Join(",", expected)}]\n actual   [{string.Join(",", actual)}]");
        }

        Assert.Single(ours.Encode("a cat b", addSpecialTokens: false), id => id == next);
    }

    public static TheoryData<string> Normalizers => ["nfc", "nfkc", "nfd-strip-accents-lowercase", "nfkd", "strip", "strip-left", "replace-regex", "replace-string", "prepend"];

    /// <summary>Normalizers (Qwen's NFC, compatibility forms, a BERT-like lowercase without accents, Strip, Replace,
    /// Prepend) on a byte-level tokenizer, against Hugging Face tokenizers.</summary>
    [Theory]
    [MemberData(nameof(Normalizers))]
    public void Normalizer_MatchesHuggingFaceTokenizers(string variant)
    {
        string folder = WriteVariant("llama3-ignore-merges", out _);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        static JsonObject Type(string type) => new() { ["type"] = type };
        root["normalizer"] = variant switch
        {
            "nfc" => Type("NFC"),
            "nfkc" => Type("NFKC"),
            "nfkd" => Type("NFKD"),
            "nfd-strip-accents-lowercase" => new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(Type("NFD"), Type("StripAccents"), Type("Lowercase")) },
            "strip" => new JsonObject { ["type"] = "Strip", ["strip_left"] = true, ["strip_right"] = true },
            "strip-left" => new JsonObject { ["type"] = "Strip", ["strip_left"] = true, ["strip_right"] = false },
            "replace-regex" => new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["Regex"] = @"\s+" }, ["content"] = " " },
            "replace-string" => new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "fox" }, ["content"] = "$1 cat" },
            "prepend" => new JsonObject { ["type"] = "Prepend", ["prepend"] = " " },
            _ => throw new ArgumentOutOfRangeException(nameof(variant)),
        };
        File.WriteAllText(path, root.ToJsonString());
        var ours = HfTokenizer.Load(folder);
        using var oracle = new Tokenizers.DotNet.Tokenizer(path);
        string[] texts =
        [
            .. Texts, "  The ﬁrst ﬂoor, ４５ Ｋｍ, ½ and ² — Cafe\u0301 vs Café, ÅNGSTRÖM, İstanbul  ", "The quick brown fox\t\t jumps  \n over", "   ",
            "<|eot_id|>  Hello <|eot_id|>",
        ];
        foreach (string text in texts)
        {
            int[] expected = [.. oracle.Encode(text).Select(x => (int)x)];
            List<int> actual = ours.Encode(text);
            Assert.True(expected.SequenceEqual(actual), $"{variant}: '{text}'\n expected [{string.Join(",", expected)}]\n actual   [{string.Join(",", actual)}]");
        }
    }

    [Theory]
    [InlineData("BertNormalizer")]
    [InlineData("Precompiled")]
    public void UnknownNormalizer_FailsNamingTheField(string type)
    {
        string folder = WriteVariant("smollm", out _);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "NFC" }, new JsonObject { ["type"] = type }) };
        File.WriteAllText(path, root.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => HfTokenizer.Load(folder));
        Assert.Contains("normalizer.type", ex.Message);
        Assert.Contains(type, ex.Message);
    }

    [Fact]
    public void UnknownPreTokenizer_FailsNamingTheField()
    {
        string folder = WriteVariant("smollm", out _);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["pre_tokenizer"] = new JsonObject { ["type"] = "UnicodeScripts" };
        File.WriteAllText(path, root.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => HfTokenizer.Load(folder));
        Assert.Contains("pre_tokenizer.type", ex.Message);
        Assert.Contains("UnicodeScripts", ex.Message);
    }

    /// <summary>The llama test tokenizer (GPT-2's vocabulary and merges) with <paramref name="variant"/>'s pre-tokenizer and
    /// one extra vocabulary entry that no merge builds.</summary>
    internal static string WriteVariant(string variant, out bool ignoreMerges)
    {
        string folder = ModelZoo.Copy(TransformerModelTests.ModelFor("llama"), "pretok-" + variant);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        JsonObject model = root["model"]!.AsObject();
        JsonObject vocab = model["vocab"]!.AsObject();
        // Dense ids as in real files (Hugging Face numbers added tokens from the vocabulary's size on): the new entry takes
        // the first added token's id and the added tokens move up by one.
        int size = vocab.Count;
        vocab[Unreachable] = size;
        foreach (JsonNode? added in root["added_tokens"]!.AsArray())
        {
            added!["id"] = added["id"]!.GetValue<int>() + 1;
        }

        foreach (var (_, special) in root["post_processor"]!["special_tokens"]!.AsObject())
        {
            special!["ids"] = new JsonArray([.. special["ids"]!.AsArray().Select(i => (JsonNode)(i!.GetValue<int>() + 1))]);
        }

        ignoreMerges = variant is "tekken" or "llama3-ignore-merges";
        model["ignore_merges"] = ignoreMerges;
        root["pre_tokenizer"] = PreTokenizer(variant);
        File.WriteAllText(path, root.ToJsonString());
        return folder;
    }

    private static JsonNode? PreTokenizer(string variant) => variant switch
    {
        "smollm" => Sequence(new JsonObject { ["type"] = "Digits", ["individual_digits"] = true }, ByteLevel(false, true)),
        "gpt2-prefix-space" => ByteLevel(true, true),
        "tekken" => Sequence(Split(@"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"), ByteLevel(false, false)),
        "gpt-4o" => Sequence(Split(@"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"), ByteLevel(false, false)),
        "deepseek-v3" => Sequence(
            Split(@"\p{N}{1,3}"), Split("[一-龥\u3040-ゟ゠-ヿ]+"),
            Split(@"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            ByteLevel(false, false)),
        "digits-contiguous" => Sequence(new JsonObject { ["type"] = "Digits", ["individual_digits"] = false }, ByteLevel(false, true)),
        "punctuation" => Sequence(new JsonObject { ["type"] = "Punctuation", ["behavior"] = "Isolated" }, ByteLevel(false, true)),
        "whitespace" => Sequence(new JsonObject { ["type"] = "Whitespace" }, ByteLevel(false, false)),
        "whitespace-split" => Sequence(new JsonObject { ["type"] = "WhitespaceSplit" }, ByteLevel(false, false)),
        "merged-with-previous" => Sequence(Split(@"\p{N}+|[.,;]", "MergedWithPrevious"), ByteLevel(false, false)),
        "merged-with-next" => Sequence(Split(" ", "MergedWithNext", literal: true), ByteLevel(false, false)),
        "contiguous" => Sequence(Split("[aeiou]", "Contiguous"), ByteLevel(false, false)),
        "removed" => Sequence(Split(@"\s", "Removed"), ByteLevel(false, false)),
        "inverted" => Sequence(Split(@"\p{L}+", "Isolated", invert: true), ByteLevel(false, true)),
        "string-pattern" => Sequence(Split("(.)", "Isolated", literal: true), ByteLevel(false, true)),
        "llama3-ignore-merges" => Sequence(Split(GgufPreTokenizers.Llama3), ByteLevel(false, false)),
        _ => throw new ArgumentOutOfRangeException(nameof(variant)),
    };

    private static JsonObject Sequence(params JsonNode[] steps) => new() { ["type"] = "Sequence", ["pretokenizers"] = new JsonArray(steps) };

    private static JsonObject ByteLevel(bool prefixSpace, bool useRegex) => new()
    {
        ["type"] = "ByteLevel", ["add_prefix_space"] = prefixSpace, ["trim_offsets"] = true, ["use_regex"] = useRegex,
    };

    private static JsonObject Split(string pattern, string behavior = "Isolated", bool invert = false, bool literal = false) => new()
    {
        ["type"] = "Split", ["pattern"] = new JsonObject { [literal ? "String" : "Regex"] = pattern }, ["behavior"] = behavior, ["invert"] = invert,
    };
}

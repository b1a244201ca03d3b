using System.Text;

namespace Coral.AI.Tests;

/// <summary>Token ids checked against Hugging Face tokenizers (the Rust library, via Tokenizers.DotNet) as the oracle.</summary>
public class HfTokenizerTests
{
    public static readonly string[] Samples =
    [
        "Hello world",
        " leading space and trailing space ",
        "I'm sure they've been there; we'll see, won't we? It's 2024-07-26 and 1234567 apples.",
        "Tabs\tand\nnewlines\r\n\r\nand   multiple    spaces",
        "Ünïcödé: naïve café, Straße, 東京タワー, 안녕하세요",
        "Emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧 sequences",
        "Code: for (int i = 0; i < n; i++) { x += a[i] * 2; }",
        "Special <|begin_of_text|> inside <|eot_id|> text <|im_end|>",
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
        "",
        "a",
    ];

    /// <summary>Whether a sample has no special-token text (special tokens decode to nothing).</summary>
    private static bool Plain(string s) => !s.Contains("<|", StringComparison.Ordinal) && !s.Contains("_of_turn>", StringComparison.Ordinal);

    public static TheoryData<string> Models => ["llama", "qwen2", "mistral", "sentencepiece", "gemma3-sentencepiece"];

    [Theory]
    [MemberData(nameof(Models))]
    public void Encode_MatchesHuggingFaceTokenizers(string name)
    {
        string folder = TransformerModelTests.ModelFor(name);
        var ours = HfTokenizer.Load(folder);
        using var oracle = new Tokenizers.DotNet.Tokenizer(Path.Combine(folder, "tokenizer.json"));
        foreach (string s in Samples)
        {
            uint[] expected = oracle.Encode(s);
            List<int> actual = ours.Encode(s);
            Assert.True(expected.Select(x => (int)x).SequenceEqual(actual),
                $"{name}: '{s}'\n expected [{string.Join(",", expected)}]\n actual   [{string.Join(",", actual)}]");
        }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Decode_RoundTripsText(string name)
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor(name));
        foreach (string s in Samples.Where(Plain))
        {
            string expected = tok.IsByteLevel ? s : s; // SentencePiece strips the prepended space again
            Assert.Equal(expected.Normalize(NormalizationForm.FormC), tok.Decode(tok.Encode(s, addSpecialTokens: false)).Normalize(NormalizationForm.FormC));
        }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void StreamingDetokenizer_EmitsOnlyCompleteUtf8_AndConcatenatesToDecode(string name)
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor(name));
        foreach (string s in Samples.Where(Plain))
        {
            List<int> ids = tok.Encode(s, addSpecialTokens: false);
            var detok = new StreamingDetokenizer(tok);
            var sb = new StringBuilder();
            foreach (int id in ids)
            {
                string piece = detok.Push(id);
                Assert.DoesNotContain('\uFFFD', piece);
                sb.Append(piece);
            }

            sb.Append(detok.Flush());
            Assert.Equal(tok.Decode(ids), sb.ToString());
        }
    }

    [Fact]
    public void Emoji_SplitOverByteTokens_IsHeldBackUntilComplete()
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor("llama"));
        List<int> ids = tok.Encode("🙂", addSpecialTokens: false);
        Assert.True(ids.Count > 1, "the small vocabulary should split the emoji into byte tokens");
        var detok = new StreamingDetokenizer(tok);
        var pieces = ids.Select(detok.Push).ToList();
        Assert.All(pieces.Take(pieces.Count - 1), p => Assert.Equal(string.Empty, p));
        Assert.Equal("🙂", pieces[^1]);
    }

    [Fact]
    public void Bos_FollowsThePostProcessor()
    {
        var llama = HfTokenizer.Load(TransformerModelTests.ModelFor("llama"));
        Assert.Equal(llama.BosTokenId, llama.Encode("hi")[0]);
        Assert.NotEqual(llama.BosTokenId, llama.Encode("hi", addSpecialTokens: false)[0]);
        var qwen = HfTokenizer.Load(TransformerModelTests.ModelFor("qwen2"));
        Assert.Equal(qwen.Encode("hi", addSpecialTokens: false), qwen.Encode("hi"));
    }

    /// <summary>
    /// A SentencePiece tokenizer without a pre-tokenizer (Llama-2's and Gemma's layout) merges over whole prompt segments:
    /// on long text with many merges the ids still equal Hugging Face's, and the heap-ordered merge finishes a 40,000-character
    /// segment in well under a second (the rescan of every pair after each merge took minutes).
    /// </summary>
    [Fact]
    public void SentencePiece_LongSegmentsWithManyMerges_MatchHuggingFace()
    {
        string[] words = ["river", "stone", "light", "water", "garden", "silver", "market", "bridge", "forest", "window", "the", "a", "of",
            "and", "quietly", "running", "beneath", "mountains", "speculative", "decoding", "tokens", "verified", "ünïcödé", "東京", "aaa", "aaaaa", "baaab"];
        var random = new Random(5);
        string Text(int n) => string.Join(" ", Enumerable.Range(0, n).Select(_ => words[random.Next(words.Length)]))
            + (random.Next(3) == 0 ? "  double  spaces " : ".");
        string folder = ModelZoo.TempFolder("sentencepiece-many-merges");
        System.Text.Json.Nodes.JsonObject json = Coral.AI.TestModels.TokenizerFactory.SentencePiece(Text(1500), 600);
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), json.ToJsonString());
        var ours = HfTokenizer.Load(folder);
        using var oracle = new Tokenizers.DotNet.Tokenizer(Path.Combine(folder, "tokenizer.json"));
        foreach (string text in new[] { Text(20), Text(300), Text(6000) })
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            List<int> actual = ours.Encode(text);
            watch.Stop();
            uint[] expected = oracle.Encode(text);
            Assert.True(expected.Select(x => (int)x).SequenceEqual(actual), $"{text.Length} characters: the ids differ from Hugging Face's");
            Console.WriteLine($"{text.Length} characters -> {actual.Count} tokens in {watch.Elapsed.TotalMilliseconds:F1} ms");
        }
    }

    /// <summary>Special tokens stream as nothing, except the markers a tool-call or reasoning parser needs to see
    /// (Granite's <c>&lt;|tool_call|&gt;</c> among them).</summary>
    [Fact]
    public void StreamingDetokenizer_KeepsToolCallMarkers_DropsOtherSpecialTokens()
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor("granite"));
        int role = Assert.Single(tok.Encode("<|start_of_role|>", addSpecialTokens: false)), call = Assert.Single(tok.Encode("<|tool_call|>", addSpecialTokens: false));
        Assert.True(tok.IsSpecial(role) && tok.IsSpecial(call));
        var detok = new StreamingDetokenizer(tok);
        Assert.Equal("<|tool_call|>", detok.Push(role) + detok.Push(call) + detok.Flush());
    }
}

using System.Text.Json.Nodes;

namespace Coral.AI.Tests;

/// <summary>
/// Every <c>tokenizer.ggml.pre</c> name Coral reads: a byte-level test tokenizer with that pre-tokenizer goes to GGUF under
/// the name, and llama.cpp (reading the file), Coral (importing it), Coral on the folder and Hugging Face tokenizers (on
/// the folder's tokenizer.json) split every text into the same ids — with <c>ignore_merges</c> where llama.cpp sets it
/// (a vocabulary word no merge builds is then one token).
/// </summary>
public class GgufPreTokenizerTests
{
    /// <summary>A word in the vocabulary that no merge builds.</summary>
    private const string Unreachable = "Ġzqzqzq";

    /// <summary>Contractions, case changes, digit runs, CJK, punctuation runs, whitespace runs, special tokens, accents.
    /// (llama.cpp approximates some Unicode classes — tekken's and GPT-4o's upper/lower-case letters outside ASCII — and
    /// Coral keeps the models' own regexes; on this vocabulary the accented words still tokenize alike.)</summary>
    private static readonly string[] Texts =
    [
        "Hello world", " leading space and trailing space ",
        "I'm sure they've been there; we'll see, won't we? It's 2024-07-26 and 1234567 apples.",
        "Tabs\tand\nnewlines\r\n\r\nand   multiple    spaces",
        "CamelCaseWords like HTTPServer and iPhone, DON'T SHOUT; they'RE here.",
        "Numbers 1, 12, 123, 1234, 12345, 3.14159 and 1/2/3\npaths a/b/c/\n\n",
        "東京タワー and 中文混合 with English, ひらがな カタカナ",
        "Punctuation!!! ... ?! (brackets) [x] {y} <z> $5 +1 =2 ^3 |4 ~5 `6`",
        "the word zqzqzq alone, zqzqzqs and Zqzqzq",
        "   indented\n\tcode(x)  {  return x*2; }\r\n",
        "Special <|begin_of_text|> inside <|eot_id|> text",
        "naïve café, Straße, Ünïcödé ÉCOLE",
        "In 2000, 1000 of 100 000 were 00 or 200 (300)",
    ];

    public static TheoryData<string> Names => [.. GgufPreTokenizers.All.SelectMany(p => p.Names)];

    [Theory]
    [MemberData(nameof(Names))]
    public void PreTokenizer_SplitsAsLlamaCppAndHuggingFace(string name)
    {
        GgufPreTokenizer entry = GgufPreTokenizers.Find(name)!;
        string folder = WriteFolder(entry);
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-pre-" + name), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32", name);
        var fromFile = HfTokenizer.Load(GgufImporter.Prepare(gguf));
        var fromFolder = HfTokenizer.Load(folder);
        using var hf = new Tokenizers.DotNet.Tokenizer(Path.Combine(folder, "tokenizer.json"));
        using var llama = new LlamaCppOracle(gguf);
        foreach (string text in Texts)
        {
            List<int> expected = llama.Tokenize(text);
            List<int> ours = fromFile.Encode(text);
            Assert.True(expected.SequenceEqual(ours), $"{name}: '{text}'\n llama.cpp [{string.Join(",", expected)}]\n Coral     [{string.Join(",", ours)}]");
            Assert.Equal(ours, fromFolder.Encode(text));
            Assert.Equal(ours, hf.Encode(text).Select(x => (int)x));
        }

        Assert.Equal(entry.IgnoreMerges, fromFile.Encode(" zqzqzq", addSpecialTokens: false).Count == 1);
    }

    [Fact]
    public void UnknownName_FailsListingTheKnownOnes()
    {
        string folder = WriteFolder(GgufPreTokenizers.Find("qwen2")!);
        string gguf = Path.Combine(ModelZoo.TempFolder("gguf-pre-unknown"), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32", "kimi-k2");
        var ex = Assert.Throws<CoralModelException>(() => GgufImporter.Prepare(gguf));
        Assert.Contains("tokenizer.ggml.pre", ex.Message);
        Assert.Contains("'kimi-k2'", ex.Message);
        Assert.Contains("smollm", ex.Message);
    }

    [Fact]
    public void Exporter_NamesTheFoldersPreTokenizer_AndRefusesOneLlamaCppHasNot()
    {
        foreach (GgufPreTokenizer entry in GgufPreTokenizers.All)
        {
            string gguf = Path.Combine(ModelZoo.TempFolder("gguf-pre-export"), "model.gguf");
            GgufExporter.Export(WriteFolder(entry), gguf, "f32");
            using var file = GgufFile.Open(gguf);
            Assert.Equal(entry.Names[0], file.GetString("tokenizer.ggml.pre"));
        }

        string folder = WriteFolder(GgufPreTokenizers.Find("qwen2")!);
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!["Regex"] = @"\p{L}+";
        File.WriteAllText(path, root.ToJsonString());
        var ex = Assert.Throws<CoralModelException>(() => GgufExporter.Export(folder, Path.Combine(folder, "x.gguf")));
        Assert.Contains("no known llama.cpp pre-tokenizer", ex.Message);
    }

    /// <summary>The llama test model with <paramref name="entry"/>'s pre-tokenizer as the importer writes it, and the
    /// token the last merge built renamed to <see cref="Unreachable"/> (that merge dropped, so no merge builds it).</summary>
    private static string WriteFolder(GgufPreTokenizer entry)
    {
        string folder = ModelZoo.Copy(TransformerModelTests.ModelFor("llama"), "gguf-pre-folder");
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        JsonObject model = root["model"]!.AsObject();
        JsonArray merges = model["merges"]!.AsArray();
        JsonNode last = merges[^1]!;
        string built = last is JsonArray pair ? pair[0]!.GetValue<string>() + pair[1]!.GetValue<string>() : last.GetValue<string>().Replace(" ", "", StringComparison.Ordinal);
        merges.RemoveAt(merges.Count - 1);
        JsonObject vocab = model["vocab"]!.AsObject();
        int id = vocab[built]!.GetValue<int>();
        vocab.Remove(built);
        vocab[Unreachable] = id;
        model["ignore_merges"] = entry.IgnoreMerges;
        root["pre_tokenizer"] = entry.ToJson();
        File.WriteAllText(path, root.ToJsonString());
        return folder;
    }
}

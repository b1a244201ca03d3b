using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Coral.AI;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> (BPE model) with the semantics of <c>tokenizer(text)</c>: added tokens matched
/// first, byte-level BPE (GPT-2, Llama-3, Qwen2/3) through Microsoft.ML.Tokenizers, or SentencePiece-style BPE
/// (Metaspace with byte fallback: Llama-2, Mistral v0.1); BOS/EOS from the post-processor or <c>add_bos_token</c>.
/// </summary>
internal sealed class HfTokenizer
{
    private readonly Tokenizer? _byteLevel;
    private readonly PreTokenizerPipeline _preTokenizer = PreTokenizerPipeline.None;
    private readonly Dictionary<string, int>? _wholeWords;
    private readonly SentencePieceBpe? _sentencePiece;
    private readonly byte[][] _tokenBytes;
    private readonly Dictionary<string, int> _added;
    private readonly Dictionary<string, AddedTokenFlags> _addedFlags = new(StringComparer.Ordinal);
    private readonly Regex? _addedSplitter;
    private readonly HashSet<int> _special;
    private readonly HashSet<int> _markers = [];
    private readonly int[] _prefix;
    private readonly int[] _suffix;
    private readonly bool _stripLeadingSpace;
    private readonly TextNormalizer _normalizer;

    private HfTokenizer(string path, JsonObject root, TokenizerConfig config)
    {
        Config = config;
        JsonObject model = root["model"] as JsonObject ?? throw new CoralModelException(path, "model", "missing.");
        string type = model["type"]?.GetValue<string>() ?? "BPE";
        if (type != "BPE")
        {
            throw new CoralModelException(path, "model.type", $"'{type}' is not supported; only BPE tokenizers are.");
        }

        var vocab = (model["vocab"] as JsonObject ?? throw new CoralModelException(path, "model.vocab", "missing."))
            .ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>(), StringComparer.Ordinal);
        var merges = (model["merges"] as JsonArray ?? [])
            .Select(m => m is JsonArray pair ? (pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>()) : SplitMerge(m!.GetValue<string>()))
            .ToList();

        _added = new Dictionary<string, int>(StringComparer.Ordinal);
        _special = [];
        foreach (JsonNode? n in root["added_tokens"] as JsonArray ?? [])
        {
            string content = n!["content"]!.GetValue<string>();
            int id = n["id"]!.GetValue<int>();
            _added[content] = id;
            var flags = new AddedTokenFlags(n["lstrip"]?.GetValue<bool>() ?? false, n["rstrip"]?.GetValue<bool>() ?? false, n["single_word"]?.GetValue<bool>() ?? false);
            if (flags != default)
            {
                _addedFlags[content] = flags;
            }
            if (n["special"]?.GetValue<bool>() ?? false)
            {
                _special.Add(id);
            }
        }

        foreach (string marker in new[] { "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|tool_call|>", "<think>", "</think>", "<|python_tag|>" })
        {
            if (_added.TryGetValue(marker, out int markerId))
            {
                _markers.Add(markerId);
            }
        }

        _addedSplitter = _added.Count == 0 ? null
            : new Regex(string.Join("|", _added.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)), RegexOptions.Compiled);
        VocabSize = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, _added.Count == 0 ? 0 : _added.Values.Max() + 1);

        JsonNode? pre = root["pre_tokenizer"];
        if (ContainsType(pre, "ByteLevel") || ContainsType(root["decoder"], "ByteLevel"))
        {
            IsByteLevel = true;
            _normalizer = TextNormalizer.Parse(path, root["normalizer"]);
            _preTokenizer = PreTokenizerPipeline.Parse(path, pre);
            _wholeWords = model["ignore_merges"]?.GetValue<bool>() ?? false ? vocab : null;
            _byteLevel = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges.Select(m => m.Item1 + " " + m.Item2),
                ByteLevel = true,
                PreTokenizer = WholePiece.Instance,
            });
        }
        else
        {
            // SentencePieceBpe itself prepends '▁' and turns spaces into '▁' (Prepend / Replace); NFC is the one other step.
            TextNormalizer.Require(path, root["normalizer"], "Prepend", "Replace", "NFC");
            _normalizer = TextNormalizer.Parse(path, ContainsType(root["normalizer"], "NFC") ? new JsonObject { ["type"] = "NFC" } : null);
            bool byteFallback = model["byte_fallback"]?.GetValue<bool>() ?? false;
            string? unk = model["unk_token"]?.GetValue<string>();
            SentencePiecePrepend prepend = ContainsType(root["normalizer"], "Prepend") ? SentencePiecePrepend.EverySegment : MetaspacePrepend(pre);
            bool split = pre is JsonObject p && p["type"]?.GetValue<string>() == "Metaspace" && (p["split"]?.GetValue<bool>() ?? true);
            _sentencePiece = new SentencePieceBpe(vocab, merges, byteFallback, unk is null ? null : vocab.GetValueOrDefault(unk, -1), prepend, split);
            _stripLeadingSpace = ContainsType(root["decoder"], "Strip") || ContainsType(root["decoder"], "Metaspace");
        }

        _tokenBytes = new byte[VocabSize][];
        foreach (var (piece, id) in vocab)
        {
            _tokenBytes[id] = IsByteLevel ? ByteLevelDecode(piece) : SentencePieceBpe.PieceBytes(piece);
        }

        foreach (var (content, id) in _added)
        {
            _tokenBytes[id] = Encoding.UTF8.GetBytes(content);
        }

        for (int i = 0; i < _tokenBytes.Length; i++)
        {
            _tokenBytes[i] ??= [];
        }

        (_prefix, _suffix) = ReadPostProcessor(root["post_processor"], config);
        BosTokenId = config.BosToken is { } b && TryGetId(b, out int bid) ? bid : null;
        EosTokenId = config.EosToken is { } e && TryGetId(e, out int eid) ? eid : null;
    }

    /// <summary>Gets the tokenizer_config.json values (chat template, special tokens).</summary>
    public TokenizerConfig Config { get; }

    public int VocabSize { get; }

    public bool IsByteLevel { get; }

    public int? BosTokenId { get; }

    public int? EosTokenId { get; }

    /// <summary>Gets whether a decoded stream should drop one leading space (SentencePiece decoders).</summary>
    public bool StripsLeadingSpace => _stripLeadingSpace;

    public static HfTokenizer Load(string folder)
    {
        string path = Path.Combine(folder, "tokenizer.json");
        JsonObject root = ModelConfig.ReadJsonObject(path);
        TokenizerConfig config = TokenizerConfig.Load(folder);
        try
        {
            return new HfTokenizer(path, root, config);
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or NullReferenceException or KeyNotFoundException or ArgumentException)
        {
            throw new CoralModelException(path, null, $"cannot be read as a BPE tokenizer: {ex.Message}", ex);
        }
    }

    public bool TryGetId(string token, out int id)
    {
        if (_added.TryGetValue(token, out id))
        {
            return true;
        }

        id = _byteLevel?.EncodeToIds(token, false, false) is [int only] && Decode([only], false) == token ? only : -1;
        if (id < 0 && _sentencePiece is not null)
        {
            id = _sentencePiece.PieceId(token);
        }

        return id >= 0;
    }

    public bool IsSpecial(int id) => _special.Contains(id);

    /// <summary>Gets whether a special token carries structure the chat client parses (tool-call and reasoning markers),
    /// so the streamed text keeps it.</summary>
    public bool IsMarker(int id) => _markers.Contains(id);

    /// <summary>Encodes like HF <c>tokenizer(text, add_special_tokens=...)</c>: added tokens in the text are recognised.</summary>
    public List<int> Encode(string text, bool addSpecialTokens = true)
    {
        var ids = new List<int>();
        if (addSpecialTokens)
        {
            ids.AddRange(_prefix);
        }

        int pos = 0;
        bool first = true;
        if (_addedSplitter is not null)
        {
            foreach (Match m in _addedSplitter.Matches(text))
            {
                // As Hugging Face matches added tokens: a single_word token only between non-word characters; lstrip and
                // rstrip take the whitespace on that side into the token.
                int start = m.Index, stop = m.Index + m.Length;
                AddedTokenFlags flags = _addedFlags.GetValueOrDefault(m.Value);
                if (start < pos || (flags.SingleWord && ((start > 0 && IsWordChar(text[start - 1])) || (stop < text.Length && IsWordChar(text[stop])))))
                {
                    continue;
                }

                if (flags.LStrip)
                {
                    while (start > pos && char.IsWhiteSpace(text[start - 1]))
                    {
                        start--;
                    }
                }

                if (flags.RStrip)
                {
                    while (stop < text.Length && char.IsWhiteSpace(text[stop]))
                    {
                        stop++;
                    }
                }

                EncodeOrdinary(text[pos..start], ids, first);
                ids.Add(_added[m.Value]);
                pos = stop;
                first = false;
            }
        }

        EncodeOrdinary(text[pos..], ids, first);
        if (addSpecialTokens)
        {
            ids.AddRange(_suffix);
        }

        return ids;
    }

    /// <summary>Gets the raw bytes a token stands for (UTF-8 of its text; a single byte for byte tokens).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_tokenBytes.Length ? _tokenBytes[id] : [];

    public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (skipSpecial && _special.Contains(id))
            {
                continue;
            }

            bytes.AddRange(TokenBytes(id).ToArray());
        }

        string s = Encoding.UTF8.GetString(bytes.ToArray());
        return _stripLeadingSpace && s.StartsWith(' ') ? s[1..] : s;
    }

    private void EncodeOrdinary(string text, List<int> ids, bool first)
    {
        if (text.Length == 0)
        {
            return;
        }

        text = _normalizer.Apply(text);
        if (text.Length == 0)
        {
            return;
        }

        if (_byteLevel is not null)
        {
            var pieces = new List<string>();
            _preTokenizer.Split(text, pieces);
            foreach (string piece in pieces)
            {
                // ignore_merges: a piece that is a vocabulary entry as a whole is that token, whatever the merges make of it.
                if (_wholeWords is not null && _wholeWords.TryGetValue(ByteLevelEncode(Encoding.UTF8.GetBytes(piece)), out int whole))
                {
                    ids.Add(whole);
                }
                else
                {
                    ids.AddRange(_byteLevel.EncodeToIds(piece, true, false));
                }
            }
        }
        else
        {
            _sentencePiece!.Encode(text, first, ids);
        }
    }

    private static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '_';

    private static (string, string) SplitMerge(string merge)
    {
        int space = merge.IndexOf(' ', 1);
        return space < 0 ? throw new FormatException($"merge '{merge}' has no space") : (merge[..space], merge[(space + 1)..]);
    }

    private static bool ContainsType(JsonNode? node, string type) => node switch
    {
        JsonObject o => o["type"]?.GetValue<string>() == type
            || o.Where(kv => kv.Value is JsonArray).SelectMany(kv => (JsonArray)kv.Value!).Any(n => ContainsType(n, type)),
        _ => false,
    };

    private static SentencePiecePrepend MetaspacePrepend(JsonNode? pre) =>
        pre is not JsonObject o || o["type"]?.GetValue<string>() != "Metaspace" ? SentencePiecePrepend.None
        : o["prepend_scheme"]?.GetValue<string>() switch
        {
            "first" => SentencePiecePrepend.First,
            "never" => SentencePiecePrepend.None,
            "always" => SentencePiecePrepend.Always,
            _ => o["add_prefix_space"]?.GetValue<bool>() ?? true ? SentencePiecePrepend.Always : SentencePiecePrepend.None,
        };

    private (int[] Prefix, int[] Suffix) ReadPostProcessor(JsonNode? node, TokenizerConfig config)
    {
        JsonObject? template = node is JsonObject o
            ? (o["type"]?.GetValue<string>() == "TemplateProcessing" ? o
                : (o["processors"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(p => p["type"]?.GetValue<string>() == "TemplateProcessing"))
            : null;
        if (template?["single"] is JsonArray single)
        {
            var prefix = new List<int>();
            var suffix = new List<int>();
            bool seenSequence = false;
            foreach (JsonNode? piece in single)
            {
                if (piece?["Sequence"] is not null)
                {
                    seenSequence = true;
                }
                else if (piece?["SpecialToken"]?["id"]?.GetValue<string>() is string tok && TryGetId(tok, out int id))
                {
                    (seenSequence ? suffix : prefix).Add(id);
                }
            }

            return (prefix.ToArray(), suffix.ToArray());
        }

        var pre = new List<int>();
        var post = new List<int>();
        if (config.AddBosToken && config.BosToken is { } bos && TryGetId(bos, out int b))
        {
            pre.Add(b);
        }

        if (config.AddEosToken && config.EosToken is { } eos && TryGetId(eos, out int e))
        {
            post.Add(e);
        }

        return (pre.ToArray(), post.ToArray());
    }

    private static readonly Dictionary<char, byte> ByteLevelInverse = BuildByteLevelInverse();

    private static Dictionary<char, byte> BuildByteLevelInverse()
    {
        // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n in order.
        var map = new Dictionary<char, byte>();
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[printable ? (char)b : (char)(256 + n++)] = (byte)b;
        }

        return map;
    }

    internal static string ByteLevelEncode(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        foreach (byte b in bytes)
        {
            sb.Append(ByteLevelChars[b]);
        }

        return sb.ToString();
    }

    private static readonly char[] ByteLevelChars = ByteLevelInverse.OrderBy(kv => kv.Value).Select(kv => kv.Key).ToArray();

    private static byte[] ByteLevelDecode(string piece)
    {
        var bytes = new byte[piece.Length];
        for (int i = 0; i < piece.Length; i++)
        {
            if (!ByteLevelInverse.TryGetValue(piece[i], out bytes[i]))
            {
                return Encoding.UTF8.GetBytes(piece);
            }
        }

        return bytes;
    }

    /// <summary>An added token's <c>lstrip</c>, <c>rstrip</c> and <c>single_word</c>.</summary>
    private readonly record struct AddedTokenFlags(bool LStrip, bool RStrip, bool SingleWord);

    /// <summary>Hands Microsoft.ML.Tokenizers' BPE one piece the pipeline has already cut.</summary>
    private sealed class WholePiece : PreTokenizer
    {
        public static WholePiece Instance { get; } = new();

        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
            string.IsNullOrEmpty(text) ? [] : [(0, text.Length)];

        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) =>
            text.IsEmpty ? [] : [(0, text.Length)];
    }
}

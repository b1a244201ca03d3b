namespace Coral.AI;

/// <summary>
/// The byte-level pre-tokenizers a GGUF file names in <c>tokenizer.ggml.pre</c>, as the split regexes llama.cpp applies in
/// turn (each isolating its matches within the pieces the previous ones left) — written in the form of the models' own
/// tokenizer.json (where llama.cpp rewrites a regex for std::regex, e.g. <c>\p{Lu}</c> as "a letter but not a–z", the
/// original is kept: it is what the model was trained with) — plus <c>ignore_merges</c> and whether BOS is added when
/// the file does not say. Names in one entry tokenize alike; the first is the one the exporter writes.
/// </summary>
internal static class GgufPreTokenizers
{
    internal const string Gpt2 = PreTokenizerPipeline.Gpt2Pattern;

    internal const string Llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    internal const string Qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string Tekken = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string Gpt4o = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string DeepSeekV3 = @"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Gets the known pre-tokenizers.</summary>
    internal static IReadOnlyList<GgufPreTokenizer> All { get; } =
    [
        new(["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"], [Llama3], IgnoreMerges: true, AddBos: true),
        new(["dbrx", "smaug-bpe", "chatglm-bpe"], [Llama3]),
        new(["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"], [Qwen2]),
        new(["gpt-2", "phi-2", "olmo", "mpt", "jais", "exaone4", "a.x-4.0", "trillion", "granite-docling"], [Gpt2]),
        new(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"], [@"\p{N}", Gpt2]),
        new(["tekken"], [Tekken], IgnoreMerges: true, AddBos: true),
        new(["gpt-4o", "llama4"], [Gpt4o]),
        new(["deepseek-coder"], ["[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+", @"\p{N}"]),
        new(["deepseek-v3"], [@"\p{N}{1,3}", "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+", DeepSeekV3]),
        new(["default"], [@"[\p{P}\$\+<=>\^~\|]+", Gpt2, @"\p{N}+", "[0-9][0-9][0-9]"]),   // also a file without the key
    ];

    /// <summary>Finds <paramref name="name"/>, or null.</summary>
    internal static GgufPreTokenizer? Find(string name) => All.FirstOrDefault(p => p.Names.Contains(name));

    /// <summary>Finds the entry that splits with exactly <paramref name="patterns"/> and the same <c>ignore_merges</c>.</summary>
    internal static GgufPreTokenizer? Match(IReadOnlyList<string> patterns, bool ignoreMerges) =>
        All.FirstOrDefault(p => p.IgnoreMerges == ignoreMerges && p.Patterns.SequenceEqual(patterns, StringComparer.Ordinal));
}

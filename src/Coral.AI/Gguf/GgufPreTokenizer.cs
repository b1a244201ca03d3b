namespace Coral.AI;

/// <summary>One pre-tokenizer: the names llama.cpp reads for it, its regexes in order, <c>ignore_merges</c>, and whether
/// BOS is added by default.</summary>
internal sealed record GgufPreTokenizer(string[] Names, string[] Patterns, bool IgnoreMerges = false, bool AddBos = false);

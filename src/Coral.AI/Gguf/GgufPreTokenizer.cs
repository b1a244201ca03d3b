using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>One pre-tokenizer: the names llama.cpp reads for it, its regexes in order, <c>ignore_merges</c>, and whether
/// BOS is added by default.</summary>
internal sealed record GgufPreTokenizer(string[] Names, string[] Patterns, bool IgnoreMerges = false, bool AddBos = false)
{
    /// <summary>The tokenizer.json <c>pre_tokenizer</c> that splits as llama.cpp does: one Isolated <c>Split</c> per regex,
    /// then <c>ByteLevel</c> without its own regex.</summary>
    public JsonObject ToJson()
    {
        var steps = new JsonArray([.. Patterns.Select(p => (JsonNode)new JsonObject
        {
            ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = p }, ["behavior"] = "Isolated", ["invert"] = false,
        })]);
        steps.Add(new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false });
        return new JsonObject { ["type"] = "Sequence", ["pretokenizers"] = steps };
    }
}

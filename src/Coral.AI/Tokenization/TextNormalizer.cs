using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Coral.AI;

/// <summary>
/// A byte-level tokenizer's <c>normalizer</c> with Hugging Face tokenizers' semantics, applied to the text between added
/// tokens before it is split: <c>Sequence</c>, <c>NFC</c>, <c>NFD</c>, <c>NFKC</c>, <c>NFKD</c>, <c>Lowercase</c>,
/// <c>Strip</c>, <c>StripAccents</c>, <c>Replace</c> (a string or a regex), <c>Prepend</c>. Any other type fails naming
/// it rather than tokenizing some other text than the model was trained on.
/// </summary>
internal sealed class TextNormalizer
{
    private readonly Func<string, string>[] _steps;

    private TextNormalizer(Func<string, string>[] steps) => _steps = steps;

    /// <summary>Gets whether there is nothing to do.</summary>
    public bool IsIdentity => _steps.Length == 0;

    /// <summary>Reads <paramref name="node"/>, the <c>normalizer</c> of <paramref name="path"/>.</summary>
    public static TextNormalizer Parse(string path, JsonNode? node)
    {
        var steps = new List<Func<string, string>>();
        Add(path, node, steps);
        return new TextNormalizer([.. steps]);
    }

    /// <summary>Checks that <paramref name="node"/> holds only <paramref name="allowed"/> types (and Sequences).</summary>
    public static void Require(string path, JsonNode? node, params string[] allowed)
    {
        if (node is null)
        {
            return;
        }

        string type = node["type"]?.GetValue<string>() ?? throw new CoralModelException(path, "normalizer.type", "missing.");
        if (type == "Sequence")
        {
            foreach (JsonNode? inner in node["normalizers"] as JsonArray ?? [])
            {
                Require(path, inner, allowed);
            }
        }
        else if (!allowed.Contains(type))
        {
            throw new CoralModelException(path, "normalizer.type",
                $"'{type}' is not supported with this tokenizer model (supported: {string.Join(", ", allowed)}).");
        }
    }

    /// <summary>Normalizes <paramref name="text"/>.</summary>
    public string Apply(string text)
    {
        foreach (Func<string, string> step in _steps)
        {
            text = step(text);
        }

        return text;
    }

    private static void Add(string path, JsonNode? node, List<Func<string, string>> steps)
    {
        if (node is null)
        {
            return;
        }

        string type = node["type"]?.GetValue<string>() ?? throw new CoralModelException(path, "normalizer.type", "missing.");
        switch (type)
        {
            case "Sequence":
                foreach (JsonNode? inner in node["normalizers"] as JsonArray ?? [])
                {
                    Add(path, inner, steps);
                }

                break;
            case "NFC" or "NFD" or "NFKC" or "NFKD":
                NormalizationForm form = type switch
                {
                    "NFC" => NormalizationForm.FormC,
                    "NFD" => NormalizationForm.FormD,
                    "NFKC" => NormalizationForm.FormKC,
                    _ => NormalizationForm.FormKD,
                };
                steps.Add(s => s.Normalize(form));
                break;
            case "Lowercase":
                steps.Add(s => s.ToLowerInvariant());
                break;
            case "Strip":
                bool left = node["strip_left"]?.GetValue<bool>() ?? true, right = node["strip_right"]?.GetValue<bool>() ?? true;
                steps.Add(s => left && right ? s.Trim() : left ? s.TrimStart() : right ? s.TrimEnd() : s);
                break;
            case "StripAccents":
                steps.Add(s => string.Concat(s.Where(c => CharUnicodeInfo.GetUnicodeCategory(c) != UnicodeCategory.NonSpacingMark)));
                break;
            case "Replace":
                string content = node["content"]?.GetValue<string>() ?? "";
                if (node["pattern"]?["String"]?.GetValue<string>() is string literal)
                {
                    steps.Add(s => literal.Length == 0 ? s : s.Replace(literal, content, StringComparison.Ordinal));
                }
                else if (node["pattern"]?["Regex"]?.GetValue<string>() is string pattern)
                {
                    var regex = new Regex(pattern, RegexOptions.Compiled);
                    steps.Add(s => regex.Replace(s, content.Replace("$", "$$", StringComparison.Ordinal)));
                }
                else
                {
                    throw new CoralModelException(path, "normalizer.pattern", "has neither String nor Regex.");
                }

                break;
            case "Prepend":
                string prefix = node["prepend"]?.GetValue<string>() ?? "";
                steps.Add(s => s.Length == 0 ? s : prefix + s);
                break;
            default:
                throw new CoralModelException(path, "normalizer.type",
                    $"'{type}' is not supported (Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace and Prepend are).");
        }
    }
}

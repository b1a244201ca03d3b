using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Coral.AI;

/// <summary>
/// A byte-level tokenizer's <c>pre_tokenizer</c> with Hugging Face tokenizers' semantics: the text is cut into pieces
/// step by step (<c>Sequence</c>), each step splitting every piece the previous steps left — <c>Split</c> (a regex or a
/// string, with its delimiter behaviour and <c>invert</c>), <c>Digits</c>, <c>ByteLevel</c> (prefix space, GPT-2's
/// regex), <c>Punctuation</c>, <c>Whitespace</c>, <c>WhitespaceSplit</c>. BPE then runs on each piece alone. This is
/// also how llama.cpp applies a pre-tokenizer's regex list (each regex isolating its matches within the pieces so far).
/// </summary>
internal sealed class PreTokenizerPipeline
{
    /// <summary>GPT-2's split regex, which <c>ByteLevel</c> applies when <c>use_regex</c> is set.</summary>
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly Step[] _steps;

    private PreTokenizerPipeline(Step[] steps) => _steps = steps;

    /// <summary>Gets a pipeline that keeps the text whole (no <c>pre_tokenizer</c>).</summary>
    public static PreTokenizerPipeline None { get; } = new([]);

    /// <summary>Reads <paramref name="node"/> (the <c>pre_tokenizer</c> of <paramref name="path"/>); an unknown type
    /// fails naming it rather than splitting some other way.</summary>
    public static PreTokenizerPipeline Parse(string path, JsonNode? node)
    {
        var steps = new List<Step>();
        Add(path, node, steps);
        return new PreTokenizerPipeline([.. steps]);
    }

    /// <summary>Gets the regexes in order when every step isolates the matches of one (what llama.cpp's pre-tokenizers
    /// do), else null.</summary>
    public IReadOnlyList<string>? IsolatedPatterns =>
        _steps.All(s => s is { Regex: not null, Behavior: Behavior.Isolated, Invert: false, PrefixSpace: false })
            ? [.. _steps.Select(s => s.Regex!.ToString())] : null;

    /// <summary>Appends the pieces of <paramref name="text"/> to <paramref name="pieces"/> (none empty).</summary>
    public void Split(string text, List<string> pieces)
    {
        var current = new List<string> { text };
        var next = new List<string>();
        foreach (Step step in _steps)
        {
            next.Clear();
            foreach (string piece in current)
            {
                step.Apply(piece, next);
            }

            (current, next) = (next, current);
        }

        pieces.AddRange(current.Where(p => p.Length > 0));
    }

    private static void Add(string path, JsonNode? node, List<Step> steps)
    {
        if (node is null)
        {
            return;
        }

        string type = node["type"]?.GetValue<string>() ?? throw new CoralModelException(path, "pre_tokenizer.type", "missing.");
        switch (type)
        {
            case "Sequence":
                foreach (JsonNode? inner in node["pretokenizers"] as JsonArray ?? [])
                {
                    Add(path, inner, steps);
                }

                break;
            case "Split":
                string pattern = node["pattern"]?["Regex"]?.GetValue<string>()
                    ?? Regex.Escape(node["pattern"]?["String"]?.GetValue<string>() ?? throw new CoralModelException(path, "pre_tokenizer.pattern", "has neither Regex nor String."));
                steps.Add(new Step(Compile(path, pattern), ParseBehavior(path, node["behavior"]), node["invert"]?.GetValue<bool>() ?? false, false));
                break;
            case "Digits":
                bool individual = node["individual_digits"]?.GetValue<bool>() ?? false;
                steps.Add(new Step(new Regex(individual ? @"\p{N}" : @"\p{N}+", RegexOptions.Compiled), Behavior.Isolated, false, false));
                break;
            case "ByteLevel":
                bool prefix = node["add_prefix_space"]?.GetValue<bool>() ?? true;
                bool useRegex = node["use_regex"]?.GetValue<bool>() ?? true;
                if (prefix || useRegex)
                {
                    steps.Add(new Step(useRegex ? new Regex(Gpt2Pattern, RegexOptions.Compiled) : null, Behavior.Isolated, false, prefix));
                }

                break;
            case "Punctuation":
                steps.Add(new Step(new Regex(@"[\p{P}!-/:-@\[-`{-~]", RegexOptions.Compiled), ParseBehavior(path, node["behavior"]), false, false));
                break;
            case "Whitespace":
                steps.Add(new Step(new Regex(@"\w+|[^\w\s]+", RegexOptions.Compiled), Behavior.Removed, true, false));
                break;
            case "WhitespaceSplit":
                steps.Add(new Step(new Regex(@"\s+", RegexOptions.Compiled), Behavior.Removed, false, false));
                break;
            default:
                throw new CoralModelException(path, "pre_tokenizer.type",
                    $"'{type}' is not supported in a byte-level tokenizer (Sequence, Split, Digits, ByteLevel, Punctuation, Whitespace and WhitespaceSplit are).");
        }
    }

    private static Regex Compile(string path, string pattern)
    {
        try
        {
            return new Regex(pattern, RegexOptions.Compiled);
        }
        catch (ArgumentException ex)
        {
            throw new CoralModelException(path, "pre_tokenizer.pattern", $"'{pattern}' is not a regex .NET reads: {ex.Message}", ex);
        }
    }

    private static Behavior ParseBehavior(string path, JsonNode? node) => node?.GetValue<string>() switch
    {
        null or "Isolated" => Behavior.Isolated,
        "Removed" => Behavior.Removed,
        "MergedWithPrevious" => Behavior.MergedWithPrevious,
        "MergedWithNext" => Behavior.MergedWithNext,
        "Contiguous" => Behavior.Contiguous,
        string other => throw new CoralModelException(path, "pre_tokenizer.behavior", $"'{other}' is not a split behaviour."),
    };

    /// <summary>What becomes of the delimiters (the matches, or with <c>invert</c> the text between them).</summary>
    private enum Behavior
    {
        Removed,
        Isolated,
        MergedWithPrevious,
        MergedWithNext,
        Contiguous,
    }

    /// <summary>One split: <paramref name="Regex"/> (null: none) finds the delimiters; <paramref name="PrefixSpace"/>
    /// first prepends a space to a piece that does not start with one (ByteLevel's add_prefix_space).</summary>
    private sealed record Step(Regex? Regex, Behavior Behavior, bool Invert, bool PrefixSpace)
    {
        public void Apply(string piece, List<string> output)
        {
            if (PrefixSpace && !piece.StartsWith(' '))
            {
                piece = " " + piece;
            }

            if (Regex is null)
            {
                output.Add(piece);
                return;
            }

            // The text as alternating segments: the matches and the gaps between them, each flagged as a delimiter.
            var segments = new List<(int Start, int End, bool Delimiter)>();
            int previous = 0;
            foreach (Match m in Regex.Matches(piece))
            {
                if (m.Index > previous)
                {
                    segments.Add((previous, m.Index, Invert));
                }

                if (m.Length > 0)
                {
                    segments.Add((m.Index, m.Index + m.Length, !Invert));
                }

                previous = m.Index + m.Length;
            }

            if (previous < piece.Length)
            {
                segments.Add((previous, piece.Length, Invert));
            }

            foreach ((int start, int end) in Group(segments))
            {
                output.Add(piece[start..end]);
            }
        }

        private List<(int Start, int End)> Group(List<(int Start, int End, bool Delimiter)> segments)
        {
            var pieces = new List<(int Start, int End)>(segments.Count);
            bool previousDelimiter = false;
            switch (Behavior)
            {
                case Behavior.Removed:
                    pieces.AddRange(segments.Where(s => !s.Delimiter).Select(s => (s.Start, s.End)));
                    break;
                case Behavior.Isolated:
                    pieces.AddRange(segments.Select(s => (s.Start, s.End)));
                    break;
                case Behavior.MergedWithPrevious:
                    // A delimiter joins the piece before it, unless that piece is itself a delimiter.
                    foreach (var s in segments)
                    {
                        if (s.Delimiter && !previousDelimiter && pieces.Count > 0)
                        {
                            pieces[^1] = (pieces[^1].Start, s.End);
                        }
                        else
                        {
                            pieces.Add((s.Start, s.End));
                        }

                        previousDelimiter = s.Delimiter;
                    }

                    break;
                case Behavior.MergedWithNext:
                    // The mirror image: walk backwards, a delimiter joins the piece after it.
                    for (int i = segments.Count - 1; i >= 0; i--)
                    {
                        var s = segments[i];
                        if (s.Delimiter && !previousDelimiter && pieces.Count > 0)
                        {
                            pieces[^1] = (s.Start, pieces[^1].End);
                        }
                        else
                        {
                            pieces.Add((s.Start, s.End));
                        }

                        previousDelimiter = s.Delimiter;
                    }

                    pieces.Reverse();
                    break;
                case Behavior.Contiguous:
                    // Neighbouring delimiters become one piece.
                    foreach (var s in segments)
                    {
                        if (s.Delimiter == previousDelimiter && pieces.Count > 0)
                        {
                            pieces[^1] = (pieces[^1].Start, s.End);
                        }
                        else
                        {
                            pieces.Add((s.Start, s.End));
                        }

                        previousDelimiter = s.Delimiter;
                    }

                    break;
            }

            return pieces;
        }
    }
}

using System.ComponentModel;
using Microsoft.SemanticKernel;

namespace Coral.Samples.Agent;

/// <summary>
/// A Semantic Kernel plugin: looks words up in a small built-in dictionary (public-domain style definitions). The demo
/// corpus issue replaces the list with the bundled GCIDE/WordNet data.
/// </summary>
public sealed class DictionaryPlugin
{
    private static readonly Dictionary<string, string> Words = new(StringComparer.OrdinalIgnoreCase)
    {
        ["coral"] = "A hard substance, red, white, or black, secreted by marine polyps and forming reefs.",
        ["whale"] = "A very large sea mammal that breathes air through a blowhole.",
        ["speculate"] = "To form a theory or conjecture without firm evidence.",
        ["draft"] = "A preliminary version of a piece of writing or a plan.",
        ["verify"] = "To make sure or demonstrate that something is true or accurate.",
        ["token"] = "A thing serving as a visible or tangible representation of something else.",
        ["reef"] = "A ridge of jagged rock, coral, or sand just above or below the surface of the sea.",
    };

    /// <summary>Gets the calls made, for the sample's report.</summary>
    public List<string> Calls { get; } = [];

    /// <summary>Looks up a word.</summary>
    /// <param name="word">The word.</param>
    /// <returns>The definition, or a note that the word is unknown.</returns>
    [KernelFunction("define")]
    [Description("Looks up the definition of an English word in the dictionary.")]
    public string Define([Description("the word to define")] string word)
    {
        Calls.Add($"define(word: \"{word}\")");
        string key = word.Trim().Trim('"', '\'', '.').ToLowerInvariant();
        return Words.TryGetValue(key, out string? definition) ? $"{key}: {definition}" : $"'{word}' is not in the dictionary.";
    }
}

using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>
/// The sampling a model's authors recommend, used when neither <c>ChatOptions</c> nor <see cref="CoralChatClientOptions"/>
/// says otherwise: <c>generation_config.json</c> with <c>do_sample: true</c>, as transformers' <c>generate()</c> reads it
/// (temperature, else 1; top_p, else 1; top_k, else 50; min_p; repetition_penalty), or the parameters of an Ollama
/// model's params layer (only the ones it sets, and its stop sequences). A GGUF file's <c>general.sampling.*</c> keys
/// (what llama.cpp's converter copies from generation_config.json) come back as a generation_config.json.
/// </summary>
internal sealed record ModelSamplingDefaults
{
    public float? Temperature { get; init; }

    public float? TopP { get; init; }

    public int? TopK { get; init; }

    public float? MinP { get; init; }

    public float? RepetitionPenalty { get; init; }

    /// <summary>Gets stop sequences used when a request names none (an Ollama model's <c>stop</c> parameter).</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];

    /// <summary>Gets where the values come from, for logs.</summary>
    public string Source { get; init; } = "";

    /// <summary>Reads <c>generation_config.json</c>'s sampling; null when it does not sample (<c>do_sample</c> absent or
    /// false: transformers would decode greedily, and Coral keeps its own stochastic defaults).</summary>
    public static ModelSamplingDefaults? FromGenerationConfig(JsonObject g, string path)
    {
        bool sample = g["do_sample"] switch
        {
            null => false,
            JsonValue v when v.TryGetValue(out bool b) => b,
            _ => throw new CoralModelException(path, "do_sample", "must be true or false."),
        };
        if (!sample)
        {
            return null;
        }

        return new ModelSamplingDefaults
        {
            Temperature = Number(g, path, "temperature") ?? 1f,
            TopP = Number(g, path, "top_p") ?? 1f,
            TopK = (int?)Number(g, path, "top_k") ?? 50,
            MinP = Number(g, path, "min_p"),
            RepetitionPenalty = Number(g, path, "repetition_penalty"),
            Source = path,
        };
    }

    /// <summary>Reads an Ollama params layer (<c>temperature</c>, <c>top_p</c>, <c>top_k</c>, <c>repeat_penalty</c>,
    /// <c>stop</c>); null when it sets none of them.</summary>
    public static ModelSamplingDefaults? FromOllamaParams(JsonObject p, string path)
    {
        var defaults = new ModelSamplingDefaults
        {
            Temperature = Number(p, path, "temperature"),
            TopP = Number(p, path, "top_p"),
            TopK = (int?)Number(p, path, "top_k"),
            MinP = Number(p, path, "min_p"),
            RepetitionPenalty = Number(p, path, "repeat_penalty"),
            StopSequences = p["stop"] switch
            {
                null => [],
                JsonArray a when a.All(n => n is JsonValue v && v.TryGetValue(out string? _)) => [.. a.Select(n => n!.GetValue<string>()).Where(x => x.Length > 0)],
                JsonValue v when v.TryGetValue(out string? one) => one.Length > 0 ? [one] : [],
                _ => throw new CoralModelException(path, "stop", "must be a string or an array of strings."),
            },
            Source = path,
        };
        return defaults is { Temperature: null, TopP: null, TopK: null, MinP: null, RepetitionPenalty: null, StopSequences.Count: 0 } ? null : defaults;
    }

    private static float? Number(JsonObject o, string path, string key)
    {
        if (o[key] is not JsonValue v)
        {
            return null;
        }

        return v.TryGetValue(out double d) ? (float)d
            : throw new CoralModelException(path, key, "must be a number.");
    }
}

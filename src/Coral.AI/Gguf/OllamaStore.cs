using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>
/// Models an Ollama installation has pulled, named as <c>ollama:&lt;model&gt;[:&lt;tag&gt;]</c> (<c>ollama:llama3.2</c>,
/// <c>ollama:qwen2.5:7b</c>, <c>ollama:hf.co/user/repo:Q4_K_M</c>): the manifest under the store's
/// <c>manifests/&lt;registry&gt;/&lt;namespace&gt;/&lt;model&gt;/&lt;tag&gt;</c> names the model layer's blob, a GGUF file under
/// <c>blobs/sha256-…</c>, which loads like any GGUF file. The store is <c>$OLLAMA_MODELS</c>, else
/// <c>~/.ollama/models</c>, else the Linux service's <c>/usr/share/ollama/.ollama/models</c>. Nothing is downloaded.
/// </summary>
internal static class OllamaStore
{
    /// <summary>The prefix of an Ollama model name in <c>ModelPath</c>.</summary>
    public const string Prefix = "ollama:";

    private const string ModelLayer = "application/vnd.ollama.image.model";

    private const string ParamsLayer = "application/vnd.ollama.image.params";

    /// <summary>Whether <paramref name="path"/> is an Ollama model name.</summary>
    public static bool IsName(string? path) => path is not null && path.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase);

    /// <summary>The model id an Ollama name reports: the name as given, without the prefix.</summary>
    public static string ModelId(string path) => path[Prefix.Length..];

    /// <summary>The GGUF blob of the Ollama model <paramref name="path"/> names.</summary>
    /// <exception cref="CoralModelException">No store, no such model or tag, or a manifest without a model layer; the
    /// message names the path it looked at.</exception>
    public static string Resolve(string path) =>
        Layer(path, ModelLayer) ?? throw new CoralModelException(Manifest(path).Path, "layers", $"has no layer of media type {ModelLayer}.");

    /// <summary>The sampling parameters (and stop sequences) the model's params layer sets, or null when it has none.</summary>
    public static ModelSamplingDefaults? ReadParams(string path) =>
        Layer(path, ParamsLayer) is string blob ? ModelSamplingDefaults.FromOllamaParams(ModelConfig.ReadJsonObject(blob), blob) : null;

    /// <summary>The blob of the manifest's first layer of <paramref name="mediaType"/>, or null when there is none.</summary>
    private static string? Layer(string path, string mediaType)
    {
        var (manifest, json, root) = Manifest(path);
        string? digest = (json["layers"] as JsonArray)?.OfType<JsonObject>()
            .FirstOrDefault(l => l["mediaType"]?.GetValue<string>() == mediaType)?["digest"]?.GetValue<string>();
        if (digest is null)
        {
            return null;
        }

        if (!digest.StartsWith("sha256:", StringComparison.Ordinal) || digest.Length != 71 || !digest[7..].All(Uri.IsHexDigit))
        {
            throw new CoralModelException(manifest, "layers.digest", $"'{digest}' is not a sha256 digest.");
        }

        string blob = Path.Combine(root, "blobs", "sha256-" + digest[7..]);
        return File.Exists(blob) ? blob : throw new CoralModelException(blob, null, $"does not exist: the store lists it as a layer of {ModelId(path)} but it is missing (pull the model again).");
    }

    /// <summary>Finds and reads the manifest of <paramref name="path"/>.</summary>
    private static (string Path, JsonObject Json, string Root) Manifest(string path)
    {
        string name = ModelId(path).Trim();
        string tag = "latest";
        int colon = name.LastIndexOf(':');
        if (colon > name.LastIndexOf('/'))
        {
            (name, tag) = (name[..colon], name[(colon + 1)..]);
        }

        string[] parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries);
        string[] location = parts.Length switch
        {
            1 => ["registry.ollama.ai", "library", parts[0]],
            2 => ["registry.ollama.ai", parts[0], parts[1]],
            3 => parts,
            _ => throw new CoralModelException(path, null, "is not an Ollama model name (model, namespace/model or host/namespace/model, then an optional :tag)."),
        };
        if (location.Concat([tag]).Any(p => p is "." or ".." || p.Contains('\\')))
        {
            throw new CoralModelException(path, null, "is not an Ollama model name.");
        }

        string root = StoreRoot();
        string manifest = Path.Combine([root, "manifests", .. location, tag]);
        if (!File.Exists(manifest))
        {
            throw new CoralModelException(manifest, null, $"does not exist: '{ModelId(path)}' has not been pulled into the Ollama store at {root} (set OLLAMA_MODELS to another store).");
        }

        return (manifest, ModelConfig.ReadJsonObject(manifest), root);
    }

    private static string StoreRoot()
    {
        if (Environment.GetEnvironmentVariable("OLLAMA_MODELS") is { Length: > 0 } configured)
        {
            return configured;
        }

        string home = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".ollama", "models");
        const string Service = "/usr/share/ollama/.ollama/models";
        return Directory.Exists(home) || !Directory.Exists(Service) ? home : Service;
    }
}

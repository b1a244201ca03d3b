using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>The parts of <c>tokenizer_config.json</c> and <c>generation_config.json</c> that chat and decoding need.</summary>
internal sealed record TokenizerConfig
{
    public string? ChatTemplate { get; init; }
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public string? PadToken { get; init; }
    public bool AddBosToken { get; init; }
    public bool AddEosToken { get; init; }

    /// <summary>Gets the EOS ids of generation_config.json (empty when absent).</summary>
    public IReadOnlyList<int> GenerationEosTokenIds { get; init; } = [];

    /// <summary>Gets generation_config.json's sampling, when it samples.</summary>
    public ModelSamplingDefaults? SamplingDefaults { get; init; }

    public static TokenizerConfig Load(string folder)
    {
        string path = Path.Combine(folder, "tokenizer_config.json");
        var config = new TokenizerConfig();
        if (File.Exists(path))
        {
            JsonObject root = ModelConfig.ReadJsonObject(path);
            config = new TokenizerConfig
            {
                ChatTemplate = ReadTemplate(root["chat_template"]),
                BosToken = TokenText(root["bos_token"]),
                EosToken = TokenText(root["eos_token"]),
                PadToken = TokenText(root["pad_token"]),
                AddBosToken = root["add_bos_token"]?.GetValue<bool>() ?? false,
                AddEosToken = root["add_eos_token"]?.GetValue<bool>() ?? false,
            };
        }

        string templateFile = Path.Combine(folder, "chat_template.jinja");
        if (config.ChatTemplate is null && File.Exists(templateFile))
        {
            config = config with { ChatTemplate = File.ReadAllText(templateFile) };
        }

        // A multimodal checkpoint's processor keeps it in chat_template.json (Gemma-3 4B and up, Qwen2-VL).
        string processorTemplate = Path.Combine(folder, "chat_template.json");
        if (config.ChatTemplate is null && File.Exists(processorTemplate))
        {
            config = config with { ChatTemplate = ReadTemplate(ModelConfig.ReadJsonObject(processorTemplate)["chat_template"]) };
        }

        string generation = Path.Combine(folder, "generation_config.json");
        if (File.Exists(generation))
        {
            JsonObject g = ModelConfig.ReadJsonObject(generation);
            config = config with
            {
                GenerationEosTokenIds = ModelConfig.ReadIdList(g["eos_token_id"], generation, "eos_token_id"),
                SamplingDefaults = ModelSamplingDefaults.FromGenerationConfig(g, generation),
            };
        }

        return config;
    }

    private static string? ReadTemplate(JsonNode? node) => node switch
    {
        null => null,
        JsonArray named => named.FirstOrDefault(n => n?["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>()
            ?? named.FirstOrDefault()?["template"]?.GetValue<string>(),
        _ => node.GetValue<string>(),
    };

    private static string? TokenText(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => node.GetValue<string>(),
    };
}

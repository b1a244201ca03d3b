using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace Coral.AI.Tests;

/// <summary>
/// A model's recommended sampling — generation_config.json that samples (transformers' defaults for what it leaves out),
/// or an Ollama model's params layer with its stop sequences — applies where neither the request nor the options say
/// otherwise; a config that does not sample leaves Coral's own defaults.
/// </summary>
public class ModelSamplingDefaultsTests
{
    private static string WithGenerationConfig(JsonObject generation)
    {
        string folder = ModelZoo.Copy(TransformerModelTests.ModelFor("llama"), "sampling-defaults");
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), generation.ToJsonString());
        return folder;
    }

    private static SamplingParameters Sampling(CoralChatClientOptions options, ChatOptions? request)
    {
        using var host = CoralModelHost.Load(options);
        using var client = new CoralChatClient(host);
        return client.MapSampling(request, host.SamplingDefaults);
    }

    [Fact]
    public void GenerationConfigThatSamples_GivesTheDefaults_AsTransformersReadsIt()
    {
        string folder = WithGenerationConfig(new JsonObject
        {
            ["bos_token_id"] = 1, ["do_sample"] = true, ["temperature"] = 0.6, ["top_p"] = 0.9, ["repetition_penalty"] = 1.05,
        });
        SamplingParameters model = Sampling(new CoralChatClientOptions { ModelPath = folder, ContextLength = 64 }, null);
        Assert.Equal((0.6f, 0.9f, 50, 1.05f), (model.Temperature, model.TopP!.Value, model.TopK!.Value, model.RepetitionPenalty));

        // The options' defaults come first, the request's values before everything.
        SamplingParameters configured = Sampling(new CoralChatClientOptions { ModelPath = folder, ContextLength = 64, DefaultTemperature = 0.2f, DefaultTopK = 5 }, null);
        Assert.Equal((0.2f, 0.9f, 5), (configured.Temperature, configured.TopP!.Value, configured.TopK!.Value));
        SamplingParameters requested = Sampling(new CoralChatClientOptions { ModelPath = folder, ContextLength = 64, DefaultTemperature = 0.2f },
            new ChatOptions { Temperature = 0, TopP = 0.5f, TopK = 3 });
        Assert.Equal((0f, 0.5f, 3), (requested.Temperature, requested.TopP!.Value, requested.TopK!.Value));
        Assert.True(requested.IsGreedy);
    }

    /// <summary>A GGUF file carries them as llama.cpp's <c>general.sampling.*</c> keys both ways.</summary>
    [Fact]
    public void GgufFile_CarriesTheModelsSampling()
    {
        string folder = WithGenerationConfig(new JsonObject
        {
            ["do_sample"] = true, ["temperature"] = 0.6, ["top_p"] = 0.9, ["top_k"] = 20, ["min_p"] = 0.05, ["repetition_penalty"] = 1.1,
        });
        string gguf = Path.Combine(ModelZoo.TempFolder("sampling-gguf"), "model.gguf");
        GgufExporter.Export(folder, gguf, "f32");
        using (var file = GgufFile.Open(gguf))
        {
            Assert.Equal(0.6, file.GetNumber("general.sampling.temp")!.Value, 6);
            Assert.Equal(20, file.GetInteger("general.sampling.top_k"));
        }

        SamplingParameters s = Sampling(new CoralChatClientOptions { ModelPath = gguf, ContextLength = 64 }, null);
        Assert.Equal((0.6f, 0.9f, 20, 0.05f, 1.1f), (s.Temperature, s.TopP!.Value, s.TopK!.Value, s.MinP!.Value, s.RepetitionPenalty));

        string plain = Path.Combine(ModelZoo.TempFolder("sampling-gguf-none"), "model.gguf");
        GgufExporter.Export(TransformerModelTests.ModelFor("llama"), plain, "f32");
        SamplingParameters none = Sampling(new CoralChatClientOptions { ModelPath = plain, ContextLength = 64 }, null);
        Assert.Equal((0.7f, 0.95f, (int?)null), (none.Temperature, none.TopP!.Value, none.TopK));
    }

    [Fact]
    public void GenerationConfigThatDoesNotSample_KeepsCoralsDefaults()
    {
        foreach (JsonObject generation in new[]
        {
            new JsonObject { ["bos_token_id"] = 1, ["temperature"] = 0.3 },
            new JsonObject { ["do_sample"] = false, ["temperature"] = 0.3, ["top_k"] = 7 },
        })
        {
            SamplingParameters s = Sampling(new CoralChatClientOptions { ModelPath = WithGenerationConfig(generation), ContextLength = 64 }, null);
            Assert.Equal((0.7f, 0.95f, (int?)null, 1f), (s.Temperature, s.TopP!.Value, s.TopK, s.RepetitionPenalty));
        }
    }

    [Theory]
    [InlineData("temperature", "hot")]
    [InlineData("do_sample", "yes")]
    public void BadGenerationConfigValue_FailsNamingTheField(string field, string value)
    {
        var generation = new JsonObject { ["do_sample"] = true, ["temperature"] = 0.5 };
        generation[field] = value;
        string folder = WithGenerationConfig(generation);
        var ex = Assert.ThrowsAny<Exception>(() => CoralModelHost.Load(new CoralChatClientOptions { ModelPath = folder, ContextLength = 64 }));
        CoralModelException model = ex as CoralModelException ?? Assert.IsType<CoralModelException>(ex.InnerException);
        Assert.Contains("generation_config.json", model.Message);
        Assert.Contains(field, model.Message);
    }

    /// <summary>An Ollama model's params layer: its temperature and top-k become the defaults, and its stop sequence ends
    /// an answer that would run past it.</summary>
    [Fact]
    public async Task OllamaParams_GiveTheDefaults_AndTheirStopSequencesEndAnswers()
    {
        string folder = TransformerModelTests.ModelFor("qwen2-bf16");
        var greedy = new ChatOptions { Temperature = 0, MaxOutputTokens = 16 };
        string full;
        using (var fromFolder = new CoralChatClient(new CoralChatClientOptions { ModelPath = folder, ContextLength = 128 }))
        {
            full = (await fromFolder.GetResponseAsync("Hello there", greedy)).Text;
        }

        Assert.True(full.Length > 8, $"the answer is too short to cut: '{full}'");
        string stop = full.Substring(full.Length / 2, 3);
        string store = ModelZoo.TempFolder("ollama-params");
        Directory.CreateDirectory(Path.Combine(store, "blobs"));
        string Blob(byte[] bytes)
        {
            string hex = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes)).ToLowerInvariant();
            File.WriteAllBytes(Path.Combine(store, "blobs", "sha256-" + hex), bytes);
            return hex;
        }

        string gguf = Path.Combine(store, "export.gguf");
        GgufExporter.Export(folder, gguf, "bf16");
        string model = Blob(File.ReadAllBytes(gguf));
        string parameters = Blob(System.Text.Encoding.UTF8.GetBytes(new JsonObject
        {
            ["temperature"] = 0.4, ["top_k"] = 30, ["stop"] = new JsonArray(stop),
        }.ToJsonString()));
        string dir = Path.Combine(store, "manifests", "registry.ollama.ai", "library", "tiny");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "latest"), $$"""
            {"schemaVersion":2,"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{{model}}","size":1},
                                         {"mediaType":"application/vnd.ollama.image.params","digest":"sha256:{{parameters}}","size":1}]}
            """);
        string? saved = Environment.GetEnvironmentVariable("OLLAMA_MODELS");
        Environment.SetEnvironmentVariable("OLLAMA_MODELS", store);
        try
        {
            var options = new CoralChatClientOptions { ModelPath = "ollama:tiny", ContextLength = 128 };
            SamplingParameters s = Sampling(options, null);
            Assert.Equal((0.4f, 0.95f, 30), (s.Temperature, s.TopP!.Value, s.TopK!.Value));

            using var client = new CoralChatClient(options);
            string cut = (await client.GetResponseAsync("Hello there", greedy)).Text;
            Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], cut);
            string uncut = (await client.GetResponseAsync("Hello there", new ChatOptions { Temperature = 0, MaxOutputTokens = 16, StopSequences = ["\u0001"] })).Text;
            Assert.Equal(full, uncut);   // a request's own stop sequences replace the model's
        }
        finally
        {
            Environment.SetEnvironmentVariable("OLLAMA_MODELS", saved);
        }
    }
}

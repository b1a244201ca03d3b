using System.Text.Json;
using Coral.AI;
using Microsoft.Extensions.AI;

namespace Coral.Cli;

/// <summary><c>coral embed</c>: one JSON object per text on stdout (<c>{"text", "tokens", "embedding"}</c>), as the
/// <see cref="CoralEmbeddingGenerator"/> computes it; texts from <c>--text</c> (repeatable) or, one per line, from stdin.</summary>
internal static class EmbedCommand
{
    private static readonly HashSet<string> ValueOptions = ModelLoading.With("--text", "--dimensions", "--pooling");

    private static readonly HashSet<string> Flags = ["--no-normalize"];

    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        var cl = new CommandLine(args, ValueOptions, Flags);
        List<string> texts = [.. cl.Values("--text")];
        if (texts.Count == 0)
        {
            while (await stdin.ReadLineAsync().ConfigureAwait(false) is string line)
            {
                if (line.Length > 0)
                {
                    texts.Add(line);
                }
            }
        }

        if (texts.Count == 0)
        {
            throw new UsageException("embed needs --text or lines on stdin.");
        }

        using CoralModelHost host = ModelLoading.LoadHost(cl, stderr);
        using var generator = new CoralEmbeddingGenerator(host);
        var options = new EmbeddingGenerationOptions { Dimensions = cl.Int("--dimensions"), AdditionalProperties = [] };
        if (cl.Value("--pooling") is string pooling)
        {
            options.AdditionalProperties["pooling"] = pooling;
        }

        if (cl.Flag("--no-normalize"))
        {
            options.AdditionalProperties["normalize"] = false;
        }

        InferenceEngine engine = await host.GetEngineAsync(CancellationToken.None).ConfigureAwait(false);
        GeneratedEmbeddings<Embedding<float>> embeddings = await generator.GenerateAsync(texts, options).ConfigureAwait(false);
        for (int i = 0; i < texts.Count; i++)
        {
            stdout.WriteLine(JsonSerializer.Serialize(new
            {
                text = texts[i],
                tokens = engine.Tokenizer.Encode(texts[i]).Count,
                embedding = embeddings[i].Vector.ToArray(),
            }));
        }

        return 0;
    }
}

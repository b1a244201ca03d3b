using Microsoft.Extensions.AI;

namespace Coral.Samples.WebApi;

/// <summary>Builds the web app: Coral from the "Coral" configuration section, the OpenAI-compatible API, health, the page.</summary>
public static class CoralWebApp
{
    /// <summary>Creates the application (not started).</summary>
    /// <param name="args">Command-line arguments (--urls, --Coral:ModelPath, ...).</param>
    /// <returns>The application.</returns>
    public static WebApplication Build(string[] args)
    {
        var builder = WebApplication.CreateBuilder(args);
        builder.Services.AddCoralChatClient(builder.Configuration.GetSection("Coral"));
        builder.Services.AddCoralEmbeddingGenerator();
        builder.Services.AddHealthChecks().AddCoral();
        builder.Services.AddSingleton(new RequestQueue(builder.Configuration.GetValue("Coral:MaxQueuedRequests", 8)));

        WebApplication app = builder.Build();
        string page = ReadPage();
        app.MapGet("/", () => Results.Content(page, "text/html; charset=utf-8"));
        app.MapHealthChecks("/health");
        app.MapGet("/v1/models", (IChatClient client) => Results.Json(OpenAiProtocol.Models(client)));
        app.MapPost("/v1/chat/completions", OpenAiProtocol.ChatCompletionsAsync);
        app.MapPost("/v1/embeddings", OpenAiProtocol.EmbeddingsAsync);
        return app;
    }

    /// <summary>The chat page, embedded in the assembly so the app serves it from any working directory.</summary>
    private static string ReadPage()
    {
        using Stream stream = typeof(CoralWebApp).Assembly.GetManifestResourceStream("index.html")
            ?? throw new InvalidOperationException("index.html is not embedded.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}

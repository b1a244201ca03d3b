// The one-line swap: an ordinary Microsoft.Extensions.AI console app. Only the AddCoralChatClient line knows about Coral;
// replace it with AddChatClient(new OllamaApiClient(...)) or an OpenAI client and nothing else changes.
//
//   dotnet run --project samples/Coral.Samples.Console -- --Coral:ModelPath /path/to/hf-model --question "Why is the sky blue?"
//   (or set the environment variable Coral__ModelPath)
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

var builder = Host.CreateApplicationBuilder(args);
builder.Services.AddCoralChatClient(builder.Configuration.GetSection("Coral"));   // <- the one line

using IHost host = builder.Build();
await host.StartAsync();

var chat = host.Services.GetRequiredService<IChatClient>();
string question = builder.Configuration["question"] ?? "Write one sentence about the sea.";
Console.WriteLine($"> {question}");

List<ChatResponseUpdate> updates = [];
await foreach (ChatResponseUpdate update in chat.GetStreamingResponseAsync(question, new ChatOptions { MaxOutputTokens = 128 }))
{
    Console.Write(update.Text);
    updates.Add(update);
}

ChatResponse response = updates.ToChatResponse();
Console.WriteLine();
Console.WriteLine($"[{response.Usage?.OutputTokenCount} tokens, finish: {response.FinishReason}, model: {response.ModelId}]");
await host.StopAsync();

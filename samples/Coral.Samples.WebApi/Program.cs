// dotnet run --project samples/Coral.Samples.WebApi -- --urls http://127.0.0.1:5080 --Coral:ModelPath /path/to/hf-model
// (or Coral__ModelPath / Coral__DraftModelPath environment variables). Open http://127.0.0.1:5080/ for the chat page.
await Coral.Samples.WebApi.CoralWebApp.Build(args).RunAsync();

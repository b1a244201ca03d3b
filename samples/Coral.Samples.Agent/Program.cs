// dotnet run --project samples/Coral.Samples.Agent -- --model /path/to/hf-model --prompt "What does coral mean?" [--force-tool]
return await Coral.Samples.Agent.AgentApp.RunAsync(args, Console.Out, Console.In);

using System.Text.Json.Nodes;
using Coral.AI;

namespace Coral.Cli;

/// <summary><c>coral draft-inspect &lt;dir&gt;</c>: a drafter's config, parameter counts and router.</summary>
internal static class DraftInspectCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        string folder = args.Length == 1 ? args[0] : throw new UsageException("draft-inspect takes one drafter folder.");
        JsonObject config = ModelConfig.ReadJsonObject(Path.Combine(folder, "config.json"));
        using var reader = new CheckpointReader(folder);
        long total = 0;
        foreach (string name in reader.Names.Order())
        {
            long count = reader.ShapeOf(name).Aggregate(1L, (a, b) => a * b);
            if (name != "embed_tokens.weight")
            {
                total += count;
            }

            stdout.WriteLine($"  {name} [{string.Join(", ", reader.ShapeOf(name))}]");
        }

        stdout.WriteLine($"hidden {config["hidden_size"]}, heads {config["num_attention_heads"]}/{config["num_key_value_heads"]}, ffn {config["intermediate_size"]}, " +
                         $"vocab {config["vocab_size"]}, fc bias {config["bias"]?.ToJsonString() ?? "true (absent)"}; {total / 1e6:F2} M parameters (embedding excluded)");
        string router = Path.Combine(folder, LmHeadRouter.FileName);
        if (File.Exists(router))
        {
            using var file = SafetensorsFile.Open(router);
            long groupPerm = file.Entries["group_perm"].Shape[0];
            stdout.WriteLine($"router: {config["router_groups"]} groups of {groupPerm / config["router_groups"]!.GetValue<int>()} rows ({config["router_grouping"]?.GetValue<string>() ?? "unknown"} grouping), " +
                             $"top-{config["router_topk"]}, hidden {config["router_hidden"]}");
        }
        else
        {
            stdout.WriteLine("router: none (full LM head)");
        }

        return 0;
    }
}

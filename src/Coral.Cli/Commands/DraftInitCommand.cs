using Coral.AI;

namespace Coral.Cli;

/// <summary><c>coral draft-init</c>: writes a randomly initialised drafter for a target (the trainer's starting point).</summary>
internal static class DraftInitCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--target", "--out", "--seed", "--router-groups", "--router-topk", "--router-hidden" }, new HashSet<string> { "--fc-bias", "--shuffle-groups", "--bf16" });
        string target = GgufImporter.Resolve(cl.Required("--target"));
        string output = cl.Required("--out");
        if (!File.Exists(Path.Combine(target, "config.json")))
        {
            throw new ArgumentException($"--target '{target}' has no config.json.");
        }

        var options = new DraftInitOptions
        {
            Seed = (int)(cl.Long("--seed") ?? 0),
            FcBias = cl.Flag("--fc-bias"),
            RouterGroups = cl.Int("--router-groups") ?? 0,
            RouterTopK = cl.Int("--router-topk") ?? 2,
            RouterHidden = cl.Int("--router-hidden") ?? 64,
            ShuffleGroups = cl.Flag("--shuffle-groups"),
            Bf16 = cl.Flag("--bf16"),
        };
        DraftCheckpoint.CreateRandom(target, output, options);
        stderr.WriteLine($"wrote a random drafter for {target} to {output}" + (options.RouterGroups > 0 ? $" (router: {options.RouterGroups} groups, top-{options.RouterTopK})" : string.Empty));
        return 0;
    }
}

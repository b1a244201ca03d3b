using System.Text.Json.Nodes;
using Coral.AI;
using Coral.AI.Training;

namespace Coral.Cli;

/// <summary>
/// <c>coral plot</c>: PNGs for the benchmark report from <c>coral bench --json</c> outputs (τ and speedup by prompt
/// kind, one series per run; verify cost by tree size) or from <c>coral pretrain</c>'s metrics.jsonl.
/// </summary>
internal static class PlotCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--bench", "--sweep", "--tree-cost", "--pretrain", "--out", "--title" }, new HashSet<string>());
        string output = cl.Required("--out");
        string title = cl.Value("--title") ?? string.Empty;
        if (cl.Value("--pretrain") is string metrics)
        {
            BenchPlot.PretrainLoss(metrics, title, output);
            stderr.WriteLine($"wrote {output}");
            return 0;
        }

        if (cl.Value("--tree-cost") is string costs)
        {
            BenchPlot.TreeCost(Runs(costs), $"{title} verify cost vs tree size", output);
            stderr.WriteLine($"wrote {output}");
            return 0;
        }

        if (cl.Value("--sweep") is string sweep)
        {
            BenchPlot.TreeSweep(Runs(sweep), $"{title} τ and speedup vs tree size", output);
            stderr.WriteLine($"wrote {output}");
            return 0;
        }

        var runs = Runs(cl.Value("--bench") ?? throw new UsageException("--bench label=file.json[,label=file.json...], --sweep or --pretrain <metrics.jsonl> is required."));
        Directory.CreateDirectory(output);
        BenchPlot.ByKind(runs, "mean_accepted_length", "mean accepted length τ", $"{title} τ by prompt kind", Path.Combine(output, "tau-by-kind.png"));
        BenchPlot.ByKind(runs, "speedup", "speedup over plain decoding", $"{title} speedup by prompt kind", Path.Combine(output, "speedup-by-kind.png"));
        BenchPlot.TreeCost(runs, $"{title} verify cost vs tree size", Path.Combine(output, "tree-cost.png"));
        stderr.WriteLine($"wrote tau-by-kind.png, speedup-by-kind.png, tree-cost.png to {output}");
        return 0;
    }

    /// <summary>Parses <c>label=file.json,label=file.json,...</c> (a bare path is labelled by its file name).</summary>
    private static List<(string, JsonObject)> Runs(string list) => list
        .Split(',', StringSplitOptions.RemoveEmptyEntries)
        .Select(item =>
        {
            int eq = item.LastIndexOf('=');   // labels may contain '=' ("greedy (T=0)"), paths do not
            string label = eq > 0 ? item[..eq] : Path.GetFileNameWithoutExtension(item), path = eq > 0 ? item[(eq + 1)..] : item;
            return (label, ModelConfig.ReadJsonObject(path));
        }).ToList();
}

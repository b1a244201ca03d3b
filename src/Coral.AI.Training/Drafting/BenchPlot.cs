using System.Text.Json.Nodes;

namespace Coral.AI.Training;

/// <summary>PNG plots of <c>coral bench --json</c> results and of <c>coral pretrain</c>'s metrics (ScottPlot).</summary>
internal static class BenchPlot
{
    /// <summary>Grouped bars by prompt kind (plus "all"): one series per labelled bench run, of <paramref name="field"/>
    /// (e.g. <c>mean_accepted_length</c> or <c>speedup</c>).</summary>
    public static void ByKind(IReadOnlyList<(string Label, JsonObject Bench)> runs, string field, string yLabel, string title, string pngPath)
    {
        var kinds = runs.SelectMany(r => ((JsonObject)r.Bench["by_kind"]!).Select(kv => kv.Key)).Distinct().Append("all").ToList();
        var plot = new ScottPlot.Plot();
        double width = 0.8 / runs.Count;
        for (int s = 0; s < runs.Count; s++)
        {
            var bars = kinds.Select((kind, i) =>
            {
                JsonNode? node = kind == "all" ? runs[s].Bench["overall"] : runs[s].Bench["by_kind"]![kind];
                double value = node?[field]?.GetValue<double>() ?? 0;
                return new ScottPlot.Bar { Position = i + (s - (runs.Count - 1) / 2.0) * width, Value = value, Size = width * 0.9 };
            }).ToList();
            var color = new ScottPlot.Palettes.Category10().GetColor(s);
            foreach (ScottPlot.Bar bar in bars)
            {
                bar.FillColor = color;
            }

            var series = plot.Add.Bars(bars);
            series.LegendText = runs[s].Label;
        }

        plot.Axes.Bottom.SetTicks(kinds.Select((_, i) => (double)i).ToArray(), kinds.ToArray());
        plot.Axes.Margins(bottom: 0);
        plot.Title(title);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        plot.SavePng(pngPath, 900, 480);
    }

    /// <summary>Verify time by tree size, one series per run (its plain one-token step at 1 node), with the first run's
    /// draft step (full head, router) as horizontal lines.</summary>
    public static void TreeCost(IReadOnlyList<(string Label, JsonObject Bench)> runs, string title, string pngPath)
    {
        var plot = new ScottPlot.Plot();
        double top = 0;
        foreach (var (label, run) in runs)
        {
            var verify = run["verify_ms_by_tree_size"] as JsonObject
                ?? throw new ArgumentException($"'{label}' is not a coral bench JSON: it has no verify_ms_by_tree_size object.");
            var points = verify.Select(kv => (Size: double.Parse(kv.Key, System.Globalization.CultureInfo.InvariantCulture), Ms: kv.Value!.GetValue<double>())).ToList();
            if (run["overall"]?["plain_step_ms"] is JsonNode step && step.GetValue<double>() > 0)
            {
                points.Insert(0, (1, step.GetValue<double>()));   // the plain step: one token
            }

            if (points.Count == 0)
            {
                continue;   // prompt lookup alone: no tree was timed
            }

            var line = plot.Add.Scatter(points.Select(p => p.Size).ToArray(), points.Select(p => p.Ms).ToArray());
            line.LegendText = runs.Count == 1 ? "target verify forward (ms)" : $"{label}: target forward (ms)";
            top = Math.Max(top, points.Max(p => p.Ms));
        }

        JsonObject bench = runs[0].Bench;
        foreach ((string key, string label) in new[] { ("full_head", "draft step, full head"), ("router", "draft step, router") })
        {
            if (bench["draft_step_ms"]?[key] is JsonNode v)
            {
                var h = plot.Add.HorizontalLine(v.GetValue<double>());
                h.LegendText = label + $" ({v.GetValue<double>():F2} ms)";
                h.LinePattern = ScottPlot.LinePattern.Dashed;
            }
        }

        plot.Title(title);
        plot.XLabel("tree nodes verified");
        plot.YLabel("ms");
        plot.Axes.SetLimitsY(0, top * 1.15);
        plot.ShowLegend();
        plot.SavePng(pngPath, 900, 480);
    }

    /// <summary>A tree-size sweep: τ and speedup (overall) against the nodes each run verified, one point per bench run,
    /// ordered by tree size.</summary>
    public static void TreeSweep(IReadOnlyList<(string Label, JsonObject Bench)> runs, string title, string pngPath)
    {
        var points = runs.Select(r => (Nodes: r.Bench["tree"]!["total_tokens"]!.GetValue<double>(), Overall: r.Bench["overall"]!))
            .OrderBy(p => p.Nodes).ToList();
        double[] nodes = points.Select(p => p.Nodes).ToArray();
        var plot = new ScottPlot.Plot();
        foreach ((string field, string label) in new[] { ("mean_accepted_length", "mean accepted length τ"), ("speedup", "speedup over plain decoding") })
        {
            var line = plot.Add.Scatter(nodes, points.Select(p => p.Overall[field]!.GetValue<double>()).ToArray());
            line.LegendText = label;
        }

        plot.Add.HorizontalLine(1.0).LinePattern = ScottPlot.LinePattern.Dotted;
        plot.Title(title);
        plot.XLabel("tree nodes verified per cycle");
        plot.Axes.SetLimitsY(0, points.Max(p => Math.Max(p.Overall["mean_accepted_length"]!.GetValue<double>(), p.Overall["speedup"]!.GetValue<double>())) * 1.15);
        plot.ShowLegend();
        plot.SavePng(pngPath, 900, 480);
    }

    /// <summary>Loss by step of a <c>coral pretrain</c> metrics file, one series per phase.</summary>
    public static void PretrainLoss(string metricsPath, string title, string pngPath)
    {
        var lines = File.ReadLines(metricsPath).Select(l => JsonNode.Parse(l)!).ToList();
        var plot = new ScottPlot.Plot();
        double offset = 0;
        foreach (var phase in lines.GroupBy(l => l["phase"]!.GetValue<string>()))
        {
            double[] tokens = phase.Select(l => offset + (l["tokens"]?.GetValue<long>() ?? 0) / 1e6).ToArray();
            var s = plot.Add.Scatter(tokens, phase.Select(l => l["loss"]!.GetValue<double>()).ToArray());
            s.LegendText = phase.Key;
            s.MarkerSize = 0;
            offset = tokens.Length > 0 ? tokens[^1] : offset;
        }

        plot.Title(title);
        plot.XLabel("tokens seen (millions)");
        plot.YLabel("cross-entropy (nats)");
        plot.ShowLegend();
        plot.SavePng(pngPath, 900, 480);
    }
}

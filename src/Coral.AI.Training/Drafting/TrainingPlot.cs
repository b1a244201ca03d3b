using System.Text.Json.Nodes;

namespace Coral.AI.Training;

/// <summary>Draws a run's metrics JSONL as a PNG: loss (left axis) and accuracy (right axis) by step, held-out depth-1 accuracy as points.</summary>
internal static class TrainingPlot
{
    public static void Save(string metricsPath, string pngPath, string title)
    {
        var lines = File.ReadLines(metricsPath).Select(l => JsonNode.Parse(l)!).ToList();
        if (lines.Count == 0)
        {
            return;
        }

        double[] steps = lines.Select(l => (double)l["step"]!.GetValue<int>()).ToArray();
        var plot = new ScottPlot.Plot();
        var loss = plot.Add.Scatter(steps, lines.Select(l => l["loss"]!.GetValue<double>()).ToArray());
        loss.LegendText = "loss";
        loss.MarkerSize = 0;
        var accuracy = plot.Add.Scatter(steps, lines.Select(l => l["accuracy"]!.GetValue<double>()).ToArray());
        accuracy.LegendText = "train acc@1";
        accuracy.MarkerSize = 0;
        accuracy.Axes.YAxis = plot.Axes.Right;
        var heldOut = lines.Where(l => l["held_out_acc_by_depth"] is JsonArray { Count: > 0 }).ToList();
        if (heldOut.Count > 0)
        {
            var depth1 = plot.Add.Scatter(heldOut.Select(l => (double)l["step"]!.GetValue<int>()).ToArray(),
                heldOut.Select(l => l["held_out_acc_by_depth"]![0]!.GetValue<double>()).ToArray());
            depth1.LegendText = "held-out acc@1, depth 1";
            depth1.LineWidth = 0;
            depth1.MarkerSize = 7;
            depth1.Axes.YAxis = plot.Axes.Right;
        }

        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.Axes.Right.Label.Text = "accuracy";
        plot.ShowLegend();
        plot.SavePng(pngPath, 900, 500);
    }
}

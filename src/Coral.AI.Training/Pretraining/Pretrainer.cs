using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>
/// Trains a small Llama from scratch on text (loss everywhere), then optionally fine-tunes it on chat JSONL (loss on
/// assistant tokens, ChatML template), with AdamW, clipping by value, warm-up and linear decay, and metrics JSONL.
/// </summary>
internal static class Pretrainer
{
    public const string ChatMlTemplate =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    public static List<double> Train(TrainableLlama model, IReadOnlyList<TrainingExample> data, int steps, double learningRate,
        int seed, string? metricsPath, TextWriter? progress, string phase = "pretrain")
    {
        var usable = data.Where(e => e.Ids.Length >= 2 && e.LossMask.Skip(1).Any(m => m != 0)).ToList();
        if (usable.Count == 0)
        {
            throw new InvalidOperationException("No training sequence has a token to predict.");
        }

        torch.manual_seed(seed);
        var optimizer = torch.optim.AdamW(model.Parameters, learningRate, 0.9, 0.95, weight_decay: 0.01);
        using var metrics = metricsPath is null ? null : new StreamWriter(metricsPath, append: true);
        var losses = new List<double>();
        int warmup = Math.Max(1, steps / 20);
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        for (int step = 0; step < steps; step++)
        {
            double lr = LearningRateSchedule.Apply(optimizer, step, learningRate, warmup, steps);

            TrainingExample e = usable[step % usable.Count];
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            Tensor loss = model.Loss(e.Ids.Select(x => (long)x).ToArray(), e.LossMask);
            loss.backward();
            nn.utils.clip_grad_value_(model.Parameters, 1.0);
            optimizer.step();
            double value = loss.item<float>();
            losses.Add(value);
            tokens += e.Ids.Length;
            double rate = tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            metrics?.WriteLine(new JsonObject { ["phase"] = phase, ["step"] = step, ["loss"] = value, ["lr"] = lr, ["tokens_per_second"] = Math.Round(rate, 1) }.ToJsonString());
            if (progress is not null && (step % 50 == 0 || step == steps - 1))
            {
                progress.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{phase}] step {step + 1}/{steps} loss {value:F4} {rate:F0} tok/s"));
            }
        }

        return losses;
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>How <see cref="Pretrainer"/> runs one phase (pretraining on text, or SFT on chat data).</summary>
internal sealed record PretrainOptions
{
    public int Steps { get; init; } = 1000;
    public double LearningRate { get; init; } = 1e-3;
    public int Seed { get; init; }
    /// <summary>Packed blocks of <see cref="BlockLength"/> tokens per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;
    public int BlockLength { get; init; } = 256;
    /// <summary>Micro-batches whose gradients are summed before one optimizer step.</summary>
    public int Accumulate { get; init; } = 1;
    /// <summary>A wall-clock budget: the schedule follows whichever of steps or time is further along, and the phase ends
    /// when either runs out, so a run planned for a session finishes inside it with its learning rate decayed.</summary>
    public TimeSpan? Budget { get; init; }
    public string Phase { get; init; } = "pretrain";
    /// <summary>Called every <see cref="SaveEvery"/> steps and at the end (e.g. to write the HF folder).</summary>
    public Action<int>? Save { get; init; }
    public int SaveEvery { get; init; } = 500;
}

/// <summary>
/// Trains a small Llama as a causal LM: sequences are packed end to end into blocks of equal length (no padding), a step
/// is <c>Accumulate × BatchSize</c> blocks, the LM head's cross-entropy is chunked, and the projections can multiply in
/// bf16. Loss only where the mask is 1 (assistant tokens of chat data; everywhere for text). AdamW (0.9, 0.95),
/// clipping by value, warm-up and linear decay, metrics JSONL with tokens/s.
/// </summary>
internal static class Pretrainer
{
    /// <summary>Packs sequences (shuffled by <paramref name="seed"/>) into blocks of <paramref name="blockLength"/> + 1
    /// tokens that overlap by one, so every token of the stream is a prediction target once; the tail shorter than a block
    /// is dropped.</summary>
    public static (Tensor Ids, Tensor Mask) Pack(IReadOnlyList<TrainingExample> data, int blockLength, int seed)
    {
        var order = Enumerable.Range(0, data.Count).ToArray();
        new Random(seed).Shuffle(order);
        var ids = new List<long>();
        var mask = new List<byte>();
        foreach (int i in order)
        {
            ids.AddRange(data[i].Ids.Select(x => (long)x));
            mask.AddRange(data[i].LossMask);
        }

        blockLength = Math.Min(blockLength, ids.Count - 1);   // a corpus shorter than one block is one block
        int blocks = blockLength <= 0 ? 0 : (ids.Count - 1) / blockLength;
        if (blocks == 0 || !mask.Skip(1).Any(m => m != 0))
        {
            throw new InvalidOperationException($"The data has {ids.Count} tokens: not one block of {blockLength} + 1 with a token to predict.");
        }

        var idBlocks = new long[blocks * (blockLength + 1)];
        var maskBlocks = new byte[blocks * (blockLength + 1)];
        for (int b = 0; b < blocks; b++)
        {
            ids.CopyTo(b * blockLength, idBlocks, b * (blockLength + 1), blockLength + 1);
            mask.CopyTo(b * blockLength, maskBlocks, b * (blockLength + 1), blockLength + 1);
        }

        return (torch.tensor(idBlocks, [blocks, blockLength + 1]), torch.tensor(maskBlocks, [blocks, blockLength + 1]));
    }

    public static List<double> Train(TrainableLlama model, IReadOnlyList<TrainingExample> data, PretrainOptions options, string? metricsPath, TextWriter? progress)
    {
        (Tensor ids, Tensor mask) = Pack(data, options.BlockLength, options.Seed);
        using var disposeIds = ids;
        using var disposeMask = mask;
        long blocks = ids.shape[0], blockLength = ids.shape[1] - 1;
        progress?.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[{options.Phase}] {data.Count} sequences packed into {blocks} blocks of {blockLength} tokens; {options.Accumulate}×{options.BatchSize} blocks per step"));
        torch.manual_seed(options.Seed);
        var optimizer = torch.optim.AdamW(model.Parameters, options.LearningRate, 0.9, 0.95, weight_decay: 0.01);
        using var metrics = metricsPath is null ? null : new StreamWriter(metricsPath, append: true);
        var losses = new List<double>();
        int steps = options.Steps, warmup = Math.Max(1, steps / 20);
        var clock = Stopwatch.StartNew();
        long tokens = 0, next = 0;
        for (int step = 0; step < steps; step++)
        {
            int scheduleStep = options.Budget is TimeSpan budget ? Math.Max(step, (int)(steps * (clock.Elapsed / budget))) : step;
            if (scheduleStep >= steps)
            {
                break;
            }

            double lr = LearningRateSchedule.Apply(optimizer, scheduleStep, options.LearningRate, warmup, steps);
            optimizer.zero_grad();
            double value = 0;
            for (int micro = 0; micro < options.Accumulate; micro++)
            {
                using var scope = torch.NewDisposeScope();
                Tensor index = (torch.arange(options.BatchSize, ScalarType.Int64) + next) % blocks;
                next += options.BatchSize;
                (double loss, Tensor surrogate) = model.Loss(ids.index_select(0, index), mask.index_select(0, index));
                (surrogate / options.Accumulate).backward();
                value += loss / options.Accumulate;
                tokens += options.BatchSize * blockLength;
            }

            nn.utils.clip_grad_value_(model.Parameters, 1.0);
            using (torch.NewDisposeScope())
            {
                optimizer.step();
            }

            losses.Add(value);
            double rate = tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            metrics?.WriteLine(new JsonObject
            {
                ["phase"] = options.Phase, ["step"] = step, ["loss"] = Math.Round(value, 5), ["lr"] = lr, ["tokens"] = tokens,
                ["tokens_per_second"] = Math.Round(rate, 1), ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
            }.ToJsonString());
            metrics?.Flush();
            if (progress is not null && (step % 20 == 0 || step == steps - 1))
            {
                double epoch = (double)next / blocks;
                progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"[{options.Phase}] step {step + 1}/{steps} loss {value:F4} lr {lr:G3} {rate:F0} tok/s epoch {epoch:F2} {clock.Elapsed:hh\\:mm\\:ss}"));
            }

            if (options.Save is not null && (step + 1) % options.SaveEvery == 0)
            {
                options.Save(step + 1);
            }
        }

        options.Save?.Invoke(losses.Count);
        return losses;
    }
}

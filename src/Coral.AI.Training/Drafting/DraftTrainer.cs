using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>Settings of a drafter training run.</summary>
internal sealed record DraftTrainingOptions
{
    public int Steps { get; init; } = 200;
    public double LearningRate { get; init; } = 3e-4;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double WeightDecay { get; init; } = 0.01;
    public double ClipValue { get; init; } = 0.5;
    public int WarmupSteps { get; init; } = 10;
    public double ClassificationWeight { get; init; } = 0.1;

    /// <summary>Gets the amplitude of the uniform noise added to input features (EAGLE: U(−0.1, 0.1)).</summary>
    public double Noise { get; init; } = 0.1;

    public int Seed { get; init; }
}

/// <summary>
/// EAGLE training (method <c>eagle</c>): one step, SmoothL1 regression of the next feature plus a soft cross-entropy
/// against the target's next-token distribution through the frozen LM head, on assistant (loss-masked) positions;
/// AdamW (β 0.9/0.95), gradient clipping by value, linear warm-up then linear decay. HASS multi-step training, CSRA and
/// the router stage build on this loop (next steps of the trainer issue).
/// </summary>
internal sealed class DraftTrainer
{
    private readonly TrainableDrafter _drafter;
    private readonly Tensor _embedding;   // [V, d] f32, frozen
    private readonly Tensor _head;        // [V, d] f32, frozen
    private readonly DraftTrainingOptions _o;

    public DraftTrainer(TrainableDrafter drafter, Tensor embedding, Tensor head, DraftTrainingOptions options)
    {
        _drafter = drafter;
        _embedding = embedding;
        _head = head;
        _o = options;
    }

    /// <summary>One training sequence's loss terms (graph attached to the drafter's parameters).</summary>
    internal (Tensor Loss, Tensor Regression, Tensor Classification, double Accuracy) Loss(FeatureSequence s, Generator? noise)
    {
        long t = s.InputIds.shape[0];
        Tensor ids = s.InputIds.narrow(0, 1, t - 1);
        Tensor features = s.HiddenState.to(ScalarType.Float32);
        Tensor inputs = features.narrow(0, 0, t - 1);
        if (noise is not null && _o.Noise > 0)
        {
            inputs = inputs + (torch.rand(inputs.shape, generator: noise) * 2 - 1) * _o.Noise;
        }

        Tensor targets = features.narrow(0, 1, t - 1);
        Tensor weight = s.LossMask.narrow(0, 1, t - 1).to(ScalarType.Float32);
        Tensor denominator = weight.sum() + 1e-5;
        Tensor h = _drafter.Forward(_embedding.index_select(0, ids), inputs);
        Tensor regression = (F.smooth_l1_loss(h, targets, nn.Reduction.None).mean([-1L]) * weight).sum() / denominator;
        Tensor logq = F.log_softmax(F.linear(h, _head), -1);
        Tensor p;
        using (torch.no_grad())
        {
            p = F.softmax(F.linear(targets, _head), -1);
        }

        Tensor classification = (-(p * logq).sum([-1L]) * weight).sum() / denominator;
        double accuracy;
        using (torch.no_grad())
        {
            Tensor hit = logq.argmax(-1).eq(p.argmax(-1)).to(ScalarType.Float32);
            accuracy = (hit * weight).sum().item<float>() / Math.Max(weight.sum().item<float>(), 1e-5f);
        }

        return (regression + _o.ClassificationWeight * classification, regression, classification, accuracy);
    }

    /// <summary>Trains for <see cref="DraftTrainingOptions.Steps"/> steps over the sequences (cycled); writes metrics JSONL.</summary>
    public List<double> Train(IReadOnlyList<FeatureSequence> data, string? metricsPath = null, TextWriter? progress = null)
    {
        var usable = data.Where(s => s.InputIds.shape[0] >= 3 && s.LossMask.narrow(0, 1, s.LossMask.shape[0] - 1).sum().item<long>() > 0).ToList();
        if (usable.Count == 0)
        {
            throw new InvalidOperationException("No training sequence has loss-masked tokens after its first position.");
        }

        torch.manual_seed(_o.Seed);
        var noise = new Generator((ulong)_o.Seed + 1);
        var optimizer = torch.optim.AdamW(_drafter.Parameters, _o.LearningRate, _o.Beta1, _o.Beta2, weight_decay: _o.WeightDecay);
        using var metrics = metricsPath is null ? null : new StreamWriter(metricsPath, append: false);
        var losses = new List<double>();
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        for (int step = 0; step < _o.Steps; step++)
        {
            double lr = _o.LearningRate * Math.Min(1.0, (step + 1.0) / Math.Max(1, _o.WarmupSteps))
                        * (step < _o.WarmupSteps ? 1.0 : Math.Max(0.0, 1.0 - (double)(step - _o.WarmupSteps) / Math.Max(1, _o.Steps - _o.WarmupSteps)));
            foreach (var group in optimizer.ParamGroups)
            {
                group.LearningRate = lr;
            }

            FeatureSequence s = usable[step % usable.Count];
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            var (loss, reg, cls, acc) = Loss(s, noise);
            loss.backward();
            nn.utils.clip_grad_value_(_drafter.Parameters, _o.ClipValue);
            optimizer.step();
            double value = loss.item<float>();
            losses.Add(value);
            tokens += s.InputIds.shape[0];
            var line = new JsonObject
            {
                ["step"] = step,
                ["loss"] = value,
                ["regression"] = reg.item<float>(),
                ["classification"] = cls.item<float>(),
                ["accuracy"] = acc,
                ["lr"] = lr,
                ["tokens_per_second"] = Math.Round(tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9), 1),
            };
            metrics?.WriteLine(line.ToJsonString());
            if (progress is not null && (step % 20 == 0 || step == _o.Steps - 1))
            {
                progress.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[train] step {step + 1}/{_o.Steps} loss {value:F4} acc {acc:F3} {line["tokens_per_second"]} tok/s"));
            }
        }

        return losses;
    }
}

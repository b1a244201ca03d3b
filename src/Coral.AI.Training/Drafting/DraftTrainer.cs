using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Coral.AI.Training;

/// <summary>The training method.</summary>
internal enum DraftMethod
{
    /// <summary>EAGLE: one step on target features.</summary>
    Eagle,

    /// <summary>HASS: n steps, each fed the previous step's (detached) predictions.</summary>
    Hass,

    /// <summary>CORAL: HASS plus cross-step representation alignment (CSRA).</summary>
    Coral,
}

/// <summary>Which CSRA reconstruction to use (method.md §7.4).</summary>
internal enum CsraVariant
{
    /// <summary>Supervised contrastive: same position across steps are positives, other positions negatives.</summary>
    SupCon,

    /// <summary>(a) InfoNCE between consecutive steps only.</summary>
    Consecutive,

    /// <summary>(b) Step 1 is a stop-gradient teacher; steps ≥ 2 are pulled toward it.</summary>
    Teacher,
}

/// <summary>Settings of a drafter training run.</summary>
internal sealed record DraftTrainingOptions
{
    public DraftMethod Method { get; init; } = DraftMethod.Eagle;

    /// <summary>Gets the HASS/CORAL alignment steps n (EAGLE uses 1).</summary>
    public int AlignmentSteps { get; init; } = 3;

    /// <summary>Gets the weight of HASS's top-K distillation term (0 in stage 1, 1 in stage 2).</summary>
    public double TopKWeight { get; init; }

    public int TopK { get; init; } = 10;

    public CsraVariant CsraVariant { get; init; } = CsraVariant.SupCon;

    public double CsraWeight { get; init; } = 0.1;

    public double CsraTemperature { get; init; } = 0.1;

    /// <summary>Gets the most positions per sequence the CSRA similarity matrix uses (subsampled evenly).</summary>
    public int CsraMaxPositions { get; init; } = 256;

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

    /// <summary>Gets the row chunk of the soft cross-entropy (0 = the plain full-vocabulary version through autograd).</summary>
    public int ClassificationChunk { get; init; } = 256;

    /// <summary>When set, the soft cross-entropy through the frozen head multiplies in bf16 (the drafter itself stays f32).</summary>
    public bool Bf16Matmuls { get; init; }

    /// <summary>Gets how often (in steps) to write a checkpoint and evaluate held-out data; 0 = never.</summary>
    public int CheckpointEvery { get; init; }

    /// <summary>Gets the draft depths evaluated on held-out data (acc@1 per depth, HASS-style).</summary>
    public int EvaluationDepths { get; init; } = 5;
}

/// <summary>
/// Drafter training. EAGLE: one step, SmoothL1 regression of the next feature plus a soft cross-entropy against the
/// target's next-token distribution through the frozen LM head, on assistant (loss-masked) positions. HASS: n steps,
/// step j fed the detached predictions of steps &lt; j (see <see cref="TrainableDrafter.ForwardStep"/>), equal weights,
/// optional top-K distillation. CORAL: HASS plus CSRA. AdamW (β 0.9/0.95), gradient clipping by value, linear warm-up
/// then linear decay. The router (CORAL stage 2) is trained separately on the frozen drafter.
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
        _embedding = embedding.dtype == ScalarType.Float32 ? embedding : embedding.to(ScalarType.Float32);
        _head = head.dtype == ScalarType.Float32 ? head : head.to(ScalarType.Float32);   // a packed target keeps an untied head in bf16
        _o = options;
    }

    /// <summary>
    /// One training sequence: the objective to backpropagate (with the chunked cross-entropy it contains a surrogate term
    /// whose gradient is the cross-entropy's), the loss value to report, and step 1's regression, classification and accuracy.
    /// </summary>
    internal (Tensor Objective, double Reported, Tensor Regression, Tensor Classification, double Accuracy) Loss(FeatureSequence s, Generator? noise)
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
        Tensor embeddings = _embedding.index_select(0, ids);
        bool chunked = _o.ClassificationChunk > 0 && _o.TopKWeight == 0;
        Tensor? p = null;
        (Tensor Probabilities, Tensor ArgMax) target = default;
        if (chunked)
        {
            target = ChunkedSoftCrossEntropy.Target(targets, _head, _o.Bf16Matmuls);
        }
        else
        {
            using (torch.no_grad())
            {
                p = F.softmax(F.linear(targets, _head), -1);
            }
        }

        int steps = _o.Method == DraftMethod.Eagle ? 1 : _o.AlignmentSteps;
        var sets = new List<Tensor> { inputs };
        var outputs = new List<Tensor>();
        Tensor loss = torch.zeros(1), regression = torch.zeros(1), classification = torch.zeros(1);
        double accuracy = 0, reported = 0;
        for (int step = 1; step <= steps; step++)
        {
            Tensor h = _drafter.ForwardStep(embeddings, sets);
            outputs.Add(h);
            Tensor reg = (F.smooth_l1_loss(h, targets, nn.Reduction.None).mean([-1L]) * weight).sum() / denominator;
            Tensor cls;
            Tensor stepLoss;
            double stepAccuracy;
            if (chunked)
            {
                // Never materialises [T × V]: the value is logged, the gradient enters through a surrogate term.
                var (value, gradH, acc) = ChunkedSoftCrossEntropy.Compute(h, target, _head, weight, denominator, _o.ClassificationChunk);
                cls = torch.tensor((float)value);
                stepLoss = reg + _o.ClassificationWeight * (h * gradH).sum();
                stepAccuracy = acc;
            }
            else
            {
                Tensor logq = F.log_softmax(F.linear(h, _head), -1);
                cls = (-(p! * logq).sum([-1L]) * weight).sum() / denominator;
                stepLoss = reg + _o.ClassificationWeight * cls;
                if (_o.TopKWeight > 0)
                {
                    Tensor top = p!.topk(Math.Min(_o.TopK, (int)p.shape[1]), -1).indexes;
                    Tensor topLoss = (-(p.gather(-1, top) * logq.gather(-1, top)).sum([-1L]) * weight).sum() / denominator;
                    stepLoss = stepLoss + _o.TopKWeight * topLoss;
                }

                using (torch.no_grad())
                {
                    Tensor hit = logq.argmax(-1).eq(p!.argmax(-1)).to(ScalarType.Float32);
                    stepAccuracy = (hit * weight).sum().item<float>() / Math.Max(weight.sum().item<float>(), 1e-5f);
                }
            }

            loss = loss + stepLoss;
            reported += reg.item<float>() + _o.ClassificationWeight * cls.item<float>();
            if (step == 1)
            {
                (regression, classification, accuracy) = (reg, cls, stepAccuracy);
            }

            if (step < steps)
            {
                sets.Add(torch.cat([sets[^1].narrow(0, 0, 1), h.narrow(0, 0, t - 2)], 0).detach());
            }
        }

        if (_o.Method == DraftMethod.Coral && outputs.Count > 1)
        {
            Tensor csra = _o.CsraWeight * Csra(outputs, weight, _o.CsraVariant, _o.CsraTemperature, _o.CsraMaxPositions);
            loss = loss + csra;
            reported += csra.item<float>();
        }

        return (loss, reported, regression, classification, accuracy);
    }

    /// <summary>
    /// Cross-step representation alignment over the steps' outputs at the loss-masked positions (cosine similarities /
    /// temperature). SupCon: every (step, position) anchor has the same position's other steps as positives and every
    /// other position (any step) as negatives; Consecutive: anchors of step j against step j+1 only; Teacher: anchors of
    /// steps ≥ 2 against a stop-gradient step 1.
    /// </summary>
    internal static Tensor Csra(IReadOnlyList<Tensor> outputs, Tensor weight, CsraVariant variant, double temperature, int maxPositions)
    {
        long[] valid = Enumerable.Range(0, (int)weight.shape[0]).Where(i => weight[i].item<float>() > 0).Select(i => (long)i).ToArray();
        if (valid.Length > maxPositions)
        {
            valid = Enumerable.Range(0, maxPositions).Select(i => valid[(int)((long)i * valid.Length / maxPositions)]).ToArray();
        }

        int m = valid.Length, n = outputs.Count;
        if (m < 2)
        {
            return torch.zeros(1);
        }

        using Tensor index = torch.tensor(valid);
        Tensor[] z = outputs.Select((o, j) =>
        {
            Tensor x = F.normalize(o.index_select(0, index), p: 2, dim: -1);
            return variant == CsraVariant.Teacher && j == 0 ? x.detach() : x;
        }).ToArray();

        if (variant == CsraVariant.SupCon)
        {
            Tensor all = torch.cat(z, 0);                                             // [n·m, d], row = step·m + position
            Tensor sim = all.matmul(all.t()) / temperature;
            long rows = (long)n * m;
            Tensor position = torch.arange(rows) % m;
            Tensor self = torch.eye(rows, dtype: ScalarType.Bool);
            Tensor positive = position.unsqueeze(1).eq(position.unsqueeze(0)).logical_and(self.logical_not());
            Tensor logProb = sim - sim.masked_fill(self, double.NegativeInfinity).logsumexp(1, keepdim: true);
            Tensor perAnchor = -(logProb * positive.to(ScalarType.Float32)).sum([1L]) / positive.sum([1L]).to(ScalarType.Float32);
            return perAnchor.mean();
        }

        // InfoNCE between pairs of steps: anchor rows of one, candidates of the other; the same position is the positive.
        var pairs = variant == CsraVariant.Consecutive
            ? Enumerable.Range(0, n - 1).Select(j => (z[j], z[j + 1]))
            : Enumerable.Range(1, n - 1).Select(j => (z[j], z[0]));
        Tensor total = torch.zeros(1);
        int count = 0;
        foreach (var (anchor, candidates) in pairs)
        {
            Tensor logits = anchor.matmul(candidates.t()) / temperature;               // [m, m]
            total = total + F.cross_entropy(logits, torch.arange(m));
            count++;
        }

        return total / count;
    }

    /// <summary>
    /// Held-out acc@1 per draft depth (HASS's measure): depth j is the drafter fed its own predictions for j − 1 steps
    /// (exactly what step j of the multi-step forward computes), compared with the target's argmax on masked positions.
    /// </summary>
    public double[] EvaluateDepths(IReadOnlyList<FeatureSequence> heldOut, int depths)
    {
        using var noGrad = torch.no_grad();
        var hits = new double[depths];
        var totals = new double[depths];
        foreach (FeatureSequence s in heldOut)
        {
            using var scope = torch.NewDisposeScope();
            long t = s.InputIds.shape[0];
            if (t < 3)
            {
                continue;
            }

            Tensor features = s.HiddenState.to(ScalarType.Float32);
            Tensor embeddings = _embedding.index_select(0, s.InputIds.narrow(0, 1, t - 1));
            Tensor weight = s.LossMask.narrow(0, 1, t - 1).to(ScalarType.Float32);
            Tensor expected = F.linear(features.narrow(0, 1, t - 1), _head).argmax(-1);
            var sets = new List<Tensor> { features.narrow(0, 0, t - 1) };
            for (int j = 1; j <= depths; j++)
            {
                Tensor h = _drafter.ForwardStep(embeddings, sets);
                // Position t at depth j has j − 1 predicted features before it: only t ≥ j − 1 is a real depth-j draft.
                Tensor valid = weight.clone();
                valid.narrow(0, 0, Math.Min(j - 1, t - 1)).zero_();
                hits[j - 1] += (F.linear(h, _head).argmax(-1).eq(expected).to(ScalarType.Float32) * valid).sum().item<float>();
                totals[j - 1] += valid.sum().item<float>();
                sets.Add(torch.cat([sets[^1].narrow(0, 0, 1), h.narrow(0, 0, t - 2)], 0));
            }
        }

        return hits.Select((h, i) => totals[i] > 0 ? h / totals[i] : 0).ToArray();
    }

    /// <summary>
    /// Trains for <see cref="DraftTrainingOptions.Steps"/> steps over the sequences (cycled); writes metrics JSONL. With
    /// <paramref name="checkpointFolder"/>, a checkpoint (weights, optimizer state, step) is written every
    /// <see cref="DraftTrainingOptions.CheckpointEvery"/> steps and an existing one is resumed exactly: data order and
    /// noise depend only on the step, so a resumed run continues the same curve. <paramref name="stopAfterSteps"/> ends the
    /// run early (as an interruption would).
    /// </summary>
    public List<double> Train(IReadOnlyList<FeatureSequence> data, string? metricsPath = null, TextWriter? progress = null,
        string? checkpointFolder = null, IReadOnlyList<FeatureSequence>? heldOut = null, int? stopAfterSteps = null)
    {
        var usable = data.Where(s => s.InputIds.shape[0] >= 3 && s.LossMask.narrow(0, 1, s.LossMask.shape[0] - 1).sum().item<long>() > 0).ToList();
        if (usable.Count == 0)
        {
            throw new InvalidOperationException("No training sequence has loss-masked tokens after its first position.");
        }

        torch.manual_seed(_o.Seed);
        var optimizer = torch.optim.AdamW(_drafter.Parameters, _o.LearningRate, _o.Beta1, _o.Beta2, weight_decay: _o.WeightDecay);
        int first = 0;
        string? statePath = checkpointFolder is null ? null : Path.Combine(checkpointFolder, "trainer-state.json");
        if (statePath is not null && File.Exists(statePath))
        {
            first = JsonNode.Parse(File.ReadAllText(statePath))!["next_step"]!.GetValue<int>();
            _drafter.LoadWeights(checkpointFolder!);
            optimizer.load_state_dict(Path.Combine(checkpointFolder!, "optimizer.bin"));
            progress?.WriteLine($"[train] resuming at step {first}");
        }

        using var metrics = metricsPath is null ? null : new StreamWriter(metricsPath, append: first > 0);
        var losses = new List<double>();
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        int last = Math.Min(_o.Steps, stopAfterSteps ?? int.MaxValue);
        for (int step = first; step < last; step++)
        {
            double lr = LearningRateSchedule.Apply(optimizer, step, _o.LearningRate, _o.WarmupSteps, _o.Steps);

            FeatureSequence s = usable[step % usable.Count];
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            var noise = new Generator((ulong)_o.Seed * 1_000_003UL + (ulong)step + 1);
            var (objective, value, reg, cls, acc) = Loss(s, noise);
            objective.backward();
            nn.utils.clip_grad_value_(_drafter.Parameters, _o.ClipValue);
            optimizer.step();
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
            bool checkpoint = _o.CheckpointEvery > 0 && ((step + 1) % _o.CheckpointEvery == 0 || step == _o.Steps - 1);
            if (checkpoint && heldOut is { Count: > 0 })
            {
                line["held_out_acc_by_depth"] = new JsonArray(EvaluateDepths(heldOut, _o.EvaluationDepths).Select(x => (JsonNode)Math.Round(x, 4)).ToArray());
            }

            metrics?.WriteLine(line.ToJsonString());
            metrics?.Flush();
            if (checkpoint && checkpointFolder is not null)
            {
                _drafter.Save(checkpointFolder);
                optimizer.save_state_dict(Path.Combine(checkpointFolder, "optimizer.bin"));
                File.WriteAllText(statePath!, new JsonObject { ["next_step"] = step + 1 }.ToJsonString());
            }

            if (progress is not null && (step % 20 == 0 || step == _o.Steps - 1))
            {
                progress.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[train] step {step + 1}/{_o.Steps} loss {value:F4} acc {acc:F3} {line["tokens_per_second"]} tok/s"));
            }
        }

        return losses;
    }
}

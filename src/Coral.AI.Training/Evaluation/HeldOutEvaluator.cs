using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>
/// Scores a model on held-out data the way it is used: each sequence alone from position 0 through the inference
/// engine (the same forward and LM head that generation runs), next-token loss on the tokens its mask marks — the
/// assistant's tokens of a chat, every token of text.
/// </summary>
internal static class HeldOutEvaluator
{
    /// <summary>Evaluates the first <paramref name="limit"/> sequences of <paramref name="dataPath"/> (read like training
    /// data: chat JSONL, text JSONL or plain text, cut at <paramref name="maxLength"/> tokens), taking at most
    /// <paramref name="perKind"/> of each <c>"kind"</c> (held-out files are often sorted by kind).</summary>
    public static EvaluationReport Run(InferenceEngine target, string dataPath, int maxLength, int? limit = null, int? perKind = null, TextWriter? progress = null)
    {
        var totals = new Dictionary<string, EvaluationScore> { [EvaluationReport.All] = default };
        var taken = new Dictionary<string, int>();
        var clock = Stopwatch.StartNew();
        int sequences = 0;
        foreach (TrainingExample example in TrainingDataReader.Read(dataPath, target.Tokenizer, maxLength))
        {
            if (sequences == limit)
            {
                break;
            }

            int ofKind = taken[example.Kind ?? EvaluationReport.All] = taken.GetValueOrDefault(example.Kind ?? EvaluationReport.All) + 1;
            if (ofKind > perKind)
            {
                continue;
            }

            EvaluationScore score = Score(target, example);
            string[] keys = example.Kind is null or EvaluationReport.All ? [EvaluationReport.All] : [EvaluationReport.All, example.Kind];
            foreach (string key in keys)
            {
                totals[key] = totals.GetValueOrDefault(key) + score;
            }

            if (++sequences % 100 == 0)
            {
                progress?.WriteLine($"[eval] {sequences} sequences, {totals[EvaluationReport.All].Tokens / clock.Elapsed.TotalSeconds:F0} scored tokens/s");
            }
        }

        return new EvaluationReport(sequences, totals);
    }

    /// <summary>The summed loss, the top-1 hits and the count of the masked tokens of one sequence (each predicted from
    /// the tokens before it; the first token has no prediction).</summary>
    internal static EvaluationScore Score(InferenceEngine target, TrainingExample example)
    {
        var positions = new List<long>();
        for (int t = 1; t < example.Ids.Length; t++)
        {
            if (example.LossMask[t] != 0)
            {
                positions.Add(t);
            }
        }

        if (positions.Count == 0)
        {
            return default;
        }

        using var scope = torch.NewDisposeScope();
        using var inference = torch.inference_mode();
        Tensor hidden = FeatureExtractor.Hidden(target, example.Ids);
        Tensor rows = torch.tensor(positions.Select(t => t - 1).ToArray(), device: hidden.device);
        Tensor labels = torch.tensor(positions.Select(t => (long)example.Ids[t]).ToArray(), device: hidden.device);
        Tensor logits = target.Model.Logits(hidden.index_select(0, rows)).to(ScalarType.Float32);
        Tensor nll = -logits.log_softmax(-1).gather(1, labels.unsqueeze(1)).squeeze(1);
        long hits = logits.argmax(-1).eq(labels).sum().item<long>();
        return new EvaluationScore(nll.to(ScalarType.Float64).sum().item<double>(), hits, positions.Count);
    }
}
